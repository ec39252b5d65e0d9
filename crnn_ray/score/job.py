"""The scoring command as one pipeline over windows:

    plan      per window: its members, chosen on that window's selection part (choose.py, plan.py)
    predict   per window: the members' [D, S, K] grid, in-process or on Ray Data (inference.py), and its ensemble
    stitch    the windows' grids concatenated by date into one record (stitch.py)
    evaluate  the record, once (report.py; a walk-forward record's leaderboard: walk_forward.py)
    write     signals/, labels.parquet, metrics.json, report.html, all at the end (write.py, report.py)

A static split is a record of one window; a walk-forward experiment's record is every window's test part
(--window N, --latest: one window). Everything that can fail on bad input fails before the first byte is
written, so a bad checkpoint leaves no output directory behind. What the run printed is kept as OUT/score.log
(crnn_ray.console) and the run itself, with its figures and report, in the experiment's MLflow store
(crnn_ray.tracking).
"""

from __future__ import annotations

from dataclasses import asdict
from pathlib import Path

from crnn_ray.console import ConsoleLog, console_log
from crnn_ray.io import CliError, atomic_path, updated_dir
from crnn_ray.provenance import git_state, provenance, relative_to, utc_now
from crnn_ray.score import report as rep
from crnn_ray.score.choose import choose_units
from crnn_ray.score.config import ScoreConfig
from crnn_ray.score.ensemble import ensemble_units
from crnn_ray.score.inference import choose_path, predict_rows
from crnn_ray.score.plan import Scope, plan_window, release_panels, scopes
from crnn_ray.score.stitch import Part, Record, stitch
from crnn_ray.score.walk_forward import (walk_forward_document, walk_forward_figures, walk_forward_html,
                                         walk_forward_markdown, write_walk_forward)
from crnn_ray.score.write import write_labels, write_signals
from crnn_ray.tracking import Tracker

__all__ = ["run_score", "score_window", "stamp_metrics", "METRICS_SCHEMA_VERSION"]

#: metrics.json's layout version: raised when a key is renamed, removed or changes meaning (added keys keep it)
METRICS_SCHEMA_VERSION = 1


def run_score(cfg: ScoreConfig) -> dict:
    """The whole scoring command; returns the metrics dict it wrote (or would have, without labels)."""
    with console_log() as log:
        try:
            metrics = _score(cfg)
        finally:
            release_panels()  # the one copy of the panel every window's plan shared
        _keep(cfg, log, metrics)
    return metrics


def _score(cfg: ScoreConfig) -> dict:
    started = utc_now()
    windows, walk_forward = scopes(cfg)
    parts = [score_window(cfg, scope, walk_forward) for scope in windows]
    rec = stitch(parts, walk_forward, cfg.experiment)
    if walk_forward:
        print(f"stitched: {len(parts)} window(s), {rec.period[0]}..{rec.period[1]}, {rec.n_dates} out-of-sample "
              f"dates, {rec.n_rows:,} rows, {len(rec.columns)} model line(s)", flush=True)
    evaluation = rep.evaluate_all(rec, cfg.evaluation)   # None when labels are absent
    if evaluation:  # each window's signal smoothing, chosen on its selection split (predicts that split)
        rep.add_turnover_control(rec, cfg, evaluation)
    timing = {"path": "+".join(sorted({p.path for p in parts})), "seconds": float(sum(p.timing["seconds"] for p in parts))}
    metrics = rep.metrics_document(rec, cfg, timing, evaluation)
    table, figures, html = None, {}, None
    if walk_forward:
        metrics["walk_forward"], table = walk_forward_document(rec, evaluation, cfg.reference)
    metrics = stamp_metrics(metrics, cfg.experiment, started)
    if evaluation:
        figures = rep.render_figures(rec, evaluation, cfg.evaluation)
        extra = ""
        if walk_forward:
            figures.update(walk_forward_figures(rec, evaluation, table))
            extra = walk_forward_html(metrics["walk_forward"], table)
        html = rep.render_html(rec, cfg, metrics, evaluation, figures, extra=extra)
    _write(Path(cfg.out), rec, cfg, metrics, evaluation, figures, html, table)
    return metrics


