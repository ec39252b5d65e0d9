"""The walk-forward record's own tables: per window (its members and IC) and per variant (the walk-forward
leaderboard), with their figures and HTML sections. The record itself is stitched and evaluated like any other
(stitch.py, report.py); these add what only a record of several retrained windows has.

    windows_document    per window: test dates, members (trial, line, weight, trained through), ensemble IC
    walk_forward_table  per variant over the record: IC / RankIC (mean over seeds), HAC t, realised pnl and
                        Sharpe, IC per window, and the paired daily IC difference against a reference

Why one record: a static split rests its verdict on one short test part; a walk-forward record is as long as
the history allows, every day of it scored by models whose data ended at least the embargo before it.
"""

from __future__ import annotations

import html as _html
import math
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
import pyarrow as pa

from crnn_ray.io import CliError, atomic_path, write_parquet_atomic
from crnn_ray.metrics import hac_lags, newey_west_tstat, nonoverlap_tstat
from crnn_ray.score.render import FULL, date_axis, figure, figure_tag, html_table, png
from crnn_ray.score.stitch import Part, Record
from crnn_ray.score.verdict import PICK, ablation_verdict, selection_overfit

__all__ = ["walk_forward_document", "walk_forward_table", "walk_forward_markdown", "walk_forward_figures",
           "walk_forward_html", "write_walk_forward", "trained_through"]


def trained_through(m) -> str:
    """The last day of data that trained or chose a member (its selection part, else its valid part)."""
    return str((m.meta["splits"].get("select") or m.meta["splits"]["valid"])[1])


def _window_doc(rec: Record, part: Part, ev: dict | None) -> dict:
    plan = part.plan
    column = {m.trial_id: rec.column_of(m) for m in plan.predicted}
    doc = {"window": part.window, "test": list(plan.period), "n_dates": plan.n_dates,
           "members": [{"trial_id": m.trial_id, "line": column[m.trial_id].trial_id,
                        "name": column[m.trial_id].name, "weight": float(w), "select_value": m.select_value,
                        "trained_through": trained_through(m)}
                       for m, w in zip(plan.members, plan.weights)],
           "n_predicted": len(plan.predicted)}
    if ev is not None:
        daily = ev["ensemble"].daily
        dates = pd.to_datetime(daily["date"])
        inside = (dates >= pd.Timestamp(plan.period[0])) & (dates <= pd.Timestamp(plan.period[1]))
        doc["ensemble_ic"] = _nanmean(daily.loc[inside, "ic"])
        doc["ensemble_rank_ic"] = _nanmean(daily.loc[inside, "rank_ic"])
    return doc


def walk_forward_document(rec: Record, ev: dict | None, reference: str | None) -> tuple[dict, pd.DataFrame | None]:
    """(metrics.json's `walk_forward`: windows, reference, leaderboard, the ablation verdict and the overfitting
    of picking the best; the leaderboard table or None)."""
    windows = [_window_doc(rec, p, ev) for p in rec.parts]
    if not ev:
        return {"windows": windows, "n_windows": len(rec.parts)}, None
    named = reference is not None
    table, reference = walk_forward_table(rec, ev, reference)
    daily = pd.DataFrame({v: d["rank_ic"] for v, d in _variant_series(rec, ev).items()})
    ablation, info = ablation_verdict(daily, horizon=int(rec.horizon))
    return {"windows": windows, "reference": reference,
            "reference_kind": ("named with --reference (chosen after seeing the test figures, it uses hindsight)"
                               if named else "ex ante: each window's line ranked first on its selection part"
                               if reference == PICK else "the ensemble (no ex-ante pick in some window)"),
            "leaderboard": _records(table), "ablation": {**info, "rows": _records(ablation)},
            "overfitting": selection_overfit(daily, *_pick_pnl(rec, ev), horizon=int(rec.horizon)),
            "n_windows": len(rec.parts), "n_dates": rec.n_dates, "period": list(rec.period)}, table


def _variant_series(rec: Record, ev: dict) -> dict[str, pd.DataFrame]:
    """{variant: daily [ic, rank_ic], each day the mean over the variant's seeds (model lines)}."""
    groups: dict[str, list] = {}
    for m in rec.members:
        groups.setdefault(m.variant_id, []).append(m)
    out = {}
    for variant, ms in groups.items():
        daily = [_daily(ev["members"][m.name]) for m in ms]
        mean = pd.concat([d["ic"] for d in daily], axis=1).mean(axis=1, skipna=True).to_frame("ic")
        mean["rank_ic"] = pd.concat([d["rank_ic"] for d in daily], axis=1).mean(axis=1, skipna=True)
        out[variant] = mean
    return out


