"""Evaluation of the ensemble beside its members, metrics.json, the printed tables and the HTML tear sheet.

The figures come from the same `crnn_ray.metrics.evaluate` that `python -m crnn_ray.evaluate` runs, on the
same (signal, label) grid its join of signals/ and labels.parquet builds, so anyone can recompute them.
Nothing here carries a timestamp: rerunning the same command rewrites the same bytes.
"""

from __future__ import annotations

import html as _html
import math
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

from crnn_ray.io import atomic_path, write_json_atomic
from crnn_ray.metrics import evaluate, hac_lags, newey_west_tstat
from crnn_ray.metrics_text import TURNOVER_UNIT, costs_document, costs_line, fmt, label_lag_text, liquidity_line
from crnn_ray.score.ensemble import correlation
from crnn_ray.score.render import html_table, png, pyplot

__all__ = ["print_plan", "evaluate_all", "metrics_document", "render_figures", "render_html", "write_report",
           "print_evaluation", "recompute_command", "vs_member", "vs_line", "costs_document", "costs_line",
           "liquidity_line", "execution_text"]

#: the ensemble's key numbers, in the order a PM reads them: (summary key, label, format)
KEY_NUMBERS = [
    ("ic", "IC", "{:+.4f}"), ("rank_ic", "RankIC", "{:+.4f}"), ("icir", "ICIR (daily)", "{:+.3f}"),
    ("ic_tstat", "IC t-stat (plain)", "{:+.2f}"), ("ic_tstat_hac", "IC t-stat (Newey-West)", "{:+.2f}"),
    ("rank_ic_tstat_hac", "RankIC t-stat (Newey-West)", "{:+.2f}"), ("hac_lags", "Newey-West lags", "{:d}"),
    ("ic_positive", "days IC > 0", "{:.0%}"),
    ("pnl_method", "pnl method (docs/metrics.md)", "{}"),
    ("pnl_long_short", "long-short pnl (sum, gross)", "{:+.4f}"),
    ("ann_return", "long-short ann. return (gross)", "{:+.2%}"),
    ("ann_vol", "long-short ann. vol", "{:.2%}"),
    ("sharpe", "long-short Sharpe (gross, before costs)", "{:+.2f}"),
    ("sharpe_booked", "long-short Sharpe, booked (naive, gross)", "{:+.2f}"),
    ("ls_tstat", "long-short mean pnl t-stat (plain)", "{:+.2f}"),
    ("ls_tstat_hac", "long-short mean pnl t-stat (Newey-West)", "{:+.2f}"),
    ("max_drawdown", "long-short max drawdown (gross)", "{:+.4f}"),
    ("pnl_long", "long-only pnl vs mean (sum, gross)", "{:+.4f}"),
    ("sharpe_long", "long-only Sharpe (gross)", "{:+.2f}"),
    ("turnover", "turnover / day (traded notional, both legs)", "{:.3f}"), ("n_days", "days evaluated", "{:d}"),
]
#: columns of the members-vs-ensemble table (pnl and Sharpe gross of costs; BE: break-even cost, bps)
SIDE_BY_SIDE = [("ic", "IC", "{:+.4f}"), ("rank_ic", "RankIC", "{:+.4f}"), ("icir", "ICIR", "{:+.3f}"),
                ("pnl_long_short", "LS pnl", "{:+.4f}"), ("pnl_long", "long pnl", "{:+.4f}"),
                ("sharpe", "gross SR", "{:+.2f}"), ("turnover", "turnover", "{:.3f}"),
                ("break_even_bps", "BE bps", "{:.1f}")]
#: added to SIDE_BY_SIDE when a cost is assumed
NET_COLUMN = ("sharpe_net", "net SR", "{:+.2f}")


