"""Walk-forward scoring: each window's members score that window's test days only; the windows' test parts,
which tile the out-of-sample period, are stitched into one signals dataset and evaluated as one record.

    run_walk_forward      per window: select (on the window's selection part), plan, predict every eligible
                          trial, ensemble the selected ones; then stitch, evaluate, rank and write
    stitch                the windows' plans and grids -> one ScorePlan over the whole out-of-sample period
    walk_forward_table    per variant over that period: IC / RankIC (mean over seeds), HAC t, realised pnl and
                          Sharpe, IC per window, and the paired daily IC difference against a reference

Why one record: a static split rests its verdict on one short test part; a walk-forward record is as long as
the history allows, every day of it scored by models whose data ended at least the embargo before it
(plan_scoring checks each window's members against its dates and refuses otherwise). The stitched record is
an ordinary signals/ + labels.parquet pair, so `python -m crnn_ray.evaluate` recomputes its numbers.
"""

from __future__ import annotations

import html as _html
import math
from dataclasses import replace
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
import yaml

from crnn_ray.io import CliError

__all__ = ["walk_forward_windows", "newest_window", "run_walk_forward", "stitch", "walk_forward_table"]


def walk_forward_windows(exp_dir: Path) -> list[dict]:
    """The experiment's walk-forward windows as dates ({train, valid, select, test: [first, last], embargo}),
    oldest first, from its config.yaml; [] for a static split (or no config.yaml)."""
    path = Path(exp_dir) / "config.yaml"
    try:
        doc = yaml.safe_load(path.read_text()) or {}
    except (OSError, yaml.YAMLError):
        return []
    if not (doc.get("data") or {}).get("walk_forward"):
        return []
    windows = (doc.get("resolved") or {}).get("windows") or []
    if not windows:
        raise CliError(f"{path}: data.walk_forward without resolved.windows (the sweep never started?)")
    return list(windows)


def newest_window(exp_dir: Path, windows: list[dict]) -> int:
    """The newest window with a trained trial (the daily job's models: trained on the most recent data)."""
    from crnn_ray.score.select import read_trials

    trials = read_trials(exp_dir)
    trained = sorted(set(trials.loc[trials["status"].isin(["ok", "pruned"]), "window"].astype(int)))
    if not trained:
        raise CliError(f"{Path(exp_dir) / 'trials.parquet'}: no window has a trained trial")
    return trained[-1]


def _line_names(trials: pd.DataFrame) -> dict[str, str]:
    """Model line (`t005`) -> its column name in the stitched signals: `variant@seedS`, with `#t005` where
    a hyperparameter grid gives one (variant, seed) several lines."""
    first = trials.sort_values("trial_id").drop_duplicates("line")
    base = {r.line: f"{r.variant_id}@seed{int(r.seed)}" for r in first.itertuples()}
    counts = pd.Series(list(base.values())).value_counts()
    return {line: (name if counts[name] == 1 else f"{name}#{line}") for line, name in base.items()}


def _window_range(window: dict, opts) -> tuple[str, str] | None:
    """The window's test dates within --start / --end (None: outside them)."""
    a, b = str(window["test"][0]), str(window["test"][1])
    if opts.start:
        a = max(a, str(np.datetime64(str(opts.start), "D")))
    if opts.end:
        b = min(b, str(np.datetime64(str(opts.end), "D")))
    return (a, b) if a <= b else None


