"""Evaluation of the ensemble beside its members, metrics.json, the printed tables and the HTML tear sheet.

The figures come from the same `crnn_ray.metrics.evaluate` that `python -m crnn_ray.evaluate` runs, on the
same (signal, label) grid its join of signals/ and labels.parquet builds, so anyone can recompute them.
Nothing here carries a timestamp: rerunning the same command rewrites the same bytes.
"""

from __future__ import annotations

import html as _html
import math
from pathlib import Path
from types import SimpleNamespace
from typing import Any

import numpy as np
import pandas as pd

from crnn_ray.io import atomic_path, write_json_atomic
from crnn_ray.metrics import SMOOTH_DAYS, Costs, Neutral, evaluate, hac_lags, neutral_label, newey_west_tstat, nonoverlap_tstat
from crnn_ray.metrics_text import (TURNOVER_UNIT, book_verdict, cost_text, costs_document, costs_line, fmt,
                                   label_lag_text, liquidity_line, verdict_line)
from crnn_ray.score import render
from crnn_ray.score.ensemble import correlation
from crnn_ray.score.exposures import BETA_COLUMN, GROUP_COLUMN, exposure_grids
from crnn_ray.score.render import html_table
from crnn_ray.score.turnover import choose_smoothing, smoothed_record_signal
from crnn_ray.score.verdict import PICK, paired_rows

__all__ = ["print_plan", "evaluate_all", "metrics_document", "render_figures", "render_html", "write_report",
           "print_evaluation", "recompute_command", "vs_member", "vs_line", "costs_document", "costs_line",
           "basis_document", "basis_line", "add_turnover_control", "verdict", "best_baseline",
           "vs_best_baseline", "baseline_lines", "baseline_html",
           "liquidity_line", "execution_text", "tear_sheet_stats", "tear_sheet_document", "rank_autocorrelation",
           "monthly_ic"]

#: columns of the members-vs-ensemble table (pnl and Sharpe gross of costs; BE: break-even cost, bps)
SIDE_BY_SIDE = [("rank_ic", "RankIC", "{:+.4f}"), ("ic", "IC", "{:+.4f}"), ("rank_icir", "RankICIR", "{:+.3f}"),
                ("pnl_long_short", "LS pnl", "{:+.4f}"), ("pnl_long", "long pnl", "{:+.4f}"),
                ("sharpe", "gross SR", "{:+.2f}"), ("turnover", "turnover", "{:.3f}"),
                ("break_even_bps", "BE bps", "{:.1f}")]
#: added to SIDE_BY_SIDE when a cost is assumed
NET_COLUMNS = [("sharpe_net", "net SR", "{:+.2f}"), ("sharpe_long_only_net", "LO net SR", "{:+.2f}")]


def _side_by_side(s: dict) -> list[tuple[str, str, str]]:
    return SIDE_BY_SIDE + (NET_COLUMNS if (s.get("cost_bps") or 0) > 0 else [])


#: what metrics.json and the report say of a panel made before held returns (no `held_returns` metadata)
OLD_PANEL_RETURNS = ("panel made before held returns: its labels and y1 may drop a name for a jump, halt or "
                     "delisting after the decision (look-ahead survivorship); make the panel again")


def held_returns_text(rec) -> str:
    """The panel's held-return rule (data.ingest.held_returns_text, in its metadata), or the warning for older
    panels: whether every held return reaches the books."""
    return str((getattr(rec, "panel_meta", None) or {}).get("held_returns") or OLD_PANEL_RETURNS)


def execution_text(rec) -> str:
    """When the label's position is entered, from the panel's label_lag (docs/data.md, "Label lag"):
    `label y5 entered at close t+1 (label_lag 1): return close t+1 -> t+6, features up to close t`."""
    lag = getattr(rec, "label_lag", None)
    if lag is None:
        return f"label {rec.label}: label_lag unknown (when its position is entered is not recorded)"
    return label_lag_text(rec.label, rec.horizon, lag)


# ----------------------------------------------------------------------------------------------- printing
def print_plan(plan, cfg) -> None:
    """One window's plan: members, weights, units, greedy trace, rows, in-sample warnings."""
    print(f"experiment {cfg.experiment}: {len(plan.members)} member(s) by {cfg.select_by}, method {cfg.method}")
    for m, w in zip(plan.members, plan.weights):
        chosen = f"{cfg.select_by} {m.select_value:+.4f}  " if cfg.select_by != "valid_ic" else ""
        print(f"  {m.name:<32} trial {m.trial_id:<8} {chosen}valid_ic {m.valid_ic:+.4f}  weight {w:.3f}  "
              f"lookback {m.lookback}  {m.spec}")
    if plan.weight_note:
        print(f"note: {plan.weight_note}")
    sel = plan.selection or {}
    if sel.get("seed_average") and any(len(u.members) > 1 for u in plan.units):
        for u, w in zip(plan.units, plan.unit_weights):
            print(f"  unit {u.name:<27} {len(u.members)} seed(s) averaged  {cfg.select_by} (mean) "
                  f"{u.select_value:+.4f}  weight {w:.3f}")
    if sel.get("rule") == "greedy":
        steps = ", ".join(f"{t['unit']} (IC {t['ic']:+.4f}" + (f", corr {t['corr']:.2f}" if t["corr"] is not None
                                                              else "") + ")" for t in sel["trace"])
        print(f"greedy selection on {sel['split'][0]}..{sel['split'][1]} (pool {len(sel['pool'])}, corr_penalty "
              f"{sel['corr_penalty']:g}): {steps}")
    print(f"data {plan.panel_path}: {plan.period[0]}..{plan.period[1]}, {plan.n_rows} rows, "
          f"{plan.n_dates} dates, label {plan.label} (horizon {plan.horizon}, "
          f"label_lag {getattr(plan, 'label_lag', None)})")
    for name, (a, b) in plan.in_sample.items():
        print(f"WARNING in-sample: {a}..{b} lies inside member {name}'s train/valid window (+embargo); "
              f"these scores are not out-of-sample")


def print_part(part, cfg, walk_forward: bool) -> None:
    """After a window is predicted: its speed (a lone window), or one line of members (a walk-forward record's)."""
    plan, timing, path = part.plan, part.timing, part.path.replace("_", "-")
    if walk_forward:
        print(f"w{part.window:02d} test {plan.period[0]}..{plan.period[1]} ({plan.n_dates} dates): members "
              + ", ".join(f"{m.trial_id} {m.name} ({cfg.select_by} {m.select_value:+.4f}, weight {wt:.2f})"
                          for m, wt in zip(plan.members, plan.weights))
              + f"; {len(plan.predicted)} trial(s) predicted in {timing['seconds']:.1f}s on the {path} path", flush=True)
        return
    where = (f" ({timing['actors']} actors x {timing['num_cpus']} CPU"
             + (f" + {timing['num_gpus']:g} GPU" if timing.get("num_gpus") else "") + ")" if part.path == "ray" else
             f" ({timing['device']}, chunks of {timing['chunk_rows']} rows on {timing['workers']} threads)")
    print(f"scored {plan.n_rows} rows ({plan.n_dates} dates) on the {path} path in {timing['seconds']:.2f}s = "
          f"{timing['rows_per_s']:,.0f} rows/s" + where)
    print("  rows/s per member (its forward passes alone, per thread / per actor): "
          + ", ".join(f"{name} {rate:,.0f}" for name, rate in timing["member_rows_per_s"].items()))


