"""The sweep run: a Ray Tune grid (variant x seed x hyperparameters) whose trials are Ray Train V2 runs.

`run_sweep` validates the whole config and the data before any trial starts, joins the cluster at
RAY_ADDRESS (the `ray job submit` path) or starts a local Ray, puts the panel once in the object store, runs
the grid, and writes DIR/NAME/{config.yaml, data/, tune/, train/, trials.parquet, leaderboard.*}.
"""

from __future__ import annotations

import json
import math
import os
import shutil
import time
from dataclasses import asdict
from pathlib import Path

import yaml

from crnn_ray.io import CliError, atomic_path
from crnn_ray.sweep.config import SweepConfig, load_config, parse_config, synth_kwargs

__all__ = ["run_sweep", "load_config", "resolve_experiment", "prepare_experiment", "collect", "SweepConfig",
           "SweepOutcome"]


class SweepOutcome:
    """What a finished sweep left: its directory and the two tables."""

    def __init__(self, experiment_dir: Path, trials, leaderboard):
        self.experiment_dir = experiment_dir
        self.trials = trials
        self.leaderboard = leaderboard

    @property
    def n_ranked(self) -> int:
        return int((self.leaderboard["status"] == "ok").sum())


# --------------------------------------------------------------------------------------- before Ray starts
def resolve_experiment(config_path, storage, name, resume: bool, overwrite: bool) -> tuple[SweepConfig, Path]:
    """The config to run and the experiment directory, with the resume / overwrite rules applied."""
    if resume:
        if name is None and config_path is None:
            raise CliError("--resume needs --name (or --config, whose name is used)")
        given = load_config(config_path) if config_path is not None else None
        exp_dir = Path(storage).resolve() / (name or given.name)
        saved = exp_dir / "config.yaml"
        if not saved.is_file():
            raise CliError(f"{saved}: not found: nothing to resume (start the sweep without --resume)")
        raw = yaml.safe_load(saved.read_text()) or {}
        raw.pop("resolved", None)  # what the sweep derived (panel path, split dates, ...): informational
        cfg = parse_config(raw, source=saved.name, default_name=exp_dir.name)
        if given is not None and not _same_config(given, cfg):
            raise CliError(f"{config_path}: differs from the experiment's {saved}; resume without --config "
                           "or start a new experiment with another --name")
        return cfg, exp_dir
    if config_path is None:
        raise CliError("--config is required (or --resume with --name)")
    cfg = load_config(config_path)
    if name is not None:
        cfg.name = parse_config({"name": name, "variants": ["x"]}, source="--name", resolve=False).name
    exp_dir = Path(storage).resolve() / cfg.name
    if (exp_dir / "tune").exists() or (exp_dir / "trials.parquet").exists():
        if not overwrite:
            raise CliError(f"{exp_dir}: experiment exists; continue it with --resume, or pass --overwrite "
                           "or another --name")
        shutil.rmtree(exp_dir)
    return cfg, exp_dir


def _same_config(a: SweepConfig, b: SweepConfig) -> bool:
    """Equal as resolved configs, whatever the names and however data.path was written."""
    da, db = a.to_dict(), b.to_dict()
    for d in (da, db):
        d["name"] = ""
        if d["data"]["path"]:
            d["data"]["path"] = str(Path(d["data"]["path"]).expanduser().resolve())
    return da == db


def prepare_experiment(cfg: SweepConfig, exp_dir: Path):
    """Write (or reuse) the data, load the panel, cut the splits, write config.yaml. Returns (panel, splits)."""
    from crnn_ray.data import load_panel, make_splits, sample_index, save_panel, synthesize
    from crnn_ray.data.synth import summary

    src = cfg.source
    if cfg.data.synth is not None:
        panel_path = exp_dir / "data" / "panel.parquet"
        if not panel_path.exists():
            df, meta = synthesize(**synth_kwargs(cfg.data.synth))
            save_panel(df, panel_path, meta)
            print(summary(df, meta), flush=True)
    else:
        panel_path = Path(cfg.data.path).expanduser().resolve()
        if not panel_path.is_file():
            raise CliError(f"{src}: data.path: file not found: {panel_path}")
    try:
        panel = load_panel(panel_path, features=cfg.data.features, labels=[cfg.data.label])
    except CliError as exc:
        raise CliError(f"{src}: data: {exc}") from None
    horizon = panel.horizon(cfg.data.label)
    try:
        splits = make_splits(panel.dates, cfg.data.splits, horizon)
    except CliError as exc:
        raise CliError(f"{src}: data.{exc}") from None
    label = panel.label(cfg.data.label)
    for part in ("train", "valid"):
        lo, hi = getattr(splits, part)
        if len(sample_index(panel.mask, label, cfg.data.lookback, lo, hi)) == 0:
            raise CliError(f"{src}: data.lookback: {cfg.data.lookback} leaves no {part} sample in days "
                           f"{lo}..{hi} of {panel_path.name}")
    resolved = cfg.to_dict()
    if cfg.data.path is not None:  # absolute, so --resume works from any directory
        resolved["data"]["path"] = str(panel_path)
    resolved["resolved"] = {"panel": str(panel_path), "splits": splits.dates(panel.dates),
                            "variants": [list(v) for v in cfg.resolved_variants], "n_trials": len(cfg.grid())}
    with atomic_path(exp_dir / "config.yaml") as tmp:
        tmp.write_text(yaml.safe_dump(resolved, sort_keys=False))
    return panel, splits