def _side_by_side(s: dict) -> list[tuple[str, str, str]]:
    return SIDE_BY_SIDE + ([NET_COLUMN] if (s.get("cost_bps") or 0) > 0 else [])


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
    print(f"\nevaluation on {rec.label} ({ev['ensemble'].summary['n_days']} days, "
          f"{int(np.isfinite(rec.label_grid).sum())} labelled rows):")
    print(f"execution: {execution_text(rec)}")
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
          f"IC t {fmt(s['ic_tstat'], '{:+.2f}')} plain, {fmt(s['ic_tstat_hac'], '{:+.2f}')} Newey-West "
          f"({s['hac_lags']} lags); mean long-short pnl t {fmt(s['ls_tstat'], '{:+.2f}')} plain, "
          f"{fmt(s['ls_tstat_hac'], '{:+.2f}')} Newey-West")
    print(costs_line(s))
    print(liquidity_line(ev["ensemble"].liquidity_split, ev.get("liquidity")))
    if ev.get("vs_selected"):
        print(vs_line(ev["vs_selected"], metrics["select_by"]))
    if metrics.get("oracle_ic") is not None:
        print(f"ensemble test IC {ev['ensemble'].summary['ic']:+.4f} vs the data's oracle IC "
              f"{metrics['oracle_ic']:+.4f} on the same rows (panel-wide {metrics.get('oracle_ic_panel')}); "
              f"ratio {metrics['ic_vs_oracle']:.2f}")
    corr = ev["correlation"]
    print("member correlation (mean daily cross-sectional Pearson):")
    width = max(len(n) for n in corr.index[:12]) + 2
    print(" " * width + "".join(f"{i:>8}" for i in range(len(corr))))
    for i, name in enumerate(corr.index):
        print(f"{name:<{width}}" + "".join(f"{v:>+8.2f}" for v in corr.iloc[i].to_numpy()))
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
    params = dict(quantiles=int(ecfg.quantiles), cost_bps=float(ecfg.cost_bps),
                  min_stocks=int(ecfg.min_stocks), horizon=int(rec.horizon),
                  periods_per_year=float(ecfg.periods_per_year))
    label = rec.label_grid[days][:, stocks]
    # every known 1-day return of the cut (labels.parquet holds the same): the realised pnl of the H books
    returns = None if rec.returns_grid is None else rec.returns_grid[days][:, stocks]
    # a per-row liquidity measure on the rec's grid (e.g. the panel's traded_value_med), when the rec has one
    liquidity_grid = rec.liquidity_grid
    liquidity = None if liquidity_grid is None else np.asarray(liquidity_grid, dtype=np.float64)[days][:, stocks]

    def score(grid: np.ndarray, liquidity=None):
        signal_cut = np.where(labelled, grid, np.nan)[days][:, stocks]
        return evaluate(signal_cut, label, dates=rec.dates[days], returns=returns, liquidity=liquidity, **params)

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
    return {"ensemble": ensemble, "members": members, "oracle": oracle, "correlation": correlation(grids),
            "params": params, "returns": rec.returns_name if returns is not None else None,
            "baselines": baselines, "vs_selected": vs,
            "liquidity": rec.liquidity_name if liquidity is not None else None}


def vs_member(ensemble, member_ev, member, horizon: int) -> dict:
    """The ensemble against one member on the same rows: daily IC difference (ensemble - member), its mean and
    Newey-West t-stat (lags = hac_lags(n, horizon)) over the days where both have an IC."""
    a = pd.Series(ensemble.daily["ic"].to_numpy(np.float64), index=pd.to_datetime(ensemble.daily["date"]))
    b = pd.Series(member_ev.daily["ic"].to_numpy(np.float64), index=pd.to_datetime(member_ev.daily["date"]))
    diff = (a - b.reindex(a.index)).dropna()
    n = int(len(diff))
    lags = hac_lags(n, horizon)
    return {"member": member.name, "trial_id": member.trial_id, "select_value": member.select_value,
            "ic_ensemble": float(ensemble.summary["ic"]), "ic_member": float(member_ev.summary["ic"]),
            "ic_diff": float(diff.mean()) if n else math.nan,
            "ic_diff_tstat_hac": newey_west_tstat(diff.to_numpy(), lags) if n else math.nan,
            "hac_lags": int(lags), "n_days": n}