def print_evaluation(rec, ev: dict, metrics: dict) -> None:
    columns = _side_by_side(ev["ensemble"].summary)
    head = f"{'':<34}" + "".join(f"{lab:>10}" for _, lab, _ in columns) + f"{'weight':>8}{'valid IC':>10}"
    print(f"\n{verdict(ev)}")
    print(f"\nevaluation on {rec.label} ({ev['ensemble'].summary['n_days']} days, "
          f"{int(np.isfinite(rec.label_grid).sum())} labelled rows):")
    print(f"execution: {execution_text(rec)}")
    print(f"returns: {held_returns_text(rec)}")
    print(basis_line(ev))
    print(head)
    rows = [("ENSEMBLE (" + metrics["method"] + ")", ev["ensemble"].summary, "", "")]
    rows += [(m.name, ev["members"][m.name].summary, f"{w:.3f}", f"{m.valid_ic:+.4f}")
             for m, w in zip(rec.members, rec.weights)]
    rows += [(f"baseline {name}", e.summary, "", "") for name, e in (ev.get("baselines") or {}).items()]
    for name, s, w, vic in rows:
        print(f"{name[:33]:<34}" + "".join(f"{fmt(s.get(k), f):>10}" for k, _, f in columns)
              + f"{w:>8}{vic:>10}")
    s = ev["ensemble"].summary
    print(f"ensemble: pnl method {s['pnl_method']}"
          + (f" (1-day returns {ev.get('returns')})" if s["pnl_method"] == "realised" else "")
          + f"; long-short Sharpe {fmt(s['sharpe'], '{:+.2f}')} gross (booked {fmt(s['sharpe_booked'], '{:+.2f}')}), "
          f"ann. vol {fmt(s['ann_vol'], '{:.2%}')}, max drawdown {fmt(s['max_drawdown'], '{:+.4f}')}; "
          f"RankIC t {fmt(s['rank_ic_tstat'], '{:+.2f}')} plain, {fmt(s['rank_ic_tstat_hac'], '{:+.2f}')} "
          f"Newey-West ({s['hac_lags']} lags), {fmt(s.get('rank_ic_tstat_nonoverlap'), '{:+.2f}')} non-overlapping; "
          f"IC t {fmt(s['ic_tstat'], '{:+.2f}')} plain, {fmt(s['ic_tstat_hac'], '{:+.2f}')} Newey-West, "
          f"{fmt(s.get('ic_tstat_nonoverlap'), '{:+.2f}')} non-overlapping; mean long-short pnl t "
          f"{fmt(s['ls_tstat'], '{:+.2f}')} plain, {fmt(s['ls_tstat_hac'], '{:+.2f}')} Newey-West, "
          f"{fmt(s.get('ls_tstat_nonoverlap'), '{:+.2f}')} non-overlapping")
    print(costs_line(s))
    print(liquidity_line(ev["ensemble"].liquidity_split, ev.get("liquidity")))
    if ev.get("vs_selected"):
        print(vs_line(ev["vs_selected"], metrics["select_by"]))
    for line in baseline_lines(metrics.get("vs_best_baseline")):
        print(line)
    if metrics.get("oracle_ic") is not None:
        print(f"ensemble test RankIC {ev['ensemble'].summary['rank_ic']:+.4f} vs the data's oracle RankIC "
              f"{fmt(metrics.get('oracle_rank_ic'), '{:+.4f}')} (ratio {fmt(metrics.get('rank_ic_vs_oracle'), '{:.2f}')}); "
              f"IC {ev['ensemble'].summary['ic']:+.4f} vs oracle IC {metrics['oracle_ic']:+.4f} on the same rows "
              f"(panel-wide {metrics.get('oracle_ic_panel')}; ratio {fmt(metrics['ic_vs_oracle'], '{:.2f}')})")
    corr = ev["correlation"]
    print("member correlation (mean daily cross-sectional Pearson):")
    # columns headed by the rows' numbers ([1] = the first member, ...): the names are too long for a header
    short = [n if n == "signal" else f"[{i + 1}]" for i, n in enumerate(corr.index)]
    labels = [n if n == "signal" else f"[{i + 1}] {n}" for i, n in enumerate(corr.index)]
    width = max(len(n) for n in labels) + 2
    print(" " * width + "".join(f"{c:>8}" for c in short))
    for label, row in zip(labels, corr.to_numpy()):
        print(f"{label:<{width}}" + "".join(f"{v:>+8.2f}" for v in row))
    print(f"recompute: {metrics['recompute']}")


# ---------------------------------------------------------------------------------------------- evaluation
def evaluate_all(rec, ecfg) -> dict | None:
    """Ensemble [D, S], members [D, S, K] and oracle evaluated on the labelled rows; None when none has a label.

    Every grid is cut to the dates and symbols with a labelled row, the grid `python -m crnn_ray.evaluate`
    builds from the written files, so its figures are these to the last bit.
    """
    if rec.label_grid is None:
        return None
    signal, preds = rec.signal, rec.preds
    labelled = np.isfinite(rec.label_grid)  # the label grid is NaN off the scored rows
    known = rec.label_grid[labelled]
    if known.size == 0 or known.min() == known.max():
        return None
    days, stocks = labelled.any(axis=1), labelled.any(axis=0)
    params = dict(quantiles=int(ecfg.quantiles), cost_bps=Costs.of_setting(ecfg.cost_bps).setting(),
                  min_stocks=int(ecfg.min_stocks), horizon=int(rec.horizon),
                  periods_per_year=float(ecfg.periods_per_year))
    label = rec.label_grid[days][:, stocks]
    # every known 1-day return of the cut (labels.parquet holds the same): the realised pnl of the H books
    returns = None if rec.returns_grid is None else rec.returns_grid[days][:, stocks]
    # a per-row liquidity measure on the rec's grid (e.g. the panel's traded_value_med), when the rec has one
    liquidity_grid = rec.liquidity_grid
    liquidity = None if liquidity_grid is None else np.asarray(liquidity_grid, dtype=np.float64)[days][:, stocks]

    def cut(grid: np.ndarray) -> np.ndarray:
        return np.where(labelled, grid, np.nan)[days][:, stocks]

    # neutral returns (the default basis): residualised per date against the market, trailing beta and group
    exposures = exposure_grids(rec) if ecfg.returns_basis == "neutral" else {}
    neutral = None
    if ecfg.returns_basis == "neutral":
        neutral = Neutral(*(None if exposures.get(k) is None else exposures[k][days][:, stocks]
                            for k in ("beta", "group")))

    def score(grid: np.ndarray, liquidity=None, basis=neutral):
        return evaluate(cut(grid), label, dates=rec.dates[days], returns=returns, liquidity=liquidity,
                        neutral=basis, **params)

    ensemble = score(signal, liquidity)
    if ensemble.summary["n_days"] == 0:
        print(f"labels present on {int(labelled.sum())} rows but no day has >= {params['min_stocks']} "
              f"labelled stocks: evaluation skipped")
        return None
    members = {m.name: score(preds[..., k].astype(np.float64)) for k, m in enumerate(rec.members)}
    oracle = None
    if rec.oracle_grid is not None and np.isfinite(rec.oracle_grid).any():
        oracle = score(rec.oracle_grid)
    grids = {m.name: preds[..., k] for k, m in enumerate(rec.members)}
    grids["signal"] = signal
    baselines = {name: score(g) for name, g in (rec.baselines or {}).items()}
    vs = None
    if rec.selected is not None:
        k = [m.trial_id for m in rec.columns].index(rec.selected.trial_id)
        chosen = members.get(rec.selected.name) if k < len(rec.members) else None
        chosen = chosen or score(preds[..., k].astype(np.float64))
        vs = vs_member(ensemble, chosen, rec.selected, rec.horizon)
        vs["in_ensemble"] = k < len(rec.members)
    pick = None
    if getattr(rec, "pick_grid", None) is not None:  # walk-forward: each window's ex-ante single pick, stitched
        pick = score(rec.pick_grid.astype(np.float64))
        picks = "; ".join(f"w{w:02d} {name}" for w, name in rec.picks)
        vs = vs_member(ensemble, pick, SimpleNamespace(name=f"ex-ante pick ({picks})", trial_id=PICK,
                                                         select_value=math.nan), rec.horizon)
        vs.update(in_ensemble=None, picks=[{"window": w, "line": name} for w, name in rec.picks])
    # the other basis beside the headline one: what the total returns say (or, with total headline, nothing)
    beside = score(signal, basis=None) if neutral is not None else None
    basis_label = label if neutral is None else neutral_label(cut(signal), label, neutral)
    return {"ensemble": ensemble, "members": members, "oracle": oracle, "correlation": correlation(grids),
            "params": params, "returns": rec.returns_name if returns is not None else None,
            "baselines": baselines, "vs_selected": vs, "pick": pick,
            "baseline_select": dict(getattr(rec, "baseline_select", None) or {}),
            "liquidity": rec.liquidity_name if liquidity is not None else None,
            "neutral": {"basis": ensemble.summary["returns_basis"],
                        "beta": BETA_COLUMN if neutral is not None and neutral.beta is not None else None,
                        "group": GROUP_COLUMN if neutral is not None and neutral.group is not None else None,
                        "group_column": exposures.get("group_column")},
            "total": beside, "scorer": score,
            "tear_sheet": tear_sheet_stats(cut(signal), basis_label, ensemble, params)}