def _keep(cfg: ScoreConfig, log: ConsoleLog, metrics: dict) -> None:
    """After the outputs: OUT/score.log (the lines above, as printed) and the scoring's MLflow run in the
    experiment's store: the options as params, the ensemble's figures as metrics, the report as artifacts."""
    out = Path(cfg.out)
    with atomic_path(out / "score.log") as tmp:
        tmp.write_text(log.text(), encoding="utf-8")
    if not cfg.tracking.mlflow or cfg.experiment is None:
        return
    tracker = Tracker(cfg.experiment, Path(cfg.experiment).name, cfg.tracking)
    options = {k: v for k, v in asdict(cfg).items() if k not in ("ray", "evaluation", "tracking")}
    options.update({f"evaluation.{k}": v for k, v in asdict(cfg.evaluation).items()})
    git = git_state()
    tracker.start_parent("score", f"score {out.name}", params=options, tags={
        "crnn_ray.out": str(out.resolve()), "crnn_ray.git_commit": git["commit"], "crnn_ray.git_dirty": git["dirty"]})
    summary = ((metrics.get("ensemble") or {}).get("summary") or {})
    figures = {f"ensemble_{k}": v for k, v in summary.items()}
    figures.update({k: metrics.get(k) for k in ("oracle_ic", "ic_vs_oracle")})
    tracker.end_parent("FINISHED", figures, [out / "metrics.json", out / "report.html", out / "score.log"])
    if tracker.enabled:
        print(f"tracking: MLflow {tracker.uri} (run {tracker.parent_id})", flush=True)


def stamp_metrics(metrics: dict, experiment, started: str) -> dict:
    """metrics.json's bookkeeping around report.metrics_document's figures: `schema_version` first (readers
    check it before trusting a key), `panel_relative` beside the absolute `panel` (a copied or mounted
    experiment still finds its panel), and this run's `provenance` last: the one block a rerun changes (its
    times; docs/scoring.md "Output layout"). `ended` is when the results were complete, before the writes."""
    out: dict = {"schema_version": METRICS_SCHEMA_VERSION}
    for key, value in metrics.items():
        out[key] = value
        if key == "panel":
            out["panel_relative"] = relative_to(value, experiment) if experiment is not None else None
    out["provenance"] = provenance(started, ended=utc_now())
    return out


def score_window(cfg: ScoreConfig, scope: Scope, walk_forward: bool) -> Part:
    """One window: plan, predict, ensemble. In a walk-forward record every eligible trial is predicted (the
    leaderboard's lines) and each window prints one line; a lone window prints its plan in full."""
    try:
        units, ranked, selection = choose_units(cfg, scope.window)
        plan = plan_window(cfg, scope, units, ranked, selection, every_trial=walk_forward)
    except CliError as exc:
        if not walk_forward:
            raise
        raise CliError(f"window w{scope.window:02d} (test {scope.start}..{scope.end}): {exc}") from None
    if not walk_forward:
        if scope.latest:
            print(f"latest date in {plan.panel_path}: {plan.period[1]}")
        rep.print_plan(plan, cfg)
    path, why = choose_path(plan, cfg.path, cfg)
    if not walk_forward:
        print(f"path: {path.replace('_', '-')} ({why})")
    preds, timing = predict_rows(plan, path, cfg)
    signal = ensemble_units(preds, plan.groups, cfg.method, plan.unit_weights)
    part = Part(scope.window, plan, preds, signal, timing, path)
    rep.print_part(part, cfg, walk_forward)
    return part


def _write(out: Path, rec: Record, cfg: ScoreConfig, metrics: dict, evaluation: dict | None, figures: dict,
           html: str | None, table) -> None:
    """Everything computed: write into a staged copy of the output folder (other dates' partitions kept) and
    swap it in whole (io.updated_dir: all or nothing), then print the evaluation."""
    with updated_dir(out) as stage:
        write_signals(stage, rec, cfg)
        if evaluation:
            write_labels(stage, rec)
            rep.write_report(stage, metrics, figures, html)
            if table is not None:
                write_walk_forward(stage, table, metrics["walk_forward"])
    if evaluation:
        rep.print_evaluation(rec, evaluation, metrics)
        if table is not None:
            print(walk_forward_markdown(table, metrics["walk_forward"]), flush=True)
    else:
        print("labels absent for the scored dates: wrote signals only (no metrics.json / report.html)")
    files = [out / "metrics.json", out / "labels.parquet"] + ([out / "walk_forward.md"] if table is not None else []) \
        + [out / "report.html"]
    print(f"wrote {out / 'signals'} ({rec.n_dates} partitions)"
          + (", " + ", ".join(map(str, files)) if evaluation else ""), flush=True)
