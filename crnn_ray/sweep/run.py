"""The sweep run: a Ray Tune grid (variant x seed x hyperparameters) whose trials are Ray Train V2 runs.

`run_sweep` validates the whole config and the data before any trial starts, joins the cluster at
RAY_ADDRESS (the `ray job submit` path) or starts a local Ray, puts the panel once in the object store, runs
the grid, and writes DIR/NAME/{config.yaml, data/, tune/, train/, trials.parquet, leaderboard.*}.

This module is the Tune x Train stage and the order of the stages; each stage has its own module:

    experiment.py   before Ray: the config and directory to use, the data checked, the Tune generations
    placement.py    on the cluster: each Train run's resources, the packs (dealt by costs.py's measured costs)
    run.py          connect Ray, one Tune experiment per generation whose trials are trial.py's Train runs,
                    Ctrl-C / SIGTERM stop gracefully (`SweepInterrupted`)
    collect.py      the rows, trials.parquet and the leaderboard from Tune's results
    monitor.py      while Tune runs: the status line, a MLflow run and a TensorBoard series per model

What the sweep prints is also kept in DIR/NAME/sweep.log (crnn_ray.console), and the models' runs in the
experiment's MLflow store (crnn_ray.tracking), both set up once the checks passed.
"""

from __future__ import annotations

import contextlib
import json
import os
import pickletools
import shutil
import signal
import threading
import time
from dataclasses import asdict
from pathlib import Path

import ray
from ray import tune
from ray.tune.schedulers import ASHAScheduler, FIFOScheduler

from crnn_ray import ray_compat
from crnn_ray.console import ConsoleLog, console_log
from crnn_ray.io import CliError
from crnn_ray.provenance import git_state
from crnn_ray.schema import VALID_METRICS
from crnn_ray.sweep.collect import SweepOutcome, baselines_for, collect, disk_reports, time_split
from crnn_ray.sweep.config import SweepConfig, load_config
from crnn_ray.sweep.costs import CostProbe
from crnn_ray.sweep.experiment import (Prepared, describe_panel, plan_generations, prepare_experiment,
                                       resolve_experiment, write_experiment)
from crnn_ray.sweep.monitor import MonitorCallback, NoTrialBoards, SweepMonitor, model_params, watching
from crnn_ray.sweep.placement import PackPlan, PackQueue, PackQueues, ledger_path, plan_packs
from crnn_ray.sweep.trial import (SweepStorageError, TrialContext, TrialProgress, share_panel, started_models,
                                  trial_driver)
from crnn_ray.tracking import Tracker

# the stages' entry points stay importable from here too (`from crnn_ray.sweep.run import prepare_experiment`)
__all__ = ["run_sweep", "load_config", "resolve_experiment", "prepare_experiment", "write_experiment", "collect",
           "SweepConfig", "SweepOutcome", "SweepInterrupted"]


def run_sweep(config_path=None, storage: str | os.PathLike = "runs", name: str | None = None,
              resume: bool = False, overwrite: bool = False) -> SweepOutcome:
    """Validate, run the grid, write trials + leaderboard; returns the outcome (tables + directory)."""
    with console_log() as log:
        return _run(log, config_path, storage, name, resume, overwrite)