def _pick_pnl(rec: Record, ev: dict) -> tuple[pd.Series | None, pd.DataFrame | None]:
    """(the ex-ante pick's daily net long-short pnl, every model line's): what the deflated Sharpe judges."""
    if ev.get("pick") is None:
        return None, None
    col = "pnl_ls_net" if "pnl_ls_net" in ev["pick"].daily else "pnl_ls"
    series = lambda e: pd.Series(e.daily[col].to_numpy(np.float64), index=pd.to_datetime(e.daily["date"]))  # noqa: E731
    return series(ev["pick"]), pd.DataFrame({m.name: series(ev["members"][m.name]) for m in rec.members})


# ---------------------------------------------------------------------------------------------- leaderboard
def _nanmean(x) -> float:
    x = np.asarray(x, dtype=np.float64)
    x = x[np.isfinite(x)]
    return float(x.mean()) if x.size else math.nan


def _daily(e) -> pd.DataFrame:
    d = e.daily[["date", "ic", "rank_ic"]].copy()
    d["date"] = pd.to_datetime(d["date"])
    return d.set_index("date")


def walk_forward_table(rec: Record, ev: dict, reference: str | None = None):
    """(one row per variant, ensemble and baseline, the reference's name), ranked by out-of-sample RankIC.

    A variant's daily RankIC (IC) is the mean over its seeds' daily RankICs (ICs); its t-stats are Newey-West on
    that series (lags hac_lags(n, H)) with the non-overlapping t beside; pnl and Sharpe are the mean over seeds of
    each seed's realised figures. `rank_ic_diff` (`ic_diff`) is the daily RankIC (IC) minus the reference's on
    the same days, with its Newey-West t: a difference in skill stated with a standard error. The reference
    defaults to the ex-ante pick (PICK: each window's line ranked first on its selection part, stitched), so each
    row reads "against what selection alone would have traded"; the top variant by test RankIC would be hindsight."""
    horizon = int(rec.horizon)
    groups: dict[str, list] = {}
    for m in rec.members:
        groups.setdefault(m.variant_id, []).append(m)
    series: dict[str, tuple[pd.DataFrame, list[dict], str, int]] = {
        variant: (daily, [ev["members"][m.name].summary for m in groups[variant]], "variant", len(groups[variant]))
        for variant, daily in _variant_series(rec, ev).items()}
    series["ENSEMBLE"] = (_daily(ev["ensemble"]), [ev["ensemble"].summary], "ensemble", 1)
    if ev.get("pick") is not None:
        series[PICK] = (_daily(ev["pick"]), [ev["pick"].summary], "pick", 1)
    for name, e in (ev.get("baselines") or {}).items():
        series[f"baseline/{name}"] = (_daily(e), [e.summary], "baseline", 1)
    if reference is None:  # ex ante: what selection would have picked in each window (never the test's best)
        reference = PICK if PICK in series else "ENSEMBLE"
    elif reference not in series:
        raise CliError(f"--reference {reference!r}: not a variant, ENSEMBLE or baseline of this record "
                       f"(have {', '.join(series)})")
    ref = series[reference][0]
    windows = [(p.window, pd.Timestamp(p.plan.period[0]), pd.Timestamp(p.plan.period[1])) for p in rec.parts]
    rows = []
    for name, (daily, summaries, kind, n) in series.items():
        ic = daily["ic"]
        n_days = int(ic.notna().sum())
        lags = hac_lags(n_days, horizon)
        row: dict[str, Any] = {"name": name, "kind": kind, "n_seeds": n, "n_days": n_days}
        for key in ("rank_ic", "ic"):
            x = daily[key]
            both = x - ref[key].reindex(x.index)
            diff = both.dropna()
            other = len(diff) and name != reference
            row.update({key: _nanmean(x), f"{key}_tstat_hac": newey_west_tstat(x.to_numpy(), lags),
                        f"{key}_tstat_nonoverlap": nonoverlap_tstat(x.to_numpy(), horizon),
                        f"{key}_diff": float(diff.mean()) if other else math.nan,
                        f"{key}_diff_tstat_hac": newey_west_tstat(diff.to_numpy(), hac_lags(len(diff), horizon))
                        if other else math.nan})
        row.update({"pnl_long_short": _nanmean([s.get("pnl_long_short") for s in summaries]),
                    "sharpe": _nanmean([s.get("sharpe") for s in summaries]),
                    "pnl_method": summaries[0].get("pnl_method"), "hac_lags": int(lags)})
        for w, a, b in windows:
            row[f"ic_w{w:02d}"] = _nanmean(ic[(ic.index >= a) & (ic.index <= b)])
        rows.append(row)
    table = pd.DataFrame(rows)
    order = {"variant": 0, "ensemble": 1, "pick": 1, "baseline": 2}
    table["_k"] = table["kind"].map(order)
    table = table.sort_values(["_k", "rank_ic"], ascending=[True, False], kind="stable").drop(columns="_k")
    return table.reset_index(drop=True), reference