# ------------------------------------------------------------------------------------ turnover and verdict
def add_turnover_control(rec, cfg, ev: dict) -> dict:
    """ev["turnover_control"]: each window's signal smoothing, chosen on its selection split
    (turnover.choose_smoothing), and the record's ensemble evaluated with it on the same rows and basis (the
    plain ensemble when every window keeps N = 1). Done once; needs the score config (it predicts the
    selection split), so without one (a bare namespace) nothing is chosen."""
    if "turnover_control" in ev:
        return ev["turnover_control"]
    if getattr(cfg, "evaluation", None) is None or not getattr(rec, "parts", None):
        choices = [{"days": 1, "chosen_on": None, "net_sharpe": {}, "note": "not chosen (no score config)"}]
    else:
        choices = [choose_smoothing(cfg, part) for part in rec.parts]
    smoothed = any(int(c["days"]) > 1 for c in choices)
    controlled = ev["scorer"](smoothed_record_signal(rec, choices)) if smoothed else ev["ensemble"]
    ev["turnover_control"] = {"choices": choices, "smoothed": smoothed, "evaluation": controlled}
    return ev["turnover_control"]


def _control_windows(rec, tc: dict) -> list[dict]:
    """metrics.json's turnover_control.windows: each window's choice, JSON-safe."""
    parts = getattr(rec, "parts", None) or []
    out = []
    for i, c in enumerate(tc["choices"]):
        window = getattr(parts[i], "window", None) if i < len(parts) else None
        out.append({**({"window": int(window)} if window is not None else {}), **c,
                    "net_sharpe": {str(k): v for k, v in c["net_sharpe"].items()}})
    return out


def control_text(tc: dict | None) -> str | None:
    """`signal smoothed over 3 days (chosen on the selection split by net Sharpe)`, or why not."""
    if not tc:
        return None
    days = sorted({int(c["days"]) for c in tc["choices"]})
    chosen = any(c.get("chosen_on") for c in tc["choices"])
    how = "chosen on the selection split by net Sharpe" if chosen else (tc["choices"][0].get("note") or "fixed")
    if days == [1]:
        return f"no signal smoothing ({how})"
    return f"signal smoothed over {'/'.join(map(str, days))} day(s) ({how})"


def best_baseline(ev: dict) -> tuple[str, dict] | None:
    """(name, summary) of the baseline chosen ex ante: the best mean daily RankIC on the selection part (each
    window's, averaged; plan._baseline_grids), never a test figure. None without baselines or selection figures."""
    chosen = {n: v for n, v in (ev.get("baseline_select") or {}).items()
              if n in (ev.get("baselines") or {}) and math.isfinite(v)}
    if not chosen:
        return None
    name = max(chosen, key=chosen.get)
    return name, ev["baselines"][name].summary


def vs_best_baseline(rec, ev: dict) -> dict | None:
    """Every net (a static record's members; a walk-forward record's variants, mean over seeds each day), the
    ex-ante pick and the ensemble against the best baseline (chosen on the selection split): the paired daily
    RankIC difference, its Newey-West t and the non-overlapping t (verdict.paired_rows)."""
    best = best_baseline(ev)
    if best is None:
        return None
    series = {"ENSEMBLE": ev["ensemble"]}
    if ev.get("pick") is not None:
        series[PICK] = ev["pick"]
    lines = {}
    for m in rec.members:
        lines.setdefault(m.variant_id if rec.walk_forward else m.name, []).append(ev["members"][m.name])
    daily = {name: _rank_ic_series([e]) for name, e in series.items()}
    daily.update({name: _rank_ic_series(es) for name, es in lines.items()})
    rows = paired_rows(daily, _rank_ic_series([ev["baselines"][best[0]]]), int(rec.horizon))
    return {"baseline": best[0], "chosen_by": "mean daily RankIC on the selection part (each window's, averaged)",
            "baseline_select_rank_ic": ev["baseline_select"][best[0]], "metric": "rank_ic", "rows": rows}


def baseline_lines(doc: dict | None) -> list[str]:
    """The printed comparison with the best baseline: a heading line, then one line per net, pick, ensemble."""
    if not doc:
        return []
    out = [f"vs best baseline {doc['baseline']} (chosen ex ante: selection-part RankIC "
           f"{fmt(doc['baseline_select_rank_ic'], '{:+.4f}')}): daily RankIC difference, HAC t, non-overlapping t"]
    for r in doc["rows"]:
        out.append(f"  {r['name']:<36}{fmt(r['diff'], '{:+.4f}'):>9}{fmt(r['tstat_hac'], '{:+.2f}'):>8}"
                   f"{fmt(r['tstat_nonoverlap'], '{:+.2f}'):>8}  ({r['n_days']} days)")
    return out


def baseline_html(doc: dict | None) -> str:
    """The report's section: every net, the ex-ante pick and the ensemble against the best baseline."""
    if not doc:
        return ""
    rows = [[_html.escape(r["name"]), render.cell(r["diff"], "{:+.4f}"), render.cell(r["tstat_hac"], "{:+.2f}"),
             render.cell(r["tstat_nonoverlap"], "{:+.2f}"), str(r["n_days"])] for r in doc["rows"]]
    return (f"<h2>Against the best baseline: {_html.escape(doc['baseline'])}</h2><p class='small'>chosen ex ante, "
            f"by its mean daily RankIC on the selection part ({render.cell(doc['baseline_select_rank_ic'], '{:+.4f}')}"
            "), never on these dates; the paired daily RankIC difference (net minus baseline) on the days both "
            "have, its Newey–West t and the non-overlapping t</p>"
            + html_table(["", "RankIC − baseline", "HAC t", "non-overlapping t", "days"], rows))


def _rank_ic_series(evaluations: list) -> pd.Series:
    """Daily RankIC by date, the mean over `evaluations` (a variant's seeds) each day."""
    cols = [pd.Series(e.daily["rank_ic"].to_numpy(np.float64), index=pd.to_datetime(e.daily["date"]))
            for e in evaluations]
    return pd.concat(cols, axis=1).mean(axis=1, skipna=True) if len(cols) > 1 else cols[0]


def verdict(ev: dict) -> str:
    """The one line at the top of the report and the console (metrics_text.verdict_line) for the ensemble
    as it would trade: with its turnover control, beside the best baseline."""
    tc = ev.get("turnover_control")
    summary = (tc or {}).get("evaluation", ev["ensemble"]).summary
    return verdict_line(summary, name="ensemble", baseline=best_baseline(ev), control=control_text(tc))


