"""The ablation verdict of a walk-forward record: which modification beats its base, after trying many.

The seed report calls a +0.004 IC step "a significant improvement". Here every variant's daily RankIC, pooled over
the windows (the record is out of sample in every window) and averaged over its seeds, is compared with its base
(by default the report's model 1 of its family: the first zoo entry of the family, e.g. `convgru/m01`):

    diff, HAC t, p     the paired daily difference and its Newey–West t (metrics.hac_lags for H-day labels)
    p_holm, p_rw       the same p corrected for every comparison of the grid at once: Holm, and a Romano–Wolf
                       stepdown on a block bootstrap of the days (crnn_ray.multiple_testing)
    beats_base         Romano–Wolf p <= alpha with a positive difference

and "pick the best variant" is itself judged: the probability of backtest overfitting (CSCV over the variants'
daily RankIC) and the deflated Sharpe of the line selection picks ex ante in each window (its realised daily pnl;
N = the lines it was picked among). Only a walk-forward record predicts every trial out of sample, so only it gets
a verdict; a static record's scoring predicts its chosen members alone.
"""

from __future__ import annotations

import math

import numpy as np
import pandas as pd

from crnn_ray.metrics import hac_lags, newey_west_tstat, nonoverlap_tstat
from crnn_ray.multiple_testing import (deflated_sharpe, hac_tstats, holm, paired_test, pbo_cscv, romano_wolf,
                                      t_pvalue)
from crnn_ray.zoo import family_of, load_zoo

__all__ = ["default_bases", "ablation_verdict", "selection_overfit", "paired_rows", "PICK", "VERDICT_ALPHA",
           "BOOTSTRAPS"]

#: the walk-forward record's ex-ante single pick (each window's line ranked first on its selection part)
PICK = "PICK (ex ante)"

#: family-wise level of the verdict
VERDICT_ALPHA = 0.05
#: Romano–Wolf bootstrap resamples (seeded: the verdict is reproducible)
BOOTSTRAPS = 1000
#: CSCV blocks: at most this many, fewer on a short record (each block needs a few days)
MAX_CSCV_SPLITS = 16


def default_bases(variants: list[str]) -> dict[str, str]:
    """{family: base variant}: each family's first zoo entry (the report's model 1), where it is among `variants`."""
    firsts: dict[str, str] = {}
    for vid, entry in load_zoo().items():
        firsts.setdefault(entry.family, vid)
    present = set(variants)
    return {family: vid for family, vid in firsts.items() if vid in present}


def _family(variant: str) -> str:
    entry = load_zoo().get(variant)
    return entry.family if entry is not None else family_of(variant)


def ablation_verdict(daily: pd.DataFrame, *, horizon: int, bases: dict[str, str] | None = None,
                     alpha: float = VERDICT_ALPHA, n_boot: int = BOOTSTRAPS, seed: int = 0) -> tuple[pd.DataFrame, dict]:
    """(one row per variant compared with its family's base, what was done).

    daily: days x variants (each variant's daily RankIC, pooled over windows, mean over seeds). The correction is
    across every comparison of the grid at once (all families), on the days where every series is finite."""
    bases = default_bases(list(daily.columns)) if bases is None else dict(bases)
    pairs = [(v, bases[_family(v)]) for v in daily.columns
             if _family(v) in bases and v != bases[_family(v)] and bases[_family(v)] in daily.columns]
    info = {"bases": bases, "alpha": alpha, "n_comparisons": len(pairs), "metric": "rank_ic", "n_boot": n_boot,
            "correction": "Holm; Romano-Wolf stepdown (stationary block bootstrap of the days)"}
    if not pairs:
        return pd.DataFrame(columns=["variant", "base"]), {**info, "note": "no variant beside a base in this record"}
    diffs = pd.concat({v: daily[v] - daily[b] for v, b in pairs}, axis=1).dropna()
    n = len(diffs)
    lags = hac_lags(n, horizon)
    rows = []
    for v, b in pairs:
        test = paired_test(daily[v], daily[b], lags=lags, alternative="greater")
        rows.append({"variant": v, "base": b, "family": _family(v), "diff": test["diff"],
                     "tstat_hac": test["tstat_hac"], "p_value": test["p_value"], "n_days": test["n_days"]})
    table = pd.DataFrame(rows)
    # the corrections use the common days (a day one series lacks leaves all out), so the columns' bootstrap
    # resamples stay joint; the per-row t above uses each pair's own days
    table["p_holm"] = holm([t_pvalue(t, n, "greater") for t in hac_tstats(diffs.to_numpy(), lags)])
    table["p_romano_wolf"] = romano_wolf(diffs.to_numpy(), lags=lags, n_boot=n_boot, seed=seed,
                                         alternative="greater")["p_adjusted"]
    table["beats_base"] = (table["p_romano_wolf"] <= alpha) & (table["diff"] > 0)
    table["beats_base_uncorrected"] = (table["p_value"] <= alpha) & (table["diff"] > 0)
    info.update(n_days=n, hac_lags=int(lags))
    return table.sort_values(["family", "diff"], ascending=[True, False], kind="stable").reset_index(drop=True), info