def _run(log: ConsoleLog, config_path, storage, name, resume: bool, overwrite: bool) -> SweepOutcome:
    t0 = time.perf_counter()
    cfg, exp_dir, replace = resolve_experiment(config_path, storage, name, resume, overwrite)
    print(f"experiment: {exp_dir}", flush=True)
    prep = prepare_experiment(cfg, exp_dir, resume)
    grid = cfg.grid(len(prep.windows))
    describe_panel(cfg, prep)
    generations = plan_generations(cfg, exp_dir, grid, prep, resume)
    prep.resolved["resolved"]["generations"] = generations

    started = False
    newest = [t for t in grid if t["key"] in set(generations[-1]["trials"])]
    # packs are dealt by each model's measured cost (crnn_ray.sweep.costs); timing the specs takes a second or
    # two of single-threaded torch, so it runs while Ray starts
    probe = CostProbe(newest, prep.panel, prep.windows) if cfg.models_per_trial != 1 and len(newest) > 1 else None
    try:
        started = _connect_ray()
        plan = plan_packs(cfg, grid, generations, probe)
        write_experiment(prep, exp_dir, replace)  # every check passed: now the experiment may change
        log.attach(exp_dir / "sweep.log", append=resume)
        print(plan.describe(cfg, newest), flush=True)
        queue = _pack_queue(cfg, exp_dir, plan, probe, resume)
        # normalised once (every window's days), put once: every model on a node reads it zero-copy; the raw
        # features are consumed, and from here on the driver's panel (the baselines') maps the shared copy too
        panel_refs, prep.panel = share_panel(prep.panel, prep.windows, cfg.data.label,
                                             clip=float(cfg.training.clip), x_dtype=str(cfg.training.x_dtype))
        trainable = _trainable(cfg, exp_dir, prep, plan, started, queue, panel_refs)
        tracker = _tracker(cfg, exp_dir, grid, prep)
        monitor = SweepMonitor(grid, exp_dir, costs=probe.result() if probe is not None else None,
                               done=_done_on_disk(cfg, exp_dir, grid) if resume else None, tracker=tracker,
                               tensorboard=cfg.tracking.tensorboard)
        with watching(monitor):
            monitor.print_status()
            results, fits = _fit(cfg, exp_dir, generations, plan, trainable, resume)
        outcome = collect(cfg, exp_dir, grid, results, baselines_for(cfg, prep.panel, prep.windows))
        outcome.time = time_split(fits, min(plan.placement.max_concurrent_trials, len(plan.newest_packs)))
        _track_outcome(tracker, grid, outcome)
    finally:
        if prep.new_panel is not None and prep.new_panel.exists():  # a check failed before it was moved in
            shutil.rmtree(prep.new_panel.parent, ignore_errors=True)
        if started:
            ray.shutdown()
    _print_totals(outcome, exp_dir, t0)
    return outcome


def _tracker(cfg: SweepConfig, exp_dir: Path, grid: list[dict], prep: Prepared) -> Tracker | None:
    """The sweep's MLflow run (found again on --resume), or None when `tracking.mlflow` is off."""
    if not cfg.tracking.mlflow:
        return None
    tracker = Tracker(exp_dir, cfg.name, cfg.tracking)
    git = git_state()
    tracker.start_parent("sweep", cfg.name, params={
        "config": str(cfg.source), "models": len(grid), "variants": len(cfg.resolved_variants),
        "seeds": ",".join(map(str, cfg.seeds)), "label": cfg.data.label, "lookback": cfg.data.lookback,
        "windows": len(prep.windows), "features": len(prep.panel.features)},
        tags={"crnn_ray.git_commit": git["commit"], "crnn_ray.git_dirty": git["dirty"]})
    if tracker.enabled:
        print(f"tracking: MLflow {tracker.uri} (experiment {cfg.name!r}); TensorBoard "
              + (str(exp_dir / "tensorboard") if cfg.tracking.tensorboard else "off"), flush=True)
    return tracker


def _done_on_disk(cfg: SweepConfig, exp_dir: Path, grid: list[dict]) -> dict[str, str]:
    """--resume: {model key: status} of the models already over on disk (the status line counts them)."""
    found = disk_reports(exp_dir / "train", cfg.name, [t["key"] for t in grid])
    return {k: str(reports[-1].get("status")) for k, (reports, _) in found.items() if reports}