# ---------------------------------------------------------------------------------- tear-sheet statistics
def tear_sheet_stats(signal: np.ndarray, label: np.ndarray, ens, params: dict) -> dict:
    """What the tear sheet adds to `evaluate`, on the same cut [D, S] grids (`ens`: the ensemble's Evaluation):

    quantile_demeaned      [D, Q] each signal quantile's mean label minus the day's cross-sectional mean label
                           (over the same rows: signal and label finite, on days with >= min_stocks of them)
    quantile_returns_demeaned_bps   its mean over days per quantile, bps (equal bucket counts: they sum to 0)
    spread_bps             [D] top minus bottom quantile mean label (the long-short book's label), bps, with
                           its mean and Newey-West t (hac_lags(n, H) lags)
    rank_autocorr          {lag: mean over days of the signal's rank correlation with itself lag days earlier},
                           lags 1..max(H, 5); at lag H it is evaluate's signal_autocorr (what re-forms the books)
    monthly_ic             years x months 1..12: mean daily IC (NaN: no day)
    """
    horizon, quantiles = int(params["horizon"]), int(params["quantiles"])
    valid = np.isfinite(signal) & np.isfinite(label)
    valid &= (valid.sum(axis=1) >= int(params["min_stocks"]))[:, None]
    n = valid.sum(axis=1)
    with np.errstate(invalid="ignore", divide="ignore"):
        cs_mean = np.where(n > 0, np.where(valid, label, 0.0).sum(axis=1) / n, np.nan)
    q = ens.daily[[f"q{i + 1}" for i in range(quantiles)]].to_numpy(np.float64)
    demeaned = q - cs_mean[:, None]
    spread = 1e4 * (q[:, -1] - q[:, 0])
    lags = hac_lags(int(np.isfinite(spread).sum()), horizon)
    ranks = pd.DataFrame(np.where(valid, signal, np.nan)).rank(axis=1).to_numpy()
    return {"dates": pd.to_datetime(ens.daily["date"]).to_numpy(), "quantile_demeaned": demeaned,
            "quantile_returns_demeaned_bps": 1e4 * np.array([_nanmean(demeaned[:, i]) for i in range(quantiles)]),
            "spread_bps": spread, "spread_mean_bps": _nanmean(spread),
            "spread_tstat_hac": newey_west_tstat(spread, lags), "spread_hac_lags": int(lags),
            "spread_tstat_nonoverlap": nonoverlap_tstat(spread, horizon),
            "rank_autocorr": {lag: rank_autocorrelation(ranks, lag) for lag in range(1, max(horizon, 5) + 1)},
            "monthly_ic": monthly_ic(ens.daily)}


def _nanmean(x) -> float:
    x = np.asarray(x, dtype=np.float64)
    x = x[np.isfinite(x)]
    return float(x.mean()) if x.size else math.nan


def rank_autocorrelation(ranks: np.ndarray, lag: int) -> float:
    """Mean over days of the Pearson correlation of each day's signal ranks (NaN: not ranked) with those of
    `lag` days earlier, over the names ranked on both days (alphalens' factor_rank_autocorrelation)."""
    if not 0 < lag < len(ranks):
        return math.nan
    a, b = ranks[lag:], ranks[:-lag]
    both = np.isfinite(a) & np.isfinite(b)
    m = both.sum(axis=1)
    a0, b0 = np.where(both, a, 0.0), np.where(both, b, 0.0)
    with np.errstate(invalid="ignore", divide="ignore"):
        ma, mb = a0.sum(axis=1) / m, b0.sum(axis=1) / m
        cov = np.einsum("ij,ij->i", a0, b0) - m * ma * mb
        va = np.einsum("ij,ij->i", a0, a0) - m * ma * ma
        vb = np.einsum("ij,ij->i", b0, b0) - m * mb * mb
        r = cov / np.sqrt(va * vb)
    r[(m < 2) | ~(va > 1e-6) | ~(vb > 1e-6)] = np.nan
    return _nanmean(r)


def monthly_ic(daily: pd.DataFrame) -> pd.DataFrame:
    """Mean daily IC per calendar month: one row per year, columns 1..12 (NaN: no day with an IC)."""
    dates = pd.to_datetime(daily["date"])
    frame = pd.DataFrame({"year": dates.dt.year.to_numpy(), "month": dates.dt.month.to_numpy(),
                          "ic": daily["ic"].to_numpy(np.float64)})
    table = frame.groupby(["year", "month"])["ic"].mean().unstack("month")
    return table.reindex(columns=range(1, 13))


def tear_sheet_document(ts: dict) -> dict:
    """metrics.json's `tear_sheet`: the report's own figures (the rest are evaluate's, in `ensemble`)."""
    monthly = ts["monthly_ic"]
    return {
        "quantile_returns_demeaned_bps": {str(q + 1): float(v)
                                          for q, v in enumerate(ts["quantile_returns_demeaned_bps"])},
        "quantile_returns_demeaned": "mean over days of each signal quantile's mean label minus the day's "
                                     "cross-sectional mean label (same rows), bps",
        "spread_bps": {"mean": ts["spread_mean_bps"], "tstat_hac": ts["spread_tstat_hac"],
                       "hac_lags": ts["spread_hac_lags"], "tstat_nonoverlap": ts.get("spread_tstat_nonoverlap"),
                       "definition": "top minus bottom quantile mean label per day, bps"},
        "signal_rank_autocorr": {str(lag): v for lag, v in ts["rank_autocorr"].items()},
        "monthly_ic": {f"{y}-{m:02d}": float(v) for y, row in monthly.iterrows() for m, v in row.items()
                       if np.isfinite(v)},
    }


#: the figures behind a verdict (metrics.json's turnover_control and best_baseline)
VERDICT_KEYS = ("sharpe", "sharpe_net", "ls_net_tstat_hac", "break_even_bps", "turnover", "sharpe_long_only",
                "sharpe_long_only_net", "long_only_net_tstat_hac", "break_even_bps_long_only", "turnover_long",
                "rank_ic", "ic", "returns_basis", "cost_bps_buy", "cost_bps_sell")
#: the figures of the other basis printed and written beside the headline ones
BESIDE_KEYS = ("rank_ic", "rank_ic_tstat_hac", "ic", "ic_tstat_hac", "sharpe", "sharpe_long", "quantile_spread")


def basis_document(ev: dict) -> dict:
    """metrics.json's `returns_basis`: what every figure is measured on, what it means, and the ensemble's key
    figures on total returns beside (when the headline is neutral)."""
    neutral = ev.get("neutral") or {}
    basis = str(neutral.get("basis") or ev["ensemble"].summary.get("returns_basis") or "total")
    doc = {"basis": basis, "beta": neutral.get("beta"), "group": neutral.get("group"),
           "group_column": neutral.get("group_column"),
           "meaning": ("IC, RankIC, quantile returns and pnl on forward returns residualised per date (an equal-"
                       "weight OLS over the day's names) against the named exposures: what the market, beta and "
                       "sector do not explain; the pnl is that of the books hedged with them (hedge costs not "
                       "charged)") if basis != "total" else
                      "IC, RankIC, quantile returns and pnl on the raw forward returns (a market, beta or sector "
                      "tilt earns IC and pnl here)"}
    total = ev.get("total")
    if total is not None:
        doc["total_returns"] = {k: total.summary.get(k) for k in BESIDE_KEYS}
    return doc


def basis_line(ev: dict) -> str:
    """One printed line: the basis of every figure, and the ensemble's total-return figures beside."""
    doc = basis_document(ev)
    line = f"returns basis: {doc['basis']} (docs/metrics.md, \"Neutral returns\")"
    total = doc.get("total_returns")
    if total:
        line += (f"; on total returns RankIC {fmt(total['rank_ic'], '{:+.4f}')} (HAC t "
                 f"{fmt(total['rank_ic_tstat_hac'], '{:+.2f}')}), IC {fmt(total['ic'], '{:+.4f}')} (HAC t "
                 f"{fmt(total['ic_tstat_hac'], '{:+.2f}')}), long-short Sharpe {fmt(total['sharpe'], '{:+.2f}')}, "
                 f"long-only Sharpe {fmt(total['sharpe_long'], '{:+.2f}')}")
    return line


def vs_member(ensemble, member_ev, member, horizon: int) -> dict:
    """The ensemble against one member on the same rows: the daily RankIC and IC differences (ensemble -
    member), their means and Newey-West t-stats (lags = hac_lags(n, horizon)) over the days where both have
    a value, and the non-overlapping t beside them."""
    out = {"member": member.name, "trial_id": member.trial_id, "select_value": member.select_value}
    for key in ("rank_ic", "ic"):
        a = pd.Series(ensemble.daily[key].to_numpy(np.float64), index=pd.to_datetime(ensemble.daily["date"]))
        b = pd.Series(member_ev.daily[key].to_numpy(np.float64), index=pd.to_datetime(member_ev.daily["date"]))
        both = a - b.reindex(a.index)
        diff = both.dropna()
        n = int(len(diff))
        lags = hac_lags(n, horizon)
        out.update({f"{key}_ensemble": float(ensemble.summary[key]), f"{key}_member": float(member_ev.summary[key]),
                    f"{key}_diff": float(diff.mean()) if n else math.nan,
                    f"{key}_diff_tstat_hac": newey_west_tstat(diff.to_numpy(), lags) if n else math.nan,
                    f"{key}_diff_tstat_nonoverlap": nonoverlap_tstat(both.to_numpy(), horizon) if n else math.nan})
        if key == "ic":
            out.update({"hac_lags": int(lags), "n_days": n})
    return out