def run_walk_forward(opts, windows: list[dict]) -> dict:
    """The scoring command on a walk-forward experiment: one stitched out-of-sample record."""
    from crnn_ray.score import report as rep
    from crnn_ray.score.ensemble import ensemble_units
    from crnn_ray.score.job import choose_path, plan_scoring, predict_rows, write_labels, write_signals
    from crnn_ray.score.select import read_trials

    if opts.allow_in_sample:
        raise CliError("--allow-in-sample: a walk-forward record is out-of-sample by construction; score one "
                       "window with --window N to look in-sample")
    cfg = opts.config
    trials = read_trials(opts.experiment)
    if "line" not in trials.columns:
        raise CliError(f"{Path(opts.experiment) / 'trials.parquet'}: no column 'line' (rerun the sweep)")
    line_of = dict(zip(trials["trial_id"].astype(str), trials["line"].astype(str)))
    names = _line_names(trials)
    parts = []
    for w, window in enumerate(windows):
        rng = _window_range(window, opts)
        if rng is None:
            continue
        try:
            plan = plan_scoring(replace(opts, window=w, start=rng[0], end=rng[1], latest=False), predict_all=True)
        except CliError as exc:
            raise CliError(f"window w{w:02d} (test {rng[0]}..{rng[1]}): {exc}") from None
        # plan_scoring refused any member whose train / valid / select data (+ embargo) reaches these dates;
        # the window's test part is also where its members were meant to score, and nowhere else
        if plan.period[0] < str(window["test"][0]) or plan.period[1] > str(window["test"][1]):
            raise CliError(f"window w{w:02d}: scored {plan.period[0]}..{plan.period[1]} outside its test part "
                           f"{window['test'][0]}..{window['test'][1]}")
        path, why = choose_path(plan, opts.path, cfg)
        preds, timing = predict_rows(plan, path, cfg)
        signal = ensemble_units(preds, plan.groups, opts.method, plan.unit_weights)
        parts.append({"window": w, "plan": plan, "preds": preds, "signal": signal, "timing": timing, "path": path})
        print(f"w{w:02d} test {plan.period[0]}..{plan.period[1]} ({plan.n_dates} dates): members "
              + ", ".join(f"{m.trial_id} {m.name} ({opts.select_by} {m.select_value:+.4f}, weight {wt:.2f})"
                          for m, wt in zip(plan.members, plan.weights))
              + f"; {len(plan.predicted)} trial(s) predicted in {timing['seconds']:.1f}s on the "
              f"{path.replace('_', '-')} path", flush=True)
    if not parts:
        raise CliError(f"--start/--end: no walk-forward test day in {opts.start}..{opts.end}")
    stitched, signal, preds, lines = stitch(parts, line_of, names, trials)
    timing = {"path": "+".join(sorted({p["path"] for p in parts})),
              "seconds": float(sum(p["timing"]["seconds"] for p in parts))}
    print(f"stitched: {len(parts)} window(s), {stitched.period[0]}..{stitched.period[1]}, {stitched.n_dates} "
          f"out-of-sample dates, {stitched.n_rows:,} rows, {len(lines)} model line(s)", flush=True)

    evaluation = rep.evaluate_all(stitched, signal, preds, cfg["evaluation"])
    metrics = rep.metrics_document(stitched, opts, timing, evaluation)
    window_docs = [_window_doc(p, line_of, names, evaluation) for p in parts]
    table = None
    if evaluation:
        table, reference = walk_forward_table(stitched, evaluation, lines, parts, opts.reference)
        metrics["walk_forward"] = {"windows": window_docs, "reference": reference,
                                   "leaderboard": _records(table), "n_windows": len(parts),
                                   "n_dates": stitched.n_dates, "period": list(stitched.period)}
    else:
        metrics["walk_forward"] = {"windows": window_docs, "n_windows": len(parts)}
    figures, html = {}, None
    if evaluation:
        figures = rep.render_figures(stitched, evaluation, cfg["evaluation"])
        figures.update(walk_forward_figures(stitched, evaluation, parts, table))
        html = rep.render_html(stitched, opts, metrics, evaluation, figures,
                               extra=walk_forward_html(metrics["walk_forward"], table))

    # ---- everything computed: write (each file atomically)
    out = Path(opts.out)
    starts = np.cumsum([0] + [len(p["plan"].dates) for p in parts])
    docs = {p["window"]: _date_metadata(p, opts, line_of, names) for p in parts}

    def metadata_of(row: int) -> dict:
        k = int(np.searchsorted(starts, row, side="right")) - 1
        return docs[parts[k]["window"]]

    write_signals(out, stitched, opts, signal, preds, metadata_of=metadata_of)
    if evaluation:
        write_labels(out, stitched)
        rep.write_report(out, metrics, figures, html)
        _write_table(out, table, metrics["walk_forward"])
        rep.print_evaluation(stitched, evaluation, metrics)
        print(walk_forward_markdown(table, metrics["walk_forward"]), flush=True)
    else:
        print("labels absent for the scored dates: wrote signals only (no metrics.json / report.html)")
    print(f"wrote {out / 'signals'} ({stitched.n_dates} partitions)"
          + (f", {out / 'metrics.json'}, {out / 'labels.parquet'}, {out / 'walk_forward.md'}, "
             f"{out / 'report.html'}" if evaluation else ""), flush=True)
    return metrics