# ------------------------------------------------------------------------------------------------- the run
def _connect_ray():
    """Join RAY_ADDRESS when set (`ray job submit`, a cluster), else start a local Ray. Returns started?"""
    import ray

    if ray.is_initialized():
        return False
    if os.environ.get("RAY_ADDRESS"):
        ray.init(log_to_driver=True)
    else:  # "local": never attach to another `ray start` cluster found on this machine
        ray.init(address="local", include_dashboard=False, log_to_driver=True)
    return True


def _dirname(trial) -> str:
    return trial.config["trial"]["key"]


def run_sweep(config_path=None, storage: str | os.PathLike = "runs", name: str | None = None,
              resume: bool = False, overwrite: bool = False) -> SweepOutcome:
    """Validate, run the grid, write trials + leaderboard; returns the outcome (tables + directory)."""
    t0 = time.perf_counter()
    cfg, exp_dir = resolve_experiment(config_path, storage, name, resume, overwrite)
    grid = cfg.grid()
    if cfg.data.path is not None and not Path(cfg.data.path).expanduser().is_file():
        raise CliError(f"{cfg.source}: data.path: file not found: {Path(cfg.data.path).expanduser().resolve()}")
    exp_dir.mkdir(parents=True, exist_ok=True)
    print(f"experiment: {exp_dir}", flush=True)
    panel, splits = prepare_experiment(cfg, exp_dir)
    print(f"panel: {panel.n_days} days x {panel.n_stocks} stocks x {len(panel.features)} features, "
          f"label {cfg.data.label}; splits {json.dumps(splits.dates(panel.dates))}", flush=True)

    import ray
    from ray import tune

    from crnn_ray.sweep.trial import TrialContext, TrialProgress, cluster_nodes, plan_placement, trial_driver

    started = _connect_ray()
    try:
        nodes, node_types = cluster_nodes()
        placement = plan_placement(cfg.resources, len(grid), nodes, node_types, source=cfg.source)
        print(f"cluster: {placement.cluster}; {len(grid)} trial(s) ({len(cfg.resolved_variants)} variant(s) x "
              f"{len(cfg.seeds)} seed(s) x {len(grid) // max(1, len(cfg.resolved_variants) * len(cfg.seeds))} "
              f"hyperparameter setting(s)); per trial {placement.worker_resources()} "
              f"(torch threads {placement.threads if placement.cpu_quota else 'unbounded'}), "
              f"up to {placement.max_concurrent_trials} at once", flush=True)
        ctx = TrialContext(
            experiment=cfg.name,
            experiment_dir=str(exp_dir),
            panel_refs=[ray.put(panel)],  # read once; trials on a node share the object store copy
            splits={k: v for k, v in asdict(splits).items()},
            placement=placement,
            max_failures=cfg.fault_tolerance.max_failures,
            start_timeout_s=cfg.fault_tolerance.start_timeout_s,
            start_retries=cfg.fault_tolerance.start_retries,
        )
        trainable = tune.with_resources(
            tune.with_parameters(trial_driver, ctx=ctx),
            {"cpu": 0, "memory": placement.driver_memory_mb * 1024 * 1024},
        )
        tune_dir = exp_dir / "tune"
        if resume and tune.Tuner.can_restore(str(tune_dir)):
            print(f"resuming {tune_dir} (finished trials are kept; errored ones continue from their checkpoints)",
                  flush=True)
            tuner = tune.Tuner.restore(str(tune_dir), trainable=trainable, resume_errored=True)
        else:
            tuner = tune.Tuner(
                trainable,
                param_space={"trial": tune.grid_search(grid)},
                tune_config=tune.TuneConfig(
                    max_concurrent_trials=placement.max_concurrent_trials,
                    scheduler=_scheduler(cfg),
                    trial_dirname_creator=_dirname,
                    trial_name_creator=_dirname,
                ),
                run_config=tune.RunConfig(
                    name="tune",
                    storage_path=str(exp_dir),
                    failure_config=tune.FailureConfig(max_failures=cfg.fault_tolerance.trial_max_failures),
                    callbacks=[TrialProgress()],
                    verbose=0,  # TrialProgress prints one line per trial event instead of Tune's tables
                ),
            )
        results = tuner.fit()
        outcome = collect(cfg, exp_dir, grid, results, _baselines(cfg, panel, splits))
    finally:
        if started:
            ray.shutdown()
    print(f"sweep finished in {time.perf_counter() - t0:.0f}s: {outcome.n_ranked}/{len(outcome.leaderboard)} "
          f"variant(s) ranked; {exp_dir / 'leaderboard.md'}", flush=True)
    return outcome