def vs_line(vs: dict, select_by: str) -> str:
    """`ensemble vs selected member X (chosen alone by select_rank_ic): RankIC +a vs +b, daily difference +c
    (HAC t ..., non-overlapping t ...); IC ...`"""
    def part(key: str) -> str:
        return (f"{fmt(vs.get(f'{key}_ensemble'), '{:+.4f}')} vs {fmt(vs.get(f'{key}_member'), '{:+.4f}')}, daily "
                f"difference {fmt(vs.get(f'{key}_diff'), '{:+.4f}')} (HAC t "
                f"{fmt(vs.get(f'{key}_diff_tstat_hac'), '{:+.2f}')}, non-overlapping t "
                f"{fmt(vs.get(f'{key}_diff_tstat_nonoverlap'), '{:+.2f}')}")
    return (f"ensemble vs selected member {vs['member']} (chosen alone by {select_by}): RankIC {part('rank_ic')}); "
            f"IC {part('ic')}; {vs['hac_lags']} lags, {vs['n_days']} days)")


def _cost_flag(cost: Any) -> str:
    """--cost-bps's value for a cost setting: `10` or `buy=5,sell=25`."""
    c = Costs.of_setting(cost)
    return f"{c.buy:g}" if c.buy == c.sell else f"buy={c.buy:g},sell={c.sell:g}"


def recompute_command(out: Path, label: str, params: dict, returns: str | None = None,
                      liquidity: str | None = None, label_lag: int | None = None, neutral: dict | None = None) -> str:
    basis = "neutral" if neutral and str(neutral.get("basis", "total")) != "total" else "total"
    return (f"python -m crnn_ray.evaluate --signals {out / 'signals'} --labels {out / 'labels.parquet'} "
            f"--label {label} --horizon {params['horizon']} --quantiles {params['quantiles']} "
            f"--cost-bps {_cost_flag(params['cost_bps'])} --min-stocks {params['min_stocks']} "
            f"--periods-per-year {params['periods_per_year']:g}" + (f" --returns {returns}" if returns else "")
            + (f" --liquidity {liquidity}" if liquidity else "")
            + (f" --label-lag {int(label_lag)}" if label_lag is not None else "")
            + f" --returns-basis {basis}"
            + "".join(f" --{k} {neutral[k]}" for k in ("beta", "group") if basis == "neutral" and neutral.get(k))
            + " --json metrics_check.json")


def metrics_document(rec, cfg, timing: dict, ev: dict | None) -> dict:
    """metrics.json: the verdict, ensemble (evaluate's JSON keys), turnover control, members, oracle,
    correlation, members' info, run. The turnover control is chosen before (job.py calls add_turnover_control,
    which predicts each window's selection split); called without it, it is chosen here, once."""
    panel_oracle = (rec.panel_meta.get("oracle_ic") or {}).get(rec.label) \
        if rec.panel_meta.get("source") == "synth" else None
    doc: dict[str, Any] = {
        "experiment": str(Path(cfg.experiment).resolve()),
        "panel": str(Path(rec.panel_path).resolve()),
        "label": rec.label,
        "horizon": rec.horizon,
        # the label yH at t is the return close t+L -> t+L+H (docs/data.md, "Label lag"); null: not recorded
        "label_lag": rec.label_lag,
        "execution": execution_text(rec),
        "held_returns": held_returns_text(rec),
        "method": cfg.method,
        "select_by": cfg.select_by,
        "top_k": cfg.top_k,
        "period": {"start": rec.period[0], "end": rec.period[1], "n_dates": rec.n_dates,
                   "n_rows": rec.n_rows},
        "in_sample": rec.in_sample,
        "weights": {m.name: float(w) for m, w in zip(rec.members, rec.weights)},
        "weight_note": rec.weight_note,
        "seed_average": bool((rec.selection or {}).get("seed_average", False)),  # as resolved ("auto": by the seeds)
        "selection": rec.selection or {"rule": "top_k"},
        "units": {u.name: {**u.info(), "weight": float(w)}
                  for u, w in zip(rec.units or [],
                                  [] if rec.unit_weights is None else rec.unit_weights)},
        "member_info": {c.name: c.info for c in rec.members},
        "path": timing["path"],
    }
    if ev is None:
        return doc
    tc = add_turnover_control(rec, cfg, ev)
    doc = {"verdict": verdict(ev), **doc}
    ens = ev["ensemble"]
    doc["ensemble"] = ens.to_dict()
    doc["turnover_control"] = {
        "rule": ("the ensemble signal averaged over its last N days (per-date z-scores); N from "
                 f"{list(SMOOTH_DAYS)} by the net long-short Sharpe at the stated cost on each window's selection "
                 "split, never on test"),
        "windows": _control_windows(rec, tc),
        "smoothed": tc["smoothed"],
        "summary": {k: tc["evaluation"].summary.get(k) for k in VERDICT_KEYS}}
    best = best_baseline(ev)
    doc["best_baseline"] = None if best is None else {
        "name": best[0], "chosen_by": "mean daily RankIC on the selection part (each window's, averaged), not test",
        "select_rank_ic": ev["baseline_select"][best[0]], **{k: best[1].get(k) for k in VERDICT_KEYS}}
    doc["vs_best_baseline"] = vs_best_baseline(rec, ev)
    out = Path(cfg.out).resolve()
    doc["ensemble"]["inputs"] = {  # as python -m crnn_ray.evaluate writes them for these files
        "signals": str(out / "signals"), "labels": str(out / "labels.parquet"), "label": rec.label,
        "signal_col": "signal", **({"returns": ev["returns"]} if ev.get("returns") else {}),
        **({"liquidity": ev["liquidity"]} if ev.get("liquidity") else {}),
        **{k: v for k, v in (ev.get("neutral") or {}).items() if k in ("beta", "group") and v},
        **({"label_lag": doc["label_lag"]} if doc["label_lag"] is not None else {}),
        "first_date": str(pd.Timestamp(ens.daily["date"].iloc[0]).date()),
        "last_date": str(pd.Timestamp(ens.daily["date"].iloc[-1]).date())}
    doc["members"] = {name: e.to_dict() for name, e in ev["members"].items()}
    doc["oracle_ic"] = ev["oracle"].summary["ic"] if ev["oracle"] is not None else None
    doc["oracle_rank_ic"] = ev["oracle"].summary["rank_ic"] if ev["oracle"] is not None else None
    doc["oracle_ic_panel"] = panel_oracle
    ens_ic = ev["ensemble"].summary["ic"]
    doc["ic_vs_oracle"] = (ens_ic / doc["oracle_ic"]) if doc["oracle_ic"] else None
    doc["rank_ic_vs_oracle"] = (ev["ensemble"].summary["rank_ic"] / doc["oracle_rank_ic"]) \
        if doc["oracle_rank_ic"] else None
    doc["member_correlation"] = {r: {c: float(v) for c, v in row.items()} for r, row in
                                 ev["correlation"].to_dict(orient="index").items()}
    doc["baselines"] = {name: e.to_dict()["summary"] for name, e in (ev.get("baselines") or {}).items()}
    doc["vs_selected_member"] = ev.get("vs_selected")
    doc["recompute"] = recompute_command(Path(cfg.out), rec.label, ev["params"], ev.get("returns"),
                                         ev.get("liquidity"), doc["label_lag"], ev.get("neutral"))
    doc["returns_basis"] = basis_document(ev)
    doc["costs"] = costs_document(ens.summary)
    doc["ensemble"]["liquidity_split"]["column"] = ev.get("liquidity")
    if ev.get("tear_sheet") is not None:
        doc["tear_sheet"] = tear_sheet_document(ev["tear_sheet"])
    return doc