def _track_outcome(tracker: Tracker | None, grid: list[dict], outcome: SweepOutcome) -> None:
    """Every model's run ends with its row (status, reason, the selected epoch's figures, its checkpoint) —
    also a model whose end the live reports missed (a resumed pack, a pruned trial) — then the sweep's run."""
    if tracker is None:
        return
    by_key = {t["key"]: t for t in grid}
    for row in outcome.trials.to_dict("records"):
        key = row["trial_id"]
        tracker.model_run(key, model_params(by_key[key]), {"crnn_ray.variant": row["variant_id"]})
        figures = None if key in tracker.ended else {f"best_{m}": row.get(m) for m in VALID_METRICS}
        tracker.end_model(key, row["status"], row.get("reason") or "", figures, row.get("checkpoint"))
    trials = outcome.trials
    summary = {"models_ok": int((trials.status == "ok").sum()), "models_diverged": int((trials.status == "diverged").sum()),
               "models_failed": int((trials.status == "failed").sum()), "variants_ranked": outcome.n_ranked}
    exp_dir = Path(outcome.experiment_dir)
    tracker.end_parent("FINISHED", summary, [exp_dir / "leaderboard.md", exp_dir / "config.yaml"])


def _print_totals(outcome: SweepOutcome, exp_dir: Path, t0: float) -> None:
    """The closing lines: how many variants ranked, and where the slot-seconds went (collect.time_split)."""
    n_variants = int((outcome.leaderboard["family"] != "baseline").sum())
    print(f"sweep finished in {time.perf_counter() - t0:.0f}s: {outcome.n_ranked}/{n_variants} "
          f"variant(s) ranked; {exp_dir / 'leaderboard.md'}", flush=True)
    t = outcome.time
    print(f"time: Tune {t['fit_s']:.0f}s x {t['slots']} slot(s) = {t['slot_s']:.0f} slot-s; model epochs "
          f"{t['epoch_s']:.0f}s (training {t['train_s']:.0f}s + validation {t['valid_s']:.0f}s); overhead "
          f"{100 * t['overhead']:.0f} %: start-up {t['startup_s']:.0f} slot-s (Tune trial {t['startup_tune_s']:.0f} + "
          f"Train run {t['startup_s'] - t['startup_tune_s']:.0f}), per-model set-up, checkpoints "
          f"and reports {t['model_overhead_s']:.0f}, idle slots {t['idle_s']:.0f}", flush=True)


# ------------------------------------------------------------------------------------------------------ Ray
def _connect_ray():
    """Join RAY_ADDRESS when set (`ray job submit`, a cluster), else start a local Ray. Returns started?

    Either way Ray's known-benign messages are silenced (ray_compat.quiet_init_kwargs: a driver-side line
    filter and a worker setup hook, merged into a job's runtime_env; docs/operations.md lists them).
    """
    if ray.is_initialized():
        return False
    if os.environ.get("RAY_ADDRESS"):
        ray.init(**ray_compat.quiet_init_kwargs(log_to_driver=True))
    else:  # "local": never attach to another `ray start` cluster found on this machine
        ray.init(**ray_compat.quiet_init_kwargs(address="local", include_dashboard=False, log_to_driver=True))
    return True


def _pack_queue(cfg: SweepConfig, exp_dir: Path, plan: PackPlan, probe, resume: bool):
    """The work-stealing actor (PackQueues): a PackQueue for each generation whose packs can share work (several
    packs of several models), holding that generation's models only, its claims appended to its ledger. On
    --resume each starts from what is on disk (its ledger and every checkpoint of its packs: started_models),
    so a model a pack had started, before any kill, stays that pack's. None when no generation shares work."""
    queues = {}
    for name, packs in plan.packs.items():
        if len(packs) < 2 or all(len(p["models"]) < 2 for p in packs):
            continue
        ledger = ledger_path(exp_dir, name)
        claimed = started_models(exp_dir / "train", cfg.name, packs, ledger) if resume else {}
        if not resume:
            ledger.unlink(missing_ok=True)
        costs = probe.result() if probe is not None and name == plan.newest else None
        queues[name] = PackQueue({p["key"]: p["models"] for p in packs}, costs, claimed, str(ledger))
    if not queues:
        return None
    (exp_dir / "train").mkdir(parents=True, exist_ok=True)
    return ray.remote(num_cpus=0)(PackQueues).remote(queues)