# --------------------------------------------------------------------------------------------- stitching
def _concat(grids: list, axis: int = 0):
    return None if any(g is None for g in grids) else np.concatenate(grids, axis=axis)


def stitch(parts: list[dict], line_of: dict, names: dict, trials: pd.DataFrame):
    """(plan, signal [D, S], preds [D, S, lines], lines) over the windows' scored dates, oldest first.

    Every window predicted every eligible trial; a model line's column holds, on each window's dates, that
    window's trial of the line (NaN where it was not eligible there). The plan's `members` are the lines, so
    the report's member figures are walk-forward figures per (variant, seed)."""
    from crnn_ray.score.select import Member

    plans = [p["plan"] for p in parts]
    for a, b in zip(plans, plans[1:]):
        if not a.dates[-1] < b.dates[0]:
            raise CliError(f"walk-forward windows overlap: {a.period} and {b.period}")
    if any(not np.array_equal(plans[0].symbols, p.symbols) for p in plans):
        raise CliError("walk-forward windows were scored on different panels")
    lines = sorted({line_of[m.trial_id] for p in plans for m in p.predicted})
    col = {line: k for k, line in enumerate(lines)}
    stacked = []
    for part in parts:
        plan, preds = part["plan"], part["preds"]
        grid = np.full(preds.shape[:2] + (len(lines),), np.nan, dtype=np.float32)
        for k, m in enumerate(plan.predicted):
            grid[..., col[line_of[m.trial_id]]] = preds[..., k]
        stacked.append(grid)
    # a line's figures: its trials' mean selection figures and its mean weight in the windows' ensembles
    weight = np.zeros(len(lines))
    valid, chosen = {line: [] for line in lines}, {line: [] for line in lines}
    for plan in plans:
        for m, w in zip(plan.members, plan.weights):
            weight[col[line_of[m.trial_id]]] += float(w) / len(plans)
        for m in plan.predicted:
            valid[line_of[m.trial_id]].append(m.valid_ic)
            chosen[line_of[m.trial_id]].append(m.select_value)
    rows = trials.sort_values("trial_id").drop_duplicates("line").set_index("line")
    members = [Member(name=names[line], trial_id=line, variant_id=str(rows.loc[line, "variant_id"]),
                      spec=str(rows.loc[line, "spec"]), seed=int(rows.loc[line, "seed"]), checkpoint=Path("."),
                      valid_ic=float(np.nanmean(valid[line])) if valid[line] else math.nan,
                      select_value=float(np.nanmean(chosen[line])) if chosen[line] else math.nan,
                      meta={"windows": [p["window"] for p in parts]})
               for line in lines]
    offsets = np.cumsum([0] + [len(p.dates) for p in plans])
    first = plans[0]
    names_b = set.intersection(*[set(p.baselines) for p in plans]) if all(p.baselines for p in plans) else set()
    stitched = replace(
        first, members=members, payloads=[], inputs={}, slice_dates=np.concatenate([p.dates for p in plans]),
        first_day=0, days=np.concatenate([p.days - p.first_day + o for p, o in zip(plans, offsets)]),
        stocks=np.concatenate([p.stocks for p in plans]), label_grid=_concat([p.label_grid for p in plans]),
        oracle_grid=_concat([p.oracle_grid for p in plans]), period=(plans[0].period[0], plans[-1].period[1]),
        in_sample={}, weights=weight, weight_note=None, returns_grid=_concat([p.returns_grid for p in plans]),
        units=[], unit_weights=np.zeros(0), groups=[], extra=[], selected=None,
        selection={"rule": first.selection.get("rule", "top_k"), "walk_forward": True,
                   "seed_average": first.selection.get("seed_average", False)},
        baselines={n: np.concatenate([p.baselines[n] for p in plans]) for n in sorted(names_b)},
        liquidity_grid=_concat([p.liquidity_grid for p in plans]))
    signal = np.concatenate([p["signal"] for p in parts])
    return stitched, signal, np.concatenate(stacked), lines