def _records(table: pd.DataFrame) -> list[dict]:
    return [{k: (None if isinstance(v, float) and not math.isfinite(v) else v) for k, v in r.items()}
            for r in table.to_dict(orient="records")]


def _f(x: Any, fmt: str) -> str:
    try:
        return "—" if x is None or not math.isfinite(float(x)) else fmt.format(x)
    except (TypeError, ValueError):
        return "—"


def _columns(table: pd.DataFrame) -> list[str]:
    return [c for c in table.columns if c.startswith("ic_w")]


def walk_forward_markdown(table: pd.DataFrame, doc: dict) -> str:
    wcols = _columns(table)
    head = ["#", "name", "seeds", "OOS RankIC", "RankIC t (NW)", "RankIC t (non-overlap)", "IC", "IC t (NW)",
            "LS pnl (gross)", "Sharpe (gross)", f"RankIC − {doc['reference']}", "diff t (NW)", *[c[3:] for c in wcols]]
    lines = [f"## Walk-forward leaderboard: {doc['n_windows']} window(s), {doc['period'][0]}..{doc['period'][1]} "
             f"({doc['n_dates']} out-of-sample dates)", "",
             "Every figure is out-of-sample: each window's models score only the days after their data ended "
             "(+ embargo). RankIC (IC): mean daily RankIC (Pearson IC; a variant: mean over its seeds each day); "
             "t: Newey-West, and from non-overlapping days; pnl: realised long-short, summed, gross of costs; diff: "
             f"daily RankIC minus {doc['reference']}'s on the same days, with its Newey-West t; w00…: mean daily "
             "IC per window.", "",
             "| " + " | ".join(head) + " |", "|" + "---|" * len(head)]
    rank = 0
    for r in table.itertuples(index=False):
        rank += r.kind == "variant"
        lines.append("| " + " | ".join([
            str(rank) if r.kind == "variant" else "–", f"`{r.name}`", str(r.n_seeds), _f(r.rank_ic, "{:+.4f}"),
            _f(r.rank_ic_tstat_hac, "{:+.2f}"), _f(r.rank_ic_tstat_nonoverlap, "{:+.2f}"), _f(r.ic, "{:+.4f}"),
            _f(r.ic_tstat_hac, "{:+.2f}"), _f(r.pnl_long_short, "{:+.4f}"), _f(r.sharpe, "{:+.2f}"),
            "(reference)" if r.name == doc["reference"] else _f(r.rank_ic_diff, "{:+.4f}"),
            _f(r.rank_ic_diff_tstat_hac, "{:+.2f}"), *[_f(getattr(r, c), "{:+.3f}") for c in wcols]]) + " |")
    return "\n".join(lines + ["", *verdict_markdown(doc)]) + "\n"


def verdict_markdown(doc: dict) -> list[str]:
    """The ablation verdict's table and the overfitting lines (walk_forward.md and the console)."""
    ab, over = doc.get("ablation") or {}, doc.get("overfitting") or {}
    out = ["## Ablation verdict: each variant against its family's model 1", ""]
    if not ab.get("rows"):
        out.append(ab.get("note") or "no comparison")
    else:
        out += [f"Paired daily RankIC difference (variant − base; pooled over the windows, mean over seeds each day), "
                f"Newey–West t ({ab['hac_lags']} lags); p one-sided (does it beat its base), then corrected for the "
                f"{ab['n_comparisons']} comparisons at once: {ab['correction']}; beats base: Romano–Wolf p ≤ "
                f"{ab['alpha']:g}. Common days: {ab['n_days']}.", "",
                "| variant | base | RankIC diff | HAC t | p | p Holm | p Romano–Wolf | beats base |",
                "|---|---|---:|---:|---:|---:|---:|---|"]
        for r in ab["rows"]:
            out.append(f"| `{r['variant']}` | `{r['base']}` | {_f(r['diff'], '{:+.4f}')} | {_f(r['tstat_hac'], '{:+.2f}')} "
                       f"| {_f(r['p_value'], '{:.3f}')} | {_f(r['p_holm'], '{:.3f}')} | "
                       f"{_f(r['p_romano_wolf'], '{:.3f}')} | {'yes' if r['beats_base'] else 'no'}"
                       + (" (uncorrected: yes)" if r["beats_base_uncorrected"] and not r["beats_base"] else "")
                       + " |")
    out += ["", *overfitting_lines(over)]
    return out