def _trainable(cfg: SweepConfig, exp_dir: Path, prep: Prepared, plan: PackPlan, started: bool, queue,
               panel_refs: list):
    """The Tune trainable: trial_driver with what every trial shares (the panel normalised once and put once in
    the object store: trials on a node share its copy), holding no CPU, only the driver's memory."""
    placement = plan.placement
    ctx = TrialContext(
        experiment=cfg.name,
        experiment_dir=str(exp_dir),
        panel_refs=panel_refs,
        splits={k: v for k, v in asdict(prep.splits).items()},
        placement=placement,
        max_failures=cfg.fault_tolerance.max_failures,
        start_timeout_s=cfg.fault_tolerance.start_timeout_s,
        start_retries=cfg.fault_tolerance.start_retries,
        private_ray=started,
        window_splits=[asdict(w) for w in prep.windows] if cfg.walk_forward else None,
        queue=queue,
    )
    return tune.with_resources(
        tune.with_parameters(trial_driver, ctx=ctx),
        {"cpu": 0, "memory": placement.driver_memory_mb * 1024 * 1024},
    )


# ----------------------------------------------------------------------------------------------------- Tune
def _fit(cfg: SweepConfig, exp_dir: Path, generations: list[dict], plan: PackPlan, trainable,
         resume: bool) -> tuple[list, list]:
    """One Tune experiment per generation (walk-forward windows added later), each restored on --resume when
    Tune saved it. Returns (every result, [(results, wall t0, wall t1)] per fit); raises SweepInterrupted
    after Ctrl-C / SIGTERM, once Tune has saved its state."""
    results, fits = [], []
    with _graceful_stop() as stopped, ray_compat.tune_silent():
        for gen in generations:
            if stopped.is_set():
                break
            tune_dir = exp_dir / gen["tune"]
            if resume and tune.Tuner.can_restore(str(tune_dir)) and _tune_state_usable(tune_dir):
                print(f"resuming {tune_dir} (finished trials are kept; errored ones continue from their "
                      "checkpoints)", flush=True)
                tuner = tune.Tuner.restore(str(tune_dir), trainable=trainable, resume_errored=True)
            else:
                tuner = _new_tuner(cfg, exp_dir, gen["tune"], trainable, plan.packs[gen["tune"]], plan.placement)
            wall0 = time.time()
            try:
                got = list(tuner.fit())
            except Exception as exc:  # noqa: BLE001 - only a storage stop is ours to say in one line
                _raise_storage_stop(exc, exp_dir)
                raise
            results.extend(got)
            fits.append((got, wall0, time.time()))
    if stopped.is_set():
        raise SweepInterrupted(f"sweep interrupted; Tune saved its state. Resume with: python -m crnn_ray.sweep "
                               f"--storage {exp_dir.parent} --name {exp_dir.name} --resume")
    return results, fits


def _tune_state_usable(tune_dir: Path) -> bool:
    """Whether Tune can restore from its saved state: the newest experiment_state-*.json parses and tuner.pkl
    is a whole pickle (parsed opcode by opcode, never unpickled). When a full disk truncated them, the state is
    set aside (`*.set-aside`) with one line and the generation starts as a new Tune experiment over the same
    packs: each pack's worker continues from its checkpoints on disk (finished models are not trained again,
    and their rows come from their checkpoints, collect.disk_reports), so nothing trained is lost."""
    states = sorted(tune_dir.glob("experiment_state-*.json"))
    try:
        doc = json.loads(states[-1].read_text())
        if not isinstance(doc, dict) or not isinstance(doc.get("trial_data"), list):
            raise ValueError("no trial_data list")
        for _ in pickletools.genops((tune_dir / "tuner.pkl").read_bytes()):
            pass
        return True
    except Exception as exc:  # noqa: BLE001 - any damage means: do not hand it to Tune
        problem = f"{type(exc).__name__}: {str(exc)[:80]}"
    for path in states:
        path.replace(path.with_name(path.name + ".set-aside"))
    print(f"{tune_dir}: Tune's saved state is damaged ({problem}), set aside; a new Tune run continues every "
          "pack from its checkpoints on disk", flush=True)
    return False