# ------------------------------------------------------------------------------------------------- figures
def render_figures(rec, ev: dict, ecfg) -> dict[str, bytes]:
    """PNG bytes by file name, each drawn for 2x pixel density (render.py): cumulative pnl (gross, net beside
    it when a cost is assumed) over its underwater panel, demeaned quantile returns and their cumulative sums,
    the top-minus-bottom spread with its band, daily / distribution / monthly IC, turnover, rank
    autocorrelation, member correlation."""
    ens, ts = ev["ensemble"], ev["tear_sheet"]
    s, daily = ens.summary, ens.daily
    cost = cost_text(s) if (s.get("cost_bps_buy") or s.get("cost_bps_sell") or s.get("cost_bps")) else None
    tc = ev.get("turnover_control") or {}
    window, h = int(ecfg.rolling_ic_days), int(rec.horizon)
    how = {"realised": f"realised daily pnl of the {h} overlapping {h}-day books, summed",
           "non_overlapping": f"{rec.label} of every {h}th day's book, on its last day held, summed"}
    return {
        "pnl.png": render.pnl_figure(daily, {n: e.daily for n, e in ev["members"].items()},
                                     how.get(s["pnl_method"], f"{rec.label} per day, summed"), cost,
                                     tc["evaluation"].daily if tc.get("smoothed") else None,
                                     "smoothed " + "/".join(sorted({str(c["days"]) for c in tc.get("choices", [])}))
                                     + " days"),
        "quantiles.png": render.quantile_figure(ts["quantile_returns_demeaned_bps"], rec.label),
        "quantile_cum.png": render.quantile_cum_figure(ts["dates"], ts["quantile_demeaned"], h),
        "spread.png": render.spread_figure(ts["dates"], ts["spread_bps"], window, h, ts["spread_mean_bps"],
                                           ts["spread_tstat_hac"], ts.get("spread_tstat_nonoverlap")),
        "ic_daily.png": render.ic_daily_figure(daily, window, s["ic"]),
        "ic_hist.png": render.ic_hist_figure(daily["ic"].to_numpy(np.float64)),
        "ic_monthly.png": render.ic_monthly_figure(ts["monthly_ic"]),
        "turnover.png": render.turnover_figure(daily, s["turnover"]),
        "autocorr.png": render.autocorr_figure(ts["rank_autocorr"], h),
        "correlation.png": render.correlation_figure(ev["correlation"]),
    }


# ---------------------------------------------------------------------------------------------------- html
#: the ensemble's key numbers, in the order a PM reads them: (summary key, label, format, scale, unit);
#: {h}: the horizon
KEY_NUMBERS = [
    ("rank_ic", "RankIC (headline)", "{:+.4f}", 1, "rank correlation"),
    ("rank_ic_tstat_hac", "RankIC t-stat (Newey-West)", "{:+.2f}", 1, "t"),
    ("rank_ic_tstat_nonoverlap", "RankIC t-stat (non-overlapping days)", "{:+.2f}", 1, "t"),
    ("rank_icir", "RankICIR (daily)", "{:+.3f}", 1, "mean / sd of the daily RankIC"),
    ("ic", "IC (Pearson)", "{:+.4f}", 1, "correlation"),
    ("icir", "ICIR (daily)", "{:+.3f}", 1, "mean / sd of the daily IC"),
    ("ic_tstat", "IC t-stat (plain)", "{:+.2f}", 1, "t"), ("ic_tstat_hac", "IC t-stat (Newey-West)", "{:+.2f}", 1, "t"),
    ("ic_tstat_nonoverlap", "IC t-stat (non-overlapping days)", "{:+.2f}", 1, "t"),
    ("hac_lags", "Newey-West lags", "{:d}", 1, "days"), ("ic_positive", "days IC > 0", "{:.0f}", 100, "% of days"),
    ("quantile_spread", "top − bottom quantile mean label", "{:+.1f}", 1e4, "bps per {h}-day label"),
    ("signal_autocorr", "signal rank autocorrelation, lag {h}", "{:+.3f}", 1, "correlation"),
    ("pnl_method", "pnl method (docs/metrics.md)", "{}", 1, ""),
    ("ls_mean", "long-short mean daily pnl (booked, gross)", "{:+.2f}", 1e4, "bps a day"),
    ("pnl_long_short", "long-short pnl (sum, gross)", "{:+.2f}", 100, "% (sum of daily pnl)"),
    ("ann_return", "long-short ann. return (gross)", "{:+.2f}", 100, "% a year"),
    ("ann_vol", "long-short ann. vol", "{:.2f}", 100, "% a year"),
    ("sharpe", "long-short Sharpe (gross, before costs)", "{:+.2f}", 1, "annualised"),
    ("sharpe_booked", "long-short Sharpe, booked (naive, gross)", "{:+.2f}", 1, "annualised"),
    ("ls_tstat", "long-short mean pnl t-stat (plain)", "{:+.2f}", 1, "t"),
    ("ls_tstat_hac", "long-short mean pnl t-stat (Newey-West)", "{:+.2f}", 1, "t"),
    ("ls_tstat_nonoverlap", "long-short mean pnl t-stat (non-overlapping books)", "{:+.2f}", 1, "t"),
    ("max_drawdown", "long-short max drawdown (gross)", "{:+.2f}", 100, "% (of the summed pnl)"),
    ("pnl_long", "long-only pnl vs mean (sum, gross)", "{:+.2f}", 100, "% (sum of daily pnl)"),
    ("sharpe_long", "long-only Sharpe (gross)", "{:+.2f}", 1, "annualised"),
    ("turnover", "turnover / day (traded notional, both legs)", "{:.1f}", 100, "% of one leg's capital a day"),
    ("n_days", "days evaluated", "{:d}", 1, "days"),
]
#: columns of the tear sheet's members-vs-ensemble table: (summary key, header with unit, format, scale)
SIDE_BY_SIDE_HTML = [("rank_ic", "RankIC", "{:+.4f}", 1), ("ic", "IC", "{:+.4f}", 1),
                     ("rank_icir", "RankICIR", "{:+.3f}", 1),
                     ("pnl_long_short", "LS pnl, %", "{:+.2f}", 100), ("pnl_long", "long pnl, %", "{:+.2f}", 100),
                     ("sharpe", "gross SR", "{:+.2f}", 1), ("turnover", "turnover, %/day", "{:.1f}", 100),
                     ("break_even_bps", "BE, bps", "{:.1f}", 1)]
#: why a value is absent, by summary key (the footnote of its em dash)
ABSENT = {"break_even_bps": "break-even: no turnover, or no pnl days",
          "sharpe_net": "no net Sharpe: no pnl days"}
GENERIC_ABSENT = "not defined on these days (no day with a book or an IC, or a constant series)"


def _txt(text: str) -> str:
    """A text value, left-aligned in a numeric column (escaped)."""
    return f"<div class='txt'>{_html.escape(text)}</div>"


def _value(notes, summary: dict, key: str, pattern: str, scale: float = 1.0) -> str:
    """A summary value formatted, or an em dash with its reason as a footnote."""
    value = summary.get(key)
    out = render.cell(value, pattern, scale)
    if out != render.DASH:
        return out
    if key.startswith("break_even"):  # costs_document states why (a losing signal, or nothing traded)
        text = _break_even_reason(value, summary.get("pnl_long" if key.endswith("_long") else "pnl_long_short"))
        return notes.absent(text)
    return notes.absent(ABSENT.get(key, GENERIC_ABSENT))


def _break_even_reason(value, gross_total) -> str:
    doc = costs_document({"break_even_bps": value, "pnl_long_short": gross_total})
    return "break-even: " + doc["break_even_text"].removeprefix("n/a (").removesuffix(")")