def _window_doc(part: dict, line_of: dict, names: dict, ev: dict | None) -> dict:
    plan = part["plan"]
    doc = {"window": part["window"], "test": list(plan.period), "n_dates": plan.n_dates,
           "members": [{"trial_id": m.trial_id, "line": line_of[m.trial_id], "name": names[line_of[m.trial_id]],
                        "weight": float(w), "select_value": m.select_value,
                        "trained_through": str((m.meta["splits"].get("select") or m.meta["splits"]["valid"])[1])}
                       for m, w in zip(plan.members, plan.weights)],
           "n_predicted": len(plan.predicted)}
    if ev is not None:
        daily = ev["ensemble"].daily
        dates = pd.to_datetime(daily["date"])
        inside = (dates >= pd.Timestamp(plan.period[0])) & (dates <= pd.Timestamp(plan.period[1]))
        doc["ensemble_ic"] = _nanmean(daily.loc[inside, "ic"])
        doc["ensemble_rank_ic"] = _nanmean(daily.loc[inside, "rank_ic"])
    return doc


def _date_metadata(part: dict, opts, line_of: dict, names: dict) -> dict:
    """What each date of a window says about itself: the window, its members and weights, their data's end."""
    plan = part["plan"]
    return {"walk_forward": True, "window": part["window"], "method": opts.method, "select_by": opts.select_by,
            "label": plan.label, "horizon": plan.horizon, "selection": opts.selection,
            "members": [{"name": names[line_of[m.trial_id]], "trial_id": m.trial_id, "spec": m.spec, "seed": m.seed,
                         "weight": float(w), "valid_ic": m.valid_ic, "select_value": m.select_value,
                         "trained_through": str((m.meta["splits"].get("select") or m.meta["splits"]["valid"])[1]),
                         "embargo": int(m.meta["splits"].get("embargo", 0) or 0)}
                        for m, w in zip(plan.members, plan.weights)],
            "columns": {names[line_of[m.trial_id]]: m.trial_id for m in plan.predicted}}


# ---------------------------------------------------------------------------------------------- leaderboard
def _nanmean(x) -> float:
    x = np.asarray(x, dtype=np.float64)
    x = x[np.isfinite(x)]
    return float(x.mean()) if x.size else math.nan


def _daily(e) -> pd.DataFrame:
    d = e.daily[["date", "ic", "rank_ic"]].copy()
    d["date"] = pd.to_datetime(d["date"])
    return d.set_index("date")