def overfitting_lines(over: dict) -> list[str]:
    """`pick the best`: PBO (CSCV) and the deflated Sharpe of the ex-ante pick, as lines."""
    pbo = over.get("pbo") or {}
    lines = [("probability of backtest overfitting of picking the best variant by RankIC: "
              + (f"{pbo['pbo']:.2f} (CSCV, {pbo['n_splits']} blocks, {pbo['n_combinations']} combinations, "
                 f"{pbo['n_variants']} variants, {pbo['n_days']} days; 0.5 = no better than chance)"
                 if math.isfinite(pbo.get("pbo", math.nan)) else pbo.get("note", "n/a")))]
    ds = over.get("deflated_sharpe")
    if ds:
        lines.append(f"deflated Sharpe of the ex-ante pick (daily net long-short pnl): Sharpe {ds['sharpe']:+.3f} per "
                     f"day against {ds['sr0']:+.3f}, the best of {ds['n_trials']} skill-less lines' expected "
                     f"maximum: DSR {ds['dsr']:.2f} (probability its true Sharpe beats that; against 0: "
                     f"{ds['psr']:.2f})")
    return lines


def write_walk_forward(out: Path, table: pd.DataFrame, doc: dict) -> None:
    """walk_forward.parquet (the table) and walk_forward.md (as printed)."""
    write_parquet_atomic(pa.Table.from_pandas(table, preserve_index=False), Path(out) / "walk_forward.parquet")
    with atomic_path(Path(out) / "walk_forward.md") as tmp:
        tmp.write_text(walk_forward_markdown(table, doc))


# ---------------------------------------------------------------------------------------------- report
def walk_forward_figures(rec: Record, ev: dict, table: pd.DataFrame) -> dict[str, bytes]:
    """Out-of-sample cumulative pnl with the window boundaries marked, and IC per window (2x pixel density)."""
    return {"wf_pnl.png": _wf_pnl_figure(rec, ev), "wf_ic_windows.png": _wf_ic_figure(table)}


def _wf_pnl_figure(rec: Record, ev: dict) -> bytes:
    daily = ev["ensemble"].daily
    fig, ax = figure(FULL, 380)
    ax.plot(pd.to_datetime(daily["date"]), 100 * daily["cum_ls"], color="C0", lw=2.2,
            label="ensemble long-short, gross")
    for i, (name, e) in enumerate((ev.get("baselines") or {}).items()):
        d = e.daily
        ax.plot(pd.to_datetime(d["date"]), 100 * d["cum_ls"], lw=1.2, ls="--", alpha=0.8, color=f"C{i + 1}",
                label=f"baseline {name}, gross")
    ax.axhline(0, color="k", lw=0.6)
    top = ax.get_ylim()[1]
    for p in rec.parts:
        x = pd.Timestamp(p.plan.period[0])
        ax.axvline(x, color="k", lw=0.7, ls=":", alpha=0.7)
        ax.text(x, top, f" w{p.window:02d}", fontsize=8, va="top")
    ax.set_title("Walk-forward out-of-sample cumulative pnl (dotted: window starts; each window retrained "
                 "before its test part)")
    ax.set_ylabel("cumulative pnl, % (summed)")
    ax.legend(loc="upper left", bbox_to_anchor=(1.01, 1.0))
    date_axis(ax)
    return png(fig)


def _wf_ic_figure(table: pd.DataFrame) -> bytes:
    wcols = _columns(table)
    fig, ax = figure(FULL, 300)
    x = np.arange(len(wcols))
    shown = table[table["kind"] != "baseline"]
    width = 0.8 / max(1, len(shown))
    for i, r in enumerate(shown.itertuples(index=False)):
        vals = np.asarray([getattr(r, c) for c in wcols], dtype=float)
        ax.bar(x + i * width - 0.4 + width / 2, np.nan_to_num(vals), width,
               label=r.name, color="k" if r.kind == "ensemble" else f"C{i % 10}", alpha=0.85)
    ax.axhline(0, color="k", lw=0.6)
    ax.set_xticks(x, [c[3:] for c in wcols])
    ax.set_title("Mean daily IC per window (out-of-sample)")
    ax.set_xlabel("window")
    ax.set_ylabel("mean daily IC (correlation)")
    ax.legend(loc="upper left", bbox_to_anchor=(1.01, 1.0))
    return png(fig)