def paired_rows(series: dict[str, pd.Series], reference: pd.Series, horizon: int) -> list[dict]:
    """Each named daily series against `reference` on the days both have: mean daily difference, Newey–West t
    (hac_lags for H-day labels) and the non-overlapping t, one row per name."""
    rows = []
    for name, x in series.items():
        both = x.astype(np.float64) - reference.astype(np.float64).reindex(x.index)
        diff = both.dropna()
        n = int(len(diff))
        rows.append({"name": name, "diff": float(diff.mean()) if n else math.nan,
                     "tstat_hac": newey_west_tstat(diff.to_numpy(), hac_lags(n, horizon)) if n > 2 else math.nan,
                     "tstat_nonoverlap": nonoverlap_tstat(both.to_numpy(), horizon) if n > 2 else math.nan,
                     "n_days": n})
    return rows


def selection_overfit(daily_rank_ic: pd.DataFrame, pick_pnl: pd.Series | None, line_pnl: pd.DataFrame | None,
                      *, horizon: int) -> dict:
    """{"pbo": CSCV of picking the best variant by RankIC, "deflated_sharpe": of the ex-ante pick's daily pnl}.

    PBO: S even blocks of the days (S = the largest even number <= MAX_CSCV_SPLITS leaving >= 2H days a block);
    logit <= 0 when the in-sample best lands in the bottom half out of sample. Deflated Sharpe: SR0 from the
    variance of the N lines' daily Sharpes (N correlated lines count as N: a conservative bar)."""
    out: dict = {}
    perf = daily_rank_ic.dropna()
    splits = min(MAX_CSCV_SPLITS, (len(perf) // max(2 * horizon, 2)) // 2 * 2)
    if perf.shape[1] >= 2 and splits >= 4:
        res = pbo_cscv(perf.to_numpy(), n_splits=splits)
        out["pbo"] = {"pbo": float(res["pbo"]), "n_splits": int(splits), "n_variants": int(perf.shape[1]),
                      "n_days": int(len(perf)), "n_combinations": int(res["n_combinations"]),
                      "prob_oos_below_zero": float(res.get("prob_oos_below_zero", math.nan))}
    else:
        out["pbo"] = {"pbo": math.nan, "note": f"too few variants ({perf.shape[1]}) or days ({len(perf)}) for CSCV"}
    if pick_pnl is not None and line_pnl is not None and line_pnl.shape[1] >= 2:
        x = pick_pnl.dropna().to_numpy(dtype=np.float64)
        sharpes = line_pnl.apply(lambda c: c.mean() / c.std(ddof=1) if c.std(ddof=1) > 0 else np.nan)
        sharpes = sharpes[np.isfinite(sharpes)]
        if x.size >= 10 and len(sharpes) >= 2:
            res = deflated_sharpe(x, n_trials=len(sharpes), sharpe_var=float(np.var(sharpes.to_numpy(), ddof=1)))
            out["deflated_sharpe"] = {k: (int(v) if isinstance(v, (int, np.integer)) else float(v))
                                      for k, v in res.items()}
    return out