def walk_forward_table(plan, ev: dict, lines: list[str], parts: list[dict], reference: str | None = None):
    """(one row per variant, ensemble and baseline, the reference's name), ranked by out-of-sample IC.

    A variant's daily IC is the mean over its seeds' daily ICs; its IC t-stat is Newey-West on that series
    (lags hac_lags(n, H)); pnl and Sharpe are the mean over seeds of each seed's realised figures. `diff` is
    the daily IC minus the reference's on the same days, with its Newey-West t: a difference in skill stated
    with a standard error. The reference defaults to the top variant (so each row reads "how far behind")."""
    from crnn_ray.metrics import hac_lags, newey_west_tstat

    horizon = int(plan.horizon)
    groups: dict[str, list] = {}
    for m in plan.members:
        groups.setdefault(m.variant_id, []).append(m)
    series: dict[str, tuple[pd.DataFrame, list[dict], str, int]] = {}
    for variant, ms in groups.items():
        daily = [_daily(ev["members"][m.name]) for m in ms]
        mean = pd.concat([d["ic"] for d in daily], axis=1).mean(axis=1, skipna=True).to_frame("ic")
        mean["rank_ic"] = pd.concat([d["rank_ic"] for d in daily], axis=1).mean(axis=1, skipna=True)
        series[variant] = (mean, [ev["members"][m.name].summary for m in ms], "variant", len(ms))
    series["ENSEMBLE"] = (_daily(ev["ensemble"]), [ev["ensemble"].summary], "ensemble", 1)
    for name, e in (ev.get("baselines") or {}).items():
        series[f"baseline/{name}"] = (_daily(e), [e.summary], "baseline", 1)
    variants = [v for v in series if series[v][2] == "variant"]
    if reference is None:
        reference = max(variants, key=lambda v: _nanmean(series[v][0]["ic"]), default="ENSEMBLE")
    elif reference not in series:
        raise CliError(f"--reference {reference!r}: not a variant, ENSEMBLE or baseline of this record "
                       f"(have {', '.join(series)})")
    ref = series[reference][0]["ic"]
    windows = [(p["window"], pd.Timestamp(p["plan"].period[0]), pd.Timestamp(p["plan"].period[1])) for p in parts]
    rows = []
    for name, (daily, summaries, kind, n) in series.items():
        ic = daily["ic"]
        n_days = int(ic.notna().sum())
        lags = hac_lags(n_days, horizon)
        diff = (ic - ref.reindex(ic.index)).dropna()
        row: dict[str, Any] = {
            "name": name, "kind": kind, "n_seeds": n, "n_days": n_days,
            "ic": _nanmean(ic), "ic_tstat_hac": newey_west_tstat(ic.to_numpy(), lags),
            "rank_ic": _nanmean(daily["rank_ic"]),
            "rank_ic_tstat_hac": newey_west_tstat(daily["rank_ic"].to_numpy(), lags),
            "pnl_long_short": _nanmean([s.get("pnl_long_short") for s in summaries]),
            "sharpe": _nanmean([s.get("sharpe") for s in summaries]),
            "pnl_method": summaries[0].get("pnl_method"),
            "ic_diff": float(diff.mean()) if len(diff) and name != reference else math.nan,
            "ic_diff_tstat_hac": newey_west_tstat(diff.to_numpy(), hac_lags(len(diff), horizon))
            if len(diff) and name != reference else math.nan,
            "hac_lags": int(lags),
        }
        for w, a, b in windows:
            row[f"ic_w{w:02d}"] = _nanmean(ic[(ic.index >= a) & (ic.index <= b)])
        rows.append(row)
    table = pd.DataFrame(rows)
    order = {"variant": 0, "ensemble": 1, "baseline": 2}
    table["_k"] = table["kind"].map(order)
    table = table.sort_values(["_k", "ic"], ascending=[True, False], kind="stable").drop(columns="_k")
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
    head = ["#", "name", "seeds", "OOS IC", "IC t (NW)", "RankIC", "RankIC t (NW)", "LS pnl (gross)",
            "Sharpe (gross)", f"IC − {doc['reference']}", "diff t (NW)", *[c[3:] for c in wcols]]
    lines = [f"## Walk-forward leaderboard: {doc['n_windows']} window(s), {doc['period'][0]}..{doc['period'][1]} "
             f"({doc['n_dates']} out-of-sample dates)", "",
             "Every figure is out-of-sample: each window's models score only the days after their data ended "
             "(+ embargo). IC: mean daily IC (a variant: mean over its seeds each day); t: Newey-West; pnl: "
             f"realised long-short, summed, gross of costs; diff: daily IC minus {doc['reference']}'s on the same "
             "days, with its Newey-West t.", "",
             "| " + " | ".join(head) + " |", "|" + "---|" * len(head)]
    rank = 0
    for r in table.itertuples(index=False):
        rank += r.kind == "variant"
        lines.append("| " + " | ".join([
            str(rank) if r.kind == "variant" else "–", f"`{r.name}`", str(r.n_seeds), _f(r.ic, "{:+.4f}"),
            _f(r.ic_tstat_hac, "{:+.2f}"), _f(r.rank_ic, "{:+.4f}"), _f(r.rank_ic_tstat_hac, "{:+.2f}"),
            _f(r.pnl_long_short, "{:+.4f}"), _f(r.sharpe, "{:+.2f}"),
            "(reference)" if r.name == doc["reference"] else _f(r.ic_diff, "{:+.4f}"),
            _f(r.ic_diff_tstat_hac, "{:+.2f}"), *[_f(getattr(r, c), "{:+.3f}") for c in wcols]]) + " |")
    return "\n".join(lines) + "\n"


def _write_table(out: Path, table: pd.DataFrame, doc: dict) -> None:
    """walk_forward.parquet (the table) and walk_forward.md (as printed)."""
    import pyarrow as pa

    from crnn_ray.io import atomic_path, write_parquet_atomic

    write_parquet_atomic(pa.Table.from_pandas(table, preserve_index=False), Path(out) / "walk_forward.parquet")
    with atomic_path(Path(out) / "walk_forward.md") as tmp:
        tmp.write_text(walk_forward_markdown(table, doc))