def vs_line(vs: dict, select_by: str) -> str:
    """`ensemble vs selected member X (chosen alone by select_ic): IC +a vs +b, daily difference +c (HAC t ...)`"""
    return (f"ensemble vs selected member {vs['member']} (chosen alone by {select_by}): IC "
            f"{fmt(vs['ic_ensemble'], '{:+.4f}')} vs {fmt(vs['ic_member'], '{:+.4f}')}, daily difference "
            f"{fmt(vs['ic_diff'], '{:+.4f}')} (HAC t {fmt(vs['ic_diff_tstat_hac'], '{:+.2f}')}, "
            f"{vs['hac_lags']} lags, {vs['n_days']} days)")


def recompute_command(out: Path, label: str, params: dict, returns: str | None = None,
                      liquidity: str | None = None, label_lag: int | None = None) -> str:
    return (f"python -m crnn_ray.evaluate --signals {out / 'signals'} --labels {out / 'labels.parquet'} "
            f"--label {label} --horizon {params['horizon']} --quantiles {params['quantiles']} "
            f"--cost-bps {params['cost_bps']:g} --min-stocks {params['min_stocks']} "
            f"--periods-per-year {params['periods_per_year']:g}" + (f" --returns {returns}" if returns else "")
            + (f" --liquidity {liquidity}" if liquidity else "")
            + (f" --label-lag {int(label_lag)}" if label_lag is not None else "")
            + " --json metrics_check.json")


def metrics_document(rec, cfg, timing: dict, ev: dict | None) -> dict:
    """metrics.json: ensemble (evaluate's JSON keys), members, oracle, correlation, members' info, run."""
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
        "method": cfg.method,
        "select_by": cfg.select_by,
        "top_k": cfg.top_k,
        "period": {"start": rec.period[0], "end": rec.period[1], "n_dates": rec.n_dates,
                   "n_rows": rec.n_rows},
        "in_sample": rec.in_sample,
        "weights": {m.name: float(w) for m, w in zip(rec.members, rec.weights)},
        "weight_note": rec.weight_note,
        "seed_average": bool(cfg.seed_average),
        "selection": rec.selection or {"rule": "top_k"},
        "units": {u.name: {**u.info(), "weight": float(w)}
                  for u, w in zip(rec.units or [],
                                  [] if rec.unit_weights is None else rec.unit_weights)},
        "member_info": {c.name: c.info for c in rec.members},
        "path": timing["path"],
    }
    if ev is None:
        return doc
    ens = ev["ensemble"]
    doc["ensemble"] = ens.to_dict()
    out = Path(cfg.out).resolve()
    doc["ensemble"]["inputs"] = {  # as python -m crnn_ray.evaluate writes them for these files
        "signals": str(out / "signals"), "labels": str(out / "labels.parquet"), "label": rec.label,
        "signal_col": "signal", **({"returns": ev["returns"]} if ev.get("returns") else {}),
        **({"liquidity": ev["liquidity"]} if ev.get("liquidity") else {}),
        **({"label_lag": doc["label_lag"]} if doc["label_lag"] is not None else {}),
        "first_date": str(pd.Timestamp(ens.daily["date"].iloc[0]).date()),
        "last_date": str(pd.Timestamp(ens.daily["date"].iloc[-1]).date())}
    doc["members"] = {name: e.to_dict() for name, e in ev["members"].items()}
    doc["oracle_ic"] = ev["oracle"].summary["ic"] if ev["oracle"] is not None else None
    doc["oracle_ic_panel"] = panel_oracle
    ens_ic = ev["ensemble"].summary["ic"]
    doc["ic_vs_oracle"] = (ens_ic / doc["oracle_ic"]) if doc["oracle_ic"] else None
    doc["member_correlation"] = {r: {c: float(v) for c, v in row.items()} for r, row in
                                 ev["correlation"].to_dict(orient="index").items()}
    doc["baselines"] = {name: e.to_dict()["summary"] for name, e in (ev.get("baselines") or {}).items()}
    doc["vs_selected_member"] = ev.get("vs_selected")
    doc["recompute"] = recompute_command(Path(cfg.out), rec.label, ev["params"], ev.get("returns"),
                                         ev.get("liquidity"), doc["label_lag"])
    doc["costs"] = costs_document(ens.summary)
    doc["ensemble"]["liquidity_split"]["column"] = ev.get("liquidity")
    return doc