def _key_rows(rec, cfg, metrics: dict, ev: dict, notes) -> list[list[str]]:
    """The key numbers: metric, value, unit (cost rows after the gross Sharpe; vs member and oracle after IC)."""
    s, h = ev["ensemble"].summary, int(rec.horizon)
    rows = [["execution (label lag)", _txt(execution_text(rec)), ""],
            ["returns realised", _txt(held_returns_text(rec)), ""],
            ["returns basis", _txt(basis_line(ev)), ""]]
    rows += [[lab.format(h=h), _value(notes, s, k, f, scale), unit.format(h=h)]
             for k, lab, f, scale, unit in KEY_NUMBERS]
    costs = costs_document(s)
    priced = bool(costs["cost_bps_buy"] or costs["cost_bps_sell"])
    text = costs["cost_text"]
    cost_rows = [["cost assumed", _txt(text + ("" if priced else " (none: every pnl and Sharpe here is gross)")),
                  "bps of traded notional, per side"]]
    if priced:
        cost_rows += [[f"long-short Sharpe (net of {text})", _value(notes, s, "sharpe_net", "{:+.2f}"),
                       "annualised"],
                      ["long-short net Sharpe t-stat (Newey-West)", _value(notes, s, "ls_net_tstat_hac", "{:+.2f}"),
                       "t"],
                      [f"long-short pnl (sum, net of {text})",
                       _value(notes, s, "pnl_long_short_net", "{:+.2f}", 100), "% (sum of daily pnl)"]]
    cost_rows += [["long-only Sharpe (top bucket, its own book; gross)", _value(notes, s, "sharpe_long_only", "{:+.2f}"),
                   "annualised"]]
    if priced:
        cost_rows += [[f"long-only Sharpe (net of {text})", _value(notes, s, "sharpe_long_only_net", "{:+.2f}"),
                       "annualised"]]
    cost_rows += [["break-even cost, long-short", _value(notes, s, "break_even_bps", "{:.1f}"), "bps per unit traded"],
                  ["break-even cost, long-only", _value(notes, s, "break_even_bps_long_only", "{:.1f}"),
                   "bps per unit traded"],
                  ["break-even cost, long vs the mean", _value(notes, s, "break_even_bps_long", "{:.1f}"),
                   "bps per unit traded"]]
    tc = ev.get("turnover_control")
    if tc:
        ctl = tc["evaluation"].summary
        cost_rows += [["turnover control", _txt(control_text(tc) or ""), ""],
                      ["  with it: long-short net Sharpe / break-even / turnover",
                       f"{render.cell(ctl.get('sharpe_net'), '{:+.2f}')} / {render.cell(ctl.get('break_even_bps'), '{:.1f}')}"
                       f" bps / {render.cell(ctl.get('turnover'), '{:.2f}')} a day", "annualised / bps / per day"]]
    at = next(i for i, r in enumerate(rows) if r[0].startswith("long-short Sharpe (gross"))
    rows[at + 1:at + 1] = cost_rows
    split = ev["ensemble"].liquidity_split
    rows.append(["liquidity split (IC by half)",
                 _txt(liquidity_line(split, ev.get("liquidity")).replace("n/a", render.DASH))
                 if split.get("available") else
                 notes.absent("liquidity split: " + str(split.get("note") or "n/a").removeprefix("n/a (")
                              .removesuffix(")") + "; an ingested panel with volume has traded_value_med"),
                 "IC (correlation)"])
    if metrics.get("oracle_ic") is not None:
        rows.insert(4, ["oracle RankIC / IC of the data (same rows)",
                        render.cell(metrics.get("oracle_rank_ic"), "{:+.4f}") + " / "
                        + render.cell(metrics["oracle_ic"], "{:+.4f}")
                        + f" &nbsp;(ensemble / oracle = {render.cell(metrics.get('rank_ic_vs_oracle'), '{:.2f}')} / "
                        f"{render.cell(metrics['ic_vs_oracle'], '{:.2f}')})", "rank correlation / correlation"])
    vs = metrics.get("vs_selected_member")
    if vs:
        rows.insert(4, [f"vs selected member {_html.escape(vs['member'])} (chosen alone by "
                        f"{_html.escape(cfg.select_by)}): daily RankIC difference",
                        f"{render.cell(vs.get('rank_ic_diff'), '{:+.4f}')} (HAC t "
                        f"{render.cell(vs.get('rank_ic_diff_tstat_hac'), '{:+.2f}')}, {vs['hac_lags']} lags, "
                        f"{vs['n_days']} days; member RankIC {render.cell(vs.get('rank_ic_member'), '{:+.4f}')}; IC "
                        f"difference {render.cell(vs['ic_diff'], '{:+.4f}')})", "rank correlation"])
    return rows


def _side_rows(rec, cfg, ev: dict, notes) -> tuple[list[str], list[list[str]]]:
    """The ensemble beside its members and the baselines: header (with units) and rows."""
    s = ev["ensemble"].summary
    columns = SIDE_BY_SIDE_HTML + ([("sharpe_net", "net SR", "{:+.2f}", 1), ("sharpe_long_only_net", "LO net SR",
                                                                        "{:+.2f}", 1)] if (s.get("cost_bps") or 0) > 0
                                   else [])
    dash = render.DASH

    def values(summary: dict) -> list[str]:
        return [_value(notes, summary, k, f, scale) for k, _, f, scale in columns]

    rows = [[f"<b>ENSEMBLE ({_html.escape(cfg.method)})</b>", dash, dash, dash, *values(s)]]
    for m, w in zip(rec.members, rec.weights):
        rows.append([_html.escape(m.name), _html.escape(m.trial_id), render.cell(w, "{:.3f}"),
                     render.cell(m.valid_ic, "{:+.4f}"), *values(ev["members"][m.name].summary)])
    for bname, e in (ev.get("baselines") or {}).items():
        rows.append([f"baseline {_html.escape(bname)}", dash, dash, dash, *values(e.summary)])
    return ["", "trial", "weight", "valid IC", *[lab for _, lab, _, _ in columns]], rows


#: the leaderboard's absent values: their footnotes (render.Notes.resolve)
NOT_HERE = render.Absent("not in the ensemble: this report predicted its members only")
FITTED = render.Absent("baselines are closed-form fits: no seeds trained, no network parameters")
NO_REF = render.Absent("the research report gives reference values for the paper's variants only")


def _leaderboard_rows(rec, cfg, ev: dict, notes) -> tuple[list[str], list[list[str]]]:
    """The sweep's leaderboard beside this report's test figures (members: mean over their selected seeds;
    baselines: as evaluated here); an absent value is an em dash with its reason as a footnote."""
    path = Path(cfg.experiment) / "leaderboard.parquet"
    if not path.is_file():
        return [], []
    lb = pd.read_parquet(path)
    member_variants = {m.variant_id for m in rec.members}
    test = {f"baseline/{name}": [e.summary] for name, e in (ev.get("baselines") or {}).items()}
    for m in rec.members:
        test.setdefault(m.variant_id, []).append(ev["members"][m.name].summary)
    header = ["variant", "status", "seeds ok", "valid IC (± sd)", "select IC (± sd)", "valid LS pnl, %",
              "test IC (here)", "test LS pnl, % (here)", "report IC", "report pnl", "params"]
    rows = []
    for r in lb.itertuples(index=False):
        base = str(getattr(r, "family", "")) == "baseline" or str(r.status) == "baseline"
        here = test.get(r.variant_id)
        params = getattr(r, "params", None)
        row = [
            _html.escape(str(r.variant_id)) + (" <b>(member)</b>" if r.variant_id in member_variants else ""),
            _html.escape(str(r.status)), FITTED if base else f"{getattr(r, 'n_ok', 0)}/{getattr(r, 'n_seeds', 0)}",
            _mean_sd(getattr(r, "valid_ic_mean", None), getattr(r, "valid_ic_std", None)),
            _mean_sd(getattr(r, "select_ic_mean", None), getattr(r, "select_ic_std", None)),
            render.cell(getattr(r, "valid_pnl_long_short_mean", None), "{:+.2f}", 100),
            render.cell(np.mean([x["ic"] for x in here]), "{:+.4f}") if here else NOT_HERE,
            render.cell(np.mean([x["pnl_long_short"] for x in here]), "{:+.2f}", 100) if here else NOT_HERE,
            render.cell(getattr(r, "seed_ic", None), "{:.4f}", absent=NO_REF),
            render.cell(getattr(r, "seed_pnl", None), "{:.3f}", absent=NO_REF),
            FITTED if base or params is None or not params >= 0 else render.cell(params, "{:,d}"),
        ]
        rows.append([notes.resolve(c) for c in row])
    return header, rows