# ---------------------------------------------------------------------------------------------- report
def walk_forward_figures(plan, ev: dict, parts: list[dict], table: pd.DataFrame) -> dict[str, bytes]:
    """Out-of-sample cumulative pnl with the window boundaries marked, and IC per window."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    from crnn_ray.score.report import _png

    daily = ev["ensemble"].daily.copy()
    daily["date"] = pd.to_datetime(daily["date"])
    figs = {}
    fig, ax = plt.subplots(figsize=(8, 3.6))
    ax.plot(daily["date"], daily["cum_ls"], color="C0", lw=2, label="ensemble long-short (gross)")
    for name, e in (ev.get("baselines") or {}).items():
        d = e.daily
        ax.plot(pd.to_datetime(d["date"]), d["cum_ls"], lw=1, ls="--", alpha=0.7, label=f"baseline {name}")
    for k, p in enumerate(parts):
        x = pd.Timestamp(p["plan"].period[0])
        ax.axvline(x, color="k", lw=0.7, ls=":", alpha=0.7)
        ax.text(x, ax.get_ylim()[1], f" w{p['window']:02d}", fontsize=7, va="top")
    ax.axhline(0, color="k", lw=0.6)
    ax.set_title("Walk-forward out-of-sample cumulative pnl (windows marked; each retrained before its part)")
    ax.legend(fontsize=7, loc="upper left")
    fig.autofmt_xdate()
    figs["wf_pnl.png"] = _png(fig)

    wcols = _columns(table)
    fig, ax = plt.subplots(figsize=(8, 3.2))
    x = np.arange(len(wcols))
    shown = table[table["kind"] != "baseline"]
    width = 0.8 / max(1, len(shown))
    for i, r in enumerate(shown.itertuples(index=False)):
        vals = [getattr(r, c) for c in wcols]
        ax.bar(x + i * width - 0.4 + width / 2, np.nan_to_num(np.asarray(vals, dtype=float)), width,
               label=r.name, color="k" if r.kind == "ensemble" else f"C{i % 10}", alpha=0.85)
    ax.axhline(0, color="k", lw=0.6)
    ax.set_xticks(x, [c[3:] for c in wcols])
    ax.set_title("Mean daily IC per window (out-of-sample)")
    ax.legend(fontsize=7, loc="upper left", bbox_to_anchor=(1.0, 1.0))
    figs["wf_ic_windows.png"] = _png(fig)
    return figs


def walk_forward_html(doc: dict, table: pd.DataFrame | None) -> str:
    from crnn_ray.score.report import _table

    rows = [[f"w{w['window']:02d}", f"{w['test'][0]}..{w['test'][1]}", str(w["n_dates"]),
             _html.escape(", ".join(f"{m['name']} ({m['trial_id']}, {m['weight']:.2f})" for m in w["members"])),
             _html.escape(", ".join(sorted({m["trained_through"] for m in w["members"]}))),
             _f(w.get("ensemble_ic"), "{:+.4f}")] for w in doc["windows"]]
    parts = ["<h2>Walk-forward windows</h2><p class='small'>each window's members were chosen on that window's "
             "selection part and score only its test part; trained through: the last day of data that trained "
             "or chose them (the embargo follows)</p>",
             _table(["window", "test part", "dates", "members (trial, weight)", "trained through", "ensemble IC"],
                    rows), "<img src='figures/wf_pnl.png' style='width:100%' alt='wf_pnl.png'>",
             "<img src='figures/wf_ic_windows.png' style='width:100%' alt='wf_ic_windows.png'>"]
    if table is not None:
        wcols = _columns(table)
        body = [[_html.escape(r.name), str(r.n_seeds), _f(r.ic, "{:+.4f}"), _f(r.ic_tstat_hac, "{:+.2f}"),
                 _f(r.rank_ic, "{:+.4f}"), _f(r.rank_ic_tstat_hac, "{:+.2f}"), _f(r.pnl_long_short, "{:+.4f}"),
                 _f(r.sharpe, "{:+.2f}"),
                 "(reference)" if r.name == doc["reference"] else _f(r.ic_diff, "{:+.4f}"),
                 _f(r.ic_diff_tstat_hac, "{:+.2f}"), *[_f(getattr(r, c), "{:+.3f}") for c in wcols]]
                for r in table.itertuples(index=False)]
        parts += [f"<h2>Walk-forward leaderboard</h2><p class='small'>{doc['n_dates']} out-of-sample dates; IC "
                  "per variant: mean over seeds each day; t: Newey-West; pnl realised, gross; diff: daily IC minus "
                  f"{_html.escape(str(doc['reference']))}'s, Newey-West t</p>",
                  _table(["name", "seeds", "OOS IC", "IC t", "RankIC", "RankIC t", "LS pnl", "Sharpe",
                          f"IC − {doc['reference']}", "diff t", *[c[3:] for c in wcols]], body)]
    return "\n".join(parts)