def _raise_storage_stop(exc: BaseException, exp_dir: Path) -> None:
    """A worker's checkpoint the storage could not take (trial.SweepStorageError, raised from Tune's loop,
    possibly wrapped) -> one line: the path, the reason, and how to go on."""
    seen, hops = exc, 0
    while seen is not None and not isinstance(seen, SweepStorageError) and hops < 20:
        seen, hops = seen.__cause__ or seen.__context__, hops + 1
    if isinstance(seen, SweepStorageError):
        raise CliError(f"{seen}; the sweep stopped: free space, then resume with: python -m crnn_ray.sweep "
                       f"--storage {exp_dir.parent} --name {exp_dir.name} --resume") from None


def _dirname(trial) -> str:
    return trial.config["trial"]["key"]


def _new_tuner(cfg: SweepConfig, exp_dir: Path, name: str, trainable, packs: list[dict], placement):
    return tune.Tuner(
        trainable,
        param_space={"trial": tune.grid_search(packs)},
        tune_config=tune.TuneConfig(
            max_concurrent_trials=placement.max_concurrent_trials,
            scheduler=_scheduler(cfg),
            trial_dirname_creator=_dirname,
            trial_name_creator=_dirname,
        ),
        run_config=tune.RunConfig(
            name=name,
            storage_path=str(exp_dir),
            failure_config=tune.FailureConfig(max_failures=cfg.fault_tolerance.trial_max_failures),
            # TrialProgress: one line per trial event instead of Tune's tables; MonitorCallback: the status line,
            # the MLflow runs and TensorBoard series per model; NoTrialBoards: no per-pack TensorBoard series
            callbacks=[TrialProgress(), MonitorCallback(), NoTrialBoards()],
            verbose=0,
        ),
    )


def _scheduler(cfg: SweepConfig):
    if cfg.scheduler.type == "asha":
        # time axis = epochs (every report is an epoch's, so the last epoch is the last report)
        return ASHAScheduler(time_attr="epoch", metric=cfg.schedule_metric, mode="max",
                             max_t=cfg.training.epochs, grace_period=cfg.scheduler.grace_period,
                             reduction_factor=cfg.scheduler.reduction_factor)
    return FIFOScheduler()


# ------------------------------------------------------------------------------------------- graceful stop
class SweepInterrupted(Exception):
    """Ctrl-C or SIGTERM stopped the sweep; Tune saved its state (the CLI exits 130 with the hint)."""


@contextlib.contextmanager
def _graceful_stop():
    """SIGINT and SIGTERM (e.g. `ray job stop`) stop Tune gracefully (it saves its state) and are remembered,
    so the caller can say how to resume. Tune's own SIGINT handler would only name Tuner.restore."""
    stopped = threading.Event()
    if threading.current_thread() is not threading.main_thread():
        yield stopped
        return

    def stop(signum, frame):
        first = not stopped.is_set()
        stopped.set()
        ray_compat.STOPPING.set()
        if first:  # Tune's graceful path listens on SIGUSR1; a second signal acts at once
            os.kill(os.getpid(), signal.SIGUSR1)
        else:
            raise KeyboardInterrupt

    previous = {sig: signal.signal(sig, stop) for sig in (signal.SIGINT, signal.SIGTERM)}
    old_env = os.environ.get("TUNE_DISABLE_SIGINT_HANDLER")
    os.environ["TUNE_DISABLE_SIGINT_HANDLER"] = "1"  # ours forwards to Tune's SIGUSR1 handler instead
    ray_compat.STOPPING.clear()
    try:
        yield stopped
    finally:
        for sig, handler in previous.items():
            signal.signal(sig, handler)
        if old_env is None:
            os.environ.pop("TUNE_DISABLE_SIGINT_HANDLER", None)
        else:
            os.environ["TUNE_DISABLE_SIGINT_HANDLER"] = old_env