def _mean_sd(mean, sd) -> str:
    """`+0.1448 ± 0.0184`, or the mean alone when there is no spread (one seed)."""
    out, spread = render.cell(mean, "{:+.4f}"), render.cell(sd, "{:.4f}")
    return out if render.DASH in (out, spread) else f"{out} ± {spread}"


CSS = """
body{font-family:-apple-system,Segoe UI,Helvetica,Arial,sans-serif;margin:24px auto;max-width:1100px;color:#222}
h1{font-size:22px;margin-bottom:2px} h2{font-size:16px;margin-top:28px;border-bottom:1px solid #ddd}
.sub{color:#666;font-size:13px;margin-bottom:10px}
.units{background:#f4f6f8;border-left:3px solid #4a78a8;padding:6px 10px;font-size:13px;margin:8px 0 14px}
table{border-collapse:collapse;font-size:12px;margin:6px 0} th,td{padding:4px 9px;border-bottom:1px solid #eee}
th{background:#f4f6f8;text-align:left} td{text-align:right;font-variant-numeric:tabular-nums}
td:first-child{text-align:left} .key td{font-size:14px}
.key td:last-child{text-align:left;color:#666;white-space:nowrap}
.txt{text-align:left} .nw{white-space:nowrap} .warn{background:#fff3cd;padding:8px;border:1px solid #e0c36b}
.verdict{background:#eef5ee;border-left:4px solid #2e7d32;padding:8px 10px;font-size:14px;font-weight:600}
.row{display:flex;flex-wrap:wrap;gap:12px;align-items:flex-start}
img{max-width:100%;height:auto;display:block;margin:6px 0} .small{color:#666;font-size:11px}
.fn a{text-decoration:none;color:#4a78a8} ol.notes{font-size:12px;color:#444}
"""


def _figures_html(window: int, horizon: int) -> list[str]:
    full, half, tag = render.FULL, render.HALF, render.figure_tag
    return [
        "<h2>Performance</h2>", tag("pnl.png", full, "cumulative pnl and underwater"),
        "<h2>Returns by signal quantile</h2><div class='row'>", tag("quantiles.png", half, "demeaned quantile returns"),
        tag("quantile_cum.png", half, "cumulative return by quantile"), "</div>",
        tag("spread.png", full, "top minus bottom spread"),
        f"<p class='small'>Demeaned: each day, a quantile's mean label minus the mean label of all the day's "
        f"names, averaged over days (the quantiles sum to ~0). Cumulative: that daily figure / {horizon} (the "
        f"{horizon}-day label booked over its {horizon} days), summed. Spread band: the rolling {window}-day mean "
        f"± 2 standard errors, SE = rolling sd / √({window} / {horizon}) (overlapping {horizon}-day labels); "
        "the dashed line is the whole period's mean with its Newey-West t.</p>",
        "<h2>Information coefficient</h2>", tag("ic_daily.png", full, "daily IC"),
        "<div class='row'>", tag("ic_hist.png", half, "IC distribution"), tag("ic_monthly.png", half, "monthly IC"),
        "</div>", "<h2>Turnover and signal decay</h2><div class='row'>", tag("turnover.png", half, "turnover"),
        tag("autocorr.png", half, "signal rank autocorrelation"), "</div>",
        "<p class='small'>Rank autocorrelation: mean over days of the correlation of the signal's cross-sectional "
        "ranks with those of <i>lag</i> days earlier; the lower it is at the horizon, the more the books trade.</p>",
    ]


def render_html(rec, cfg, metrics: dict, ev: dict, figures: dict[str, bytes], extra: str = "") -> str:
    """The tear sheet, one self-contained file (every figure inlined as a data: URI): the unit convention,
    key numbers, members beside the ensemble, figures, correlation, leaderboard, footnotes (`extra`: a
    section after the key numbers, e.g. the walk-forward windows and leaderboard)."""
    notes = render.Notes()
    name = Path(cfg.experiment).name
    lag = "unknown" if rec.label_lag is None else rec.label_lag
    side_header, side_rows = _side_rows(rec, cfg, ev, notes)
    key_rows = _key_rows(rec, cfg, metrics, ev, notes)
    corr = ev["correlation"]
    corr_rows = [[_html.escape(n), *[render.cell(v, "{:+.2f}") for v in corr.iloc[i].to_numpy()]]
                 for i, n in enumerate(corr.index)]
    lb_header, lb_rows = _leaderboard_rows(rec, cfg, ev, notes)
    warn = "".join(f'<p class="warn">In-sample: {a}..{b} lies inside member {_html.escape(n)}\'s train/valid '
                   f"window (+embargo); these scores are not out-of-sample.</p>"
                   for n, (a, b) in rec.in_sample.items())
    cost = costs_document(ev["ensemble"].summary)["cost_text"]
    parts = [
        "<!DOCTYPE html><html><head><meta charset='utf-8'>",
        f"<title>Ensemble tear sheet: {_html.escape(name)}</title><style>{CSS}</style></head><body>",
        f"<h1>Ensemble tear sheet: {_html.escape(name)}</h1>",
        f"<div class='sub'>{len(rec.members)} member(s) chosen by {_html.escape(cfg.select_by)}, "
        f"{_html.escape(cfg.method)} of per-date z-scores &middot; {rec.period[0]} to {rec.period[1]} "
        f"({metrics['period']['n_dates']} dates, {metrics['period']['n_rows']:,} rows) &middot; label "
        f"{_html.escape(rec.label)} (horizon {rec.horizon}, label_lag {lag}) "
        f"&middot; data {_html.escape(Path(rec.panel_path).name)}</div>",
        f"<p class='verdict'>{_html.escape(verdict(ev))}</p>",
        f"<div class='units'>{_html.escape(render.UNITS)}</div>", warn,
        "<h2>Key numbers (ensemble)</h2>", html_table(["metric", "value", "unit"], key_rows, "key"),
        baseline_html(metrics.get("vs_best_baseline")), extra,
        "<h2>Ensemble beside its members</h2>", html_table(side_header, side_rows),
        f"<p class='small'>pnl and Sharpe gross of costs (net SR: net of {_html.escape(cost)}); "
        f"LS / long pnl: summed daily pnl; BE: break-even cost per unit traded (turnover = "
        f"{_html.escape(TURNOVER_UNIT)})</p>",
        *_figures_html(_window(cfg), int(rec.horizon)),
        "<h2>Member correlation</h2><p class='small'>mean over dates of the cross-sectional Pearson "
        "correlation of the raw predictions (signal: the ensemble)</p>",
        render.figure_tag("correlation.png", render.HALF, "member correlation"),
        html_table(["", *[str(c) for c in corr.columns]], corr_rows),
    ]
    if lb_rows:
        parts += ["<h2>Sweep leaderboard</h2><p class='small'>valid figures from the sweep (± the sd over seeds, "
                  "where a variant has two or more); test figures from this report (members: their selected seeds; "
                  "baselines: as above); report IC / pnl: the research report's reference values</p>",
                  html_table(lb_header, lb_rows)]
    parts += [notes.html(),
              f"<p class='small'>Recompute the key numbers: <code>{_html.escape(metrics['recompute'])}</code>. "
              "Definitions: docs/metrics.md, docs/scoring.md. Every figure is inside this file; the same PNGs "
              "are also written beside it, as " + ", ".join(f"figures/{f}" for f in sorted(figures)) + ".</p>",
              "</body></html>"]
    return render.inline_figures("\n".join(p for p in parts if p) + "\n", figures)


def _window(cfg) -> int:
    """The rolling window of the daily IC and spread figures (evaluation.rolling_ic_days)."""
    ecfg = getattr(cfg, "evaluation", None)
    return int(getattr(ecfg, "rolling_ic_days", 20) or 20)


def write_report(out: Path, metrics: dict, figures: dict[str, bytes], html: str) -> None:
    """figures/ (whole directory swapped in atomically), metrics.json and report.html, each atomic."""
    with atomic_path(out / "figures") as tmp:
        tmp.mkdir(parents=True)
        for name, data in sorted(figures.items()):
            (tmp / name).write_bytes(data)
    write_json_atomic(out / "metrics.json", metrics)
    with atomic_path(out / "report.html") as tmp:
        tmp.write_text(html)