def walk_forward_html(doc: dict, table: pd.DataFrame | None) -> str:
    """The report's walk-forward section: the windows, their figures and the walk-forward leaderboard (the
    figures as figure_tag references, inlined by report.render_html)."""
    rows = [[f"w{w['window']:02d}", f"<span class='nw'>{w['test'][0]}..{w['test'][1]}</span>", str(w["n_dates"]),
             "<div class='txt'>" + _html.escape(", ".join(f"{m['name']} ({m['trial_id']}, {m['weight']:.2f})"
                                                          for m in w["members"])) + "</div>",
             "<span class='nw'>" + _html.escape(", ".join(sorted({m["trained_through"] for m in w["members"]})))
             + "</span>",
             _f(w.get("ensemble_ic"), "{:+.4f}")] for w in doc["windows"]]
    parts = ["<h2>Walk-forward windows</h2><p class='small'>each window's members were chosen on that window's "
             "selection part and score only its test part; trained through: the last day of data that trained "
             "or chose them (the embargo follows)</p>",
             html_table(["window", "test part", "dates", "members (trial, weight)", "trained through",
                         "ensemble IC"], rows),
             figure_tag("wf_pnl.png", FULL, "walk-forward cumulative pnl"),
             figure_tag("wf_ic_windows.png", FULL, "IC per window")]
    if table is not None:
        wcols = _columns(table)
        body = [[_html.escape(r.name), str(r.n_seeds), _f(r.rank_ic, "{:+.4f}"), _f(r.rank_ic_tstat_hac, "{:+.2f}"),
                 _f(r.rank_ic_tstat_nonoverlap, "{:+.2f}"), _f(r.ic, "{:+.4f}"), _f(r.ic_tstat_hac, "{:+.2f}"),
                 _f(r.pnl_long_short * 100, "{:+.2f}"), _f(r.sharpe, "{:+.2f}"),
                 "(reference)" if r.name == doc["reference"] else _f(r.rank_ic_diff, "{:+.4f}"),
                 _f(r.rank_ic_diff_tstat_hac, "{:+.2f}"), *[_f(getattr(r, c), "{:+.3f}") for c in wcols]]
                for r in table.itertuples(index=False)]
        parts += [f"<h2>Walk-forward leaderboard</h2><p class='small'>{doc['n_dates']} out-of-sample dates; "
                  "RankIC (IC) per variant: mean over seeds each day; t: Newey-West, and from non-overlapping days; "
                  "pnl realised, gross, summed; diff: daily RankIC minus "
                  f"{_html.escape(str(doc['reference']))}'s, Newey-West t; w00…: mean daily IC per window</p>",
                  html_table(["name", "seeds", "OOS RankIC", "RankIC t", "RankIC t (non-overlap)", "IC", "IC t",
                              "LS pnl, %", "Sharpe", f"RankIC − {doc['reference']}", "diff t",
                              *[c[3:] for c in wcols]], body),
                  f"<p class='small'>reference: {_html.escape(str(doc.get('reference_kind', '')))}</p>",
                  _verdict_html(doc)]
    return "\n".join(parts)


def _verdict_html(doc: dict) -> str:
    ab = doc.get("ablation") or {}
    parts = ["<h2>Ablation verdict</h2>"]
    if not ab.get("rows"):
        parts.append(f"<p class='small'>{_html.escape(ab.get('note') or 'no comparison')}</p>")
    else:
        parts.append(f"<p class='small'>each variant against its family's model 1: the paired daily RankIC "
                     f"difference pooled over the windows (mean over seeds), Newey–West t ({ab['hac_lags']} lags), "
                     f"one-sided p, corrected for the {ab['n_comparisons']} comparisons at once "
                     f"({_html.escape(ab['correction'])}); beats base: Romano–Wolf p ≤ {ab['alpha']:g}</p>")
        parts.append(html_table(["variant", "base", "RankIC diff", "HAC t", "p", "p Holm", "p Romano–Wolf",
                                 "beats base"],
                                [[_html.escape(r["variant"]), _html.escape(r["base"]), _f(r["diff"], "{:+.4f}"),
                                  _f(r["tstat_hac"], "{:+.2f}"), _f(r["p_value"], "{:.3f}"), _f(r["p_holm"], "{:.3f}"),
                                  _f(r["p_romano_wolf"], "{:.3f}"), "yes" if r["beats_base"] else "no"]
                                 for r in ab["rows"]]))
    parts += [f"<p class='small'>{_html.escape(line)}</p>" for line in overfitting_lines(doc.get("overfitting") or {})]
    return "\n".join(parts)