# ------------------------------------------------------------------------------------------------- figures
def render_figures(rec, ev: dict, ecfg: dict) -> dict[str, bytes]:
    """PNG bytes by file name: pnl, daily IC, IC histogram, quantile returns, turnover, member correlation."""
    plt = pyplot()
    ens = ev["ensemble"]
    daily = ens.daily.copy()
    daily["date"] = pd.to_datetime(daily["date"])
    figs: dict[str, bytes] = {}

    fig, ax = plt.subplots(figsize=(8, 3.6))
    ax.plot(daily["date"], daily["cum_ls"], color="C0", lw=2, label="ensemble long-short")
    ax.plot(daily["date"], daily["cum_long"], color="C1", lw=2, label="ensemble long-only (vs mean)")
    for i, (name, e) in enumerate(ev["members"].items()):
        d = e.daily
        ax.plot(pd.to_datetime(d["date"]), d["cum_ls"], lw=0.8, alpha=0.5, color=f"C{(i % 7) + 2}",
                label=f"{name} long-short")
    ax.axhline(0, color="k", lw=0.6)
    how = {"realised": f"realised daily pnl of the {rec.horizon} overlapping books",
           "non_overlapping": f"{rec.label} of every {rec.horizon}th day's book, on its last day held"}
    ax.set_title(f"Cumulative pnl ({how.get(ens.summary['pnl_method'], rec.label + ' per day')}, summed)")
    ax.legend(fontsize=7, ncol=2, loc="upper left")
    fig.autofmt_xdate()
    figs["pnl.png"] = png(fig)

    window = int(ecfg.rolling_ic_days)
    fig, ax = plt.subplots(figsize=(8, 3.2))
    ic = daily["ic"]
    ax.bar(daily["date"], ic.fillna(0.0), color=np.where(ic.fillna(0) >= 0, "C2", "C3"), width=1.0, alpha=0.6,
           label="daily IC")
    ax.plot(daily["date"], ic.rolling(window, min_periods=1).mean(), color="k", lw=1.5,
            label=f"rolling {window}-day mean")
    ax.axhline(ens.summary["ic"], color="C0", ls="--", lw=1, label=f"mean {ens.summary['ic']:+.4f}")
    ax.set_title("Daily IC of the ensemble")
    ax.legend(fontsize=7, loc="upper left")
    fig.autofmt_xdate()
    figs["ic_daily.png"] = png(fig)

    fig, ax = plt.subplots(figsize=(4, 3.2))
    vals = ic.dropna().to_numpy()
    ax.hist(vals, bins=max(5, min(40, len(vals) // 3)), color="C0", alpha=0.8)
    ax.axvline(float(np.mean(vals)) if len(vals) else 0.0, color="k", ls="--", lw=1)
    ax.set_title("Daily IC distribution")
    ax.set_xlabel("IC")
    figs["ic_hist.png"] = png(fig)

    fig, ax = plt.subplots(figsize=(4, 3.2))
    q = np.asarray(ens.quantile_returns, dtype=float)
    ax.bar([str(i + 1) for i in range(len(q))], q, color=["C3" if v < 0 else "C2" for v in q])
    ax.axhline(0, color="k", lw=0.6)
    ax.set_title(f"Mean {rec.label} by signal quantile")
    ax.set_xlabel("quantile (1 = lowest signal)")
    figs["quantiles.png"] = png(fig)

    fig, ax = plt.subplots(figsize=(8, 2.8))
    ax.plot(daily["date"], daily["turnover"], color="C4", lw=1, label="long-short turnover / day")
    ax.axhline(ens.summary["turnover"], color="k", ls="--", lw=1, label=f"mean {ens.summary['turnover']:.3f}")
    ax.set_title("Turnover")
    ax.legend(fontsize=7, loc="upper left")
    fig.autofmt_xdate()
    figs["turnover.png"] = png(fig)

    corr = ev["correlation"]
    fig, ax = plt.subplots(figsize=(1.2 + 0.55 * len(corr), 1.0 + 0.5 * len(corr)))
    im = ax.imshow(corr.to_numpy(), vmin=-1, vmax=1, cmap="RdBu_r")
    ax.set_xticks(range(len(corr)), [str(i) for i in range(len(corr))])
    ax.set_yticks(range(len(corr)), [f"{i} {n}" for i, n in enumerate(corr.index)])
    ax.grid(False)
    for i in range(len(corr)):
        for j in range(len(corr)):
            v = corr.iat[i, j]
            ax.text(j, i, f"{v:.2f}", ha="center", va="center", fontsize=7,
                    color="white" if abs(v) > 0.6 else "black")
    fig.colorbar(im, ax=ax, shrink=0.8)
    ax.set_title("Member correlation")
    figs["correlation.png"] = png(fig)
    return figs


# ---------------------------------------------------------------------------------------------------- html
def _leaderboard_rows(rec, cfg, ev: dict) -> tuple[list[str], list[list[str]]]:
    path = Path(cfg.experiment) / "leaderboard.parquet"
    if not path.is_file():
        return [], []
    lb = pd.read_parquet(path)
    member_variants = {m.variant_id: m.name for m in rec.members}
    test_ic = {}
    for m in rec.members:  # this report's test figures per variant (mean over its selected seeds)
        test_ic.setdefault(m.variant_id, []).append(ev["members"][m.name].summary)
    header = ["variant", "status", "seeds ok", "valid IC", "select IC", "valid pnl LS", "test IC (here)",
              "test pnl LS (here)",
              "report IC", "report pnl", "params"]
    rows = []
    for r in lb.itertuples(index=False):
        here = test_ic.get(r.variant_id)
        t_ic = np.mean([s["ic"] for s in here]) if here else None
        t_pnl = np.mean([s["pnl_long_short"] for s in here]) if here else None
        name = _html.escape(str(r.variant_id)) + (" <b>(member)</b>" if r.variant_id in member_variants else "")
        rows.append([
            name, _html.escape(str(r.status)), f"{getattr(r, 'n_ok', '')}/{getattr(r, 'n_seeds', '')}",
            fmt(getattr(r, "valid_ic_mean", None), "{:+.4f}") + " ± " + fmt(getattr(r, "valid_ic_std", None),
                                                                              "{:.4f}"),
            fmt(getattr(r, "select_ic_mean", None), "{:+.4f}") + " ± " + fmt(getattr(r, "select_ic_std", None),
                                                                               "{:.4f}"),
            fmt(getattr(r, "valid_pnl_long_short_mean", None), "{:+.4f}"),
            fmt(t_ic, "{:+.4f}"), fmt(t_pnl, "{:+.4f}"),
            fmt(getattr(r, "seed_ic", None), "{:.4f}"), fmt(getattr(r, "seed_pnl", None), "{:.3f}"),
            fmt(getattr(r, "params", None), "{:,d}"),
        ])
    return header, rows


CSS = """
body{font-family:-apple-system,Segoe UI,Helvetica,Arial,sans-serif;margin:24px auto;max-width:1100px;color:#222}
h1{font-size:22px;margin-bottom:2px} h2{font-size:16px;margin-top:28px;border-bottom:1px solid #ddd}
.sub{color:#666;font-size:13px;margin-bottom:14px}
table{border-collapse:collapse;font-size:12px;margin:6px 0} th,td{padding:4px 9px;border-bottom:1px solid #eee}
th{background:#f4f6f8;text-align:left} td{text-align:right;font-variant-numeric:tabular-nums}
td:first-child{text-align:left} .key td{font-size:14px} .warn{background:#fff3cd;padding:8px;border:1px solid #e0c36b}
.grid{display:flex;flex-wrap:wrap;gap:8px} img{max-width:100%} .small{color:#666;font-size:11px}
"""


def render_html(rec, cfg, metrics: dict, ev: dict, figures: dict[str, bytes], extra: str = "") -> str:
    """The tear sheet: key numbers first, then members beside the ensemble, figures, correlation, leaderboard
    (`extra`: a section after the key numbers, e.g. the walk-forward windows and leaderboard)."""
    s = ev["ensemble"].summary
    name = Path(cfg.experiment).name
    key_rows = [["execution (label lag)", _html.escape(execution_text(rec))]]
    key_rows += [[lab, fmt(s.get(k), f)] for k, lab, f in KEY_NUMBERS]
    costs = costs_document(s)
    at = key_rows.index(next(r for r in key_rows if r[0].startswith("long-short Sharpe (gross")))
    cost_rows = [["cost assumed", f"{costs['cost_bps']:g} bps per unit traded"
                  + (" (none: every pnl and Sharpe here is gross)" if costs["cost_bps"] == 0 else "")]]
    if costs["cost_bps"] > 0:
        cost_rows += [[f"long-short Sharpe (net of {costs['cost_bps']:g} bps)", fmt(s.get("sharpe_net"), "{:+.2f}")],
                      [f"long-short pnl (sum, net of {costs['cost_bps']:g} bps)",
                       fmt(s.get("pnl_long_short_net"), "{:+.4f}")]]
    cost_rows += [["break-even cost, long-short", _html.escape(costs["break_even_text"])],
                  ["break-even cost, long-only", _html.escape(costs["break_even_long_text"])]]
    key_rows[at + 1:at + 1] = cost_rows
    key_rows.append(["liquidity split (IC by half)",
                     _html.escape(liquidity_line(ev["ensemble"].liquidity_split, ev.get("liquidity")))])
    if metrics.get("oracle_ic") is not None:
        key_rows.insert(2, ["oracle IC of the data (same rows)", fmt(metrics["oracle_ic"], "{:+.4f}")
                            + f" &nbsp;(ensemble / oracle = {fmt(metrics['ic_vs_oracle'], '{:.2f}')})"])
    vs = metrics.get("vs_selected_member")
    if vs:
        key_rows.insert(2, [f"vs selected member {_html.escape(vs['member'])} (chosen alone by "
                            f"{_html.escape(cfg.select_by)}): daily IC difference",
                            f"{fmt(vs['ic_diff'], '{:+.4f}')} (HAC t {fmt(vs['ic_diff_tstat_hac'], '{:+.2f}')}, "
                            f"{vs['hac_lags']} lags, {vs['n_days']} days; member IC "
                            f"{fmt(vs['ic_member'], '{:+.4f}')})"])
    columns = _side_by_side(s)
    side_rows = [[f"<b>ENSEMBLE ({_html.escape(cfg.method)})</b>", "", "", "",
                  *[fmt(s.get(k), f) for k, _, f in columns]]]
    for m, w in zip(rec.members, rec.weights):
        ms = ev["members"][m.name].summary
        side_rows.append([_html.escape(m.name), _html.escape(m.trial_id), fmt(w, "{:.3f}"),
                          fmt(m.valid_ic, "{:+.4f}"), *[fmt(ms.get(k), f) for k, _, f in columns]])
    for bname, e in (ev.get("baselines") or {}).items():
        side_rows.append([f"baseline {_html.escape(bname)}", "", "", "",
                          *[fmt(e.summary.get(k), f) for k, _, f in columns]])
    corr = ev["correlation"]
    corr_rows = [[f"{i} {_html.escape(n)}", *[fmt(v, "{:+.2f}") for v in corr.iloc[i].to_numpy()]]
                 for i, n in enumerate(corr.index)]
    lb_header, lb_rows = _leaderboard_rows(rec, cfg, ev)
    warn = "".join(f'<p class="warn">In-sample: {a}..{b} lies inside member {_html.escape(n)}\'s train/valid '
                   f"window (+embargo); these scores are not out-of-sample.</p>"
                   for n, (a, b) in rec.in_sample.items())
    img = lambda f, w="100%": f'<img src="figures/{f}" style="width:{w}" alt="{f}">'  # noqa: E731
    parts = [
        "<!DOCTYPE html><html><head><meta charset='utf-8'>",
        f"<title>Ensemble tear sheet: {_html.escape(name)}</title><style>{CSS}</style></head><body>",
        f"<h1>Ensemble tear sheet: {_html.escape(name)}</h1>",
        f"<div class='sub'>{len(rec.members)} member(s) chosen by {_html.escape(cfg.select_by)}, "
        f"{_html.escape(cfg.method)} of per-date z-scores &middot; {rec.period[0]} to {rec.period[1]} "
        f"({metrics['period']['n_dates']} dates, {metrics['period']['n_rows']:,} rows) &middot; label "
        f"{_html.escape(rec.label)} (horizon {rec.horizon}, label_lag {rec.label_lag}) "
        f"&middot; data {_html.escape(Path(rec.panel_path).name)}"
        "</div>", warn,
        "<h2>Key numbers (ensemble)</h2>", html_table(["metric", "value"], key_rows, "key"), extra,
        "<h2>Ensemble beside its members</h2>",
        html_table(["", "trial", "weight", "valid IC", *[lab for _, lab, _ in columns]], side_rows),
        f"<p class='small'>pnl and Sharpe gross of costs{'' if costs['cost_bps'] == 0 else ' (net SR: net of ' + format(costs['cost_bps'], 'g') + ' bps)'}; "
        f"BE bps: break-even cost per unit traded (turnover = {_html.escape(TURNOVER_UNIT)})</p>",
        "<h2>Performance</h2>", img("pnl.png"), img("ic_daily.png"),
        "<div class='grid'>", img("ic_hist.png", "32%"), img("quantiles.png", "32%"),
        img("correlation.png", "32%"), "</div>", img("turnover.png"),
        "<h2>Member correlation</h2><p class='small'>mean over dates of the cross-sectional Pearson "
        "correlation of the raw predictions</p>",
        html_table(["", *[str(i) for i in range(len(corr))]], corr_rows),
    ]
    if lb_rows:
        parts += ["<h2>Sweep leaderboard</h2><p class='small'>valid figures from the sweep; test figures from "
                  "this report (selected seeds); report IC / pnl: the research report's reference values</p>",
                  html_table(lb_header, lb_rows)]
    parts += [f"<p class='small'>Recompute the key numbers: <code>{_html.escape(metrics['recompute'])}</code>. "
              "Definitions: docs/metrics.md, docs/scoring.md.</p></body></html>"]
    return "\n".join(p for p in parts if p) + "\n"


def write_report(out: Path, metrics: dict, figures: dict[str, bytes], html: str) -> None:
    """figures/ (whole directory swapped in atomically), metrics.json and report.html, each atomic."""
    with atomic_path(out / "figures") as tmp:
        tmp.mkdir(parents=True)
        for name, data in sorted(figures.items()):
            (tmp / name).write_bytes(data)
    write_json_atomic(out / "metrics.json", metrics)
    with atomic_path(out / "report.html") as tmp:
        tmp.write_text(html)