def _baselines(cfg: SweepConfig, panel, splits) -> list[dict]:
    """Leaderboard rows of the ridge and reversal baselines on the nets' valid / select rows."""
    from crnn_ray.sweep.leaderboard import baseline_rows

    t = cfg.training
    return baseline_rows(panel, splits, cfg.data.label, cfg.data.lookback, float(t.clip), bool(t.rank_label))


def _scheduler(cfg: SweepConfig):
    from ray.tune.schedulers import ASHAScheduler, FIFOScheduler

    if cfg.scheduler.type == "asha":
        # time axis = epochs (every report is an epoch's, so the last epoch is the last report)
        return ASHAScheduler(time_attr="epoch", metric=cfg.schedule_metric, mode="max",
                             max_t=cfg.training.epochs, grace_period=cfg.scheduler.grace_period,
                             reduction_factor=cfg.scheduler.reduction_factor)
    return FIFOScheduler()


def _reports(result) -> list[dict]:
    """Every epoch report of one trial, in order, from Tune's Result (the last one as Tune holds it)."""
    frame = getattr(result, "metrics_dataframe", None)
    rows = frame.to_dict("records") if frame is not None and len(frame) else []
    if result.metrics:
        rows = rows[:-1] + [dict(result.metrics)]
    return rows


def collect(cfg: SweepConfig, exp_dir: Path, grid: list[dict], results, baselines: list[dict] = ()) -> SweepOutcome:
    """trials.parquet + leaderboard.{parquet,md} from the Tune results; prints the leaderboard."""
    from crnn_ray.sweep.leaderboard import (build_leaderboard, leaderboard_markdown, trial_row, trials_frame,
                                            write_results)
    from crnn_ray.zoo import family_of, load_zoo

    zoo = load_zoo()
    by_key = {}
    for result in results:
        trial = (result.config or {}).get("trial")
        if trial is None:
            continue
        rows = _reports(result)
        error = None
        if result.error is not None:
            error = f"{type(result.error).__name__}: {result.error}"
        by_key[trial["key"]] = (trial, rows, error)
    rows = []
    for trial in grid:  # every trial of the grid gets a row, even one Tune never started
        t, results_rows, error = by_key.get(trial["key"], (trial, [], "not run"))
        entry = zoo.get(t["variant_id"])
        family = entry.family if entry is not None else family_of(t["spec"])
        rows.append(trial_row(t, results_rows, error, family))
    trials = trials_frame(rows)
    lb = build_leaderboard(trials, zoo, cfg.rank_metric, baselines)
    grid_keys = sorted({k for t in grid for k in t.get("grid", {})})
    md = leaderboard_markdown(lb, f"Leaderboard — {cfg.name}", cfg.rank_metric, grid_keys=grid_keys,
                              note=f"Experiment: `{exp_dir}`; {len(trials)} trial(s); "
                                   f"{int(trials.status.isin(['ok', 'pruned']).sum())} ranked, "
                                   f"{int((trials.status == 'diverged').sum())} diverged, "
                                   f"{int((trials.status == 'failed').sum())} failed.")
    write_results(exp_dir, trials, lb, md)
    for _, r in trials.iterrows():
        ic = "" if math.isnan(r.valid_ic) else (
            f" valid IC {r.valid_ic:+.4f}" + ("" if math.isnan(r.select_ic) else f", select IC {r.select_ic:+.4f}")
            + f" (epoch {r.best_epoch})")
        print(f"  {r.trial_id} {r.variant_id} seed {r.seed}: {r.status}{ic}"
              f"{' — ' + r.reason if r.reason else ''}", flush=True)
    print(md, flush=True)
    return SweepOutcome(exp_dir, trials, lb)
