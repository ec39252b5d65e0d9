"""One Tune trial = one Ray Train run = one *pack* of models, driven from a Tune function trainable
("Train-in-Tune", Train V2).

Why this shape: Tune owns the grid, the scheduler and trial-level retries; Train owns placement of the one
worker on a (node, GPU) with its CPU grant, worker restarts from the last checkpoint, and checkpoint
persistence. The Tune trainable (`trial_driver`) holds no CPU or GPU (only a little memory); it builds a
TorchTrainer whose single worker runs `train_worker`, which calls the plain-PyTorch `train_one` once per model
of its pack, one after another (at any moment one model per GPU).

Why packs: a Train run costs ~15 s of start-up and bookkeeping processes whatever it trains (six on the
trainable's node, ~1.5 GB RSS, and a PlacementGroupCleaner on the head, ~0.2 GB; docs/operations.md);
a pack of K models pays that once (resources.models_per_trial; the packs are made in
crnn_ray.sweep.placement). Each model keeps its own trial key, epoch reports (`trial_key`), status and
checkpoint; a model that diverges or raises ends alone.

A pack's checkpoint is a directory with one sub-directory per model in the single-model format
(crnn_ray/train/checkpoint.py, plus the model's epoch reports so far, `reports.json`) and `pack.json` (which
models are over). Every checkpoint carries the finished models' final directories, so the newest one holds the
whole pack. The worker persists each one itself (`_persist`: whole or not at all) and a restarted worker reads
every checkpoint of its run on disk, not only the one Train registered: a finished model is never trained
again, whatever was killed when (a worker, the driver), and collect rebuilds its row from its directory when
Tune lost its reports.

A Train run is named `<experiment>-<pack key>` under `<experiment dir>/train/` (a one-model pack's key is its
model's, `t000`), so a trial that Tune reruns (or an experiment resumed with `--resume`) picks up the same run.
A checkpoint the storage cannot take (a full disk) stops the sweep with one line, never a retry.

    trial_driver     the Tune trainable: one TorchTrainer per pack (runs in a Tune trial actor)
    train_worker     the Train worker: each model of the pack in turn, a report and a pack checkpoint per epoch
    PackState        which models of a pack are over, where the others resume (`resume_point`)
    TrialProgress    the driver's one line per trial event; a worker's storage error stops the sweep

The Tune trial actor imports this module to hand `train_worker` to Train, so the training code itself
(crnn_ray.train, crnn_ray.data) is imported in the functions the Train worker runs, never here.
"""

from __future__ import annotations

import errno
import json
import math
import os
import shutil
import tempfile
import time
from contextlib import nullcontext
from dataclasses import dataclass
from datetime import datetime
from pathlib import Path
from typing import Any

import ray
import ray.train
import ray.train.torch
import torch
from ray import tune
from ray.train import CheckpointConfig, FailureConfig, LoggingConfig, RunConfig, ScalingConfig
from ray.train.torch import TorchConfig
from ray.tune.integration.ray_train import TuneReportCallback

from crnn_ray import ray_compat
from crnn_ray.io import CliError, to_json
from crnn_ray.sweep.placement import Placement, pack_models, read_ledger

PACK_FILE = "pack.json"
REPORTS_FILE = "reports.json"    # beside a model's checkpoint files: its epoch reports so far (rows without Tune)
STORAGE_ERROR = "storage_error"  # the report key of a checkpoint the storage could not take
#: a checkpoint write failing with one of these is the storage's fault (full, over quota, read-only, failing):
#: every retry would fail the same way, so the sweep stops instead (SweepStop)
DISK_ERRNOS = frozenset({errno.ENOSPC, errno.EDQUOT, errno.EROFS, errno.EIO, errno.EFBIG})
STOP_WAIT_S = 600.0              # how long a worker that hit one waits for the driver to stop the sweep
RESERVE_BYTES = 8 << 20          # free space a checkpoint write leaves for Train's and Tune's bookkeeping
TRAIN_RECORD = "checkpoint_manager_snapshot.json"  # Train V2's record of a run's checkpoints (in its directory)


# ------------------------------------------------------------------------------------------ shared context
@dataclass
class TrialContext:
    """What every trial of one sweep shares (passed once through tune.with_parameters); what differs per
    trial (spec, seed, its whole TrainConfig) travels in the trial's own Tune config."""

    experiment: str                         # the sweep's name (prefix of every Train run name)
    experiment_dir: str                     # absolute DIR/NAME
    panel_refs: list                        # [ObjectRef of the NormalisedPanel (share_panel), or of a Panel]: a
                                            # list so Tune does not resolve it
    splits: dict                            # Splits fields: {"train": (lo, hi), "valid", "select", "test", "embargo"}
    placement: Placement
    max_failures: int = 2
    start_timeout_s: float = 120.0
    start_retries: int = 2
    private_ray: bool = False               # the sweep started its own local Ray (ray_compat.configure_train_driver)
    window_splits: list | None = None       # walk_forward: each window's Splits fields; a trial's `window` picks
    queue: object = None                    # PackQueue actor handle when several packs share the work

    def splits_of(self, trial: dict):
        """The Splits one model trains on: its walk-forward window's, else the sweep's one split."""
        return _splits(self.splits if trial.get("window") is None or not self.window_splits
                       else self.window_splits[int(trial["window"])])

    def all_splits(self) -> list:
        """Every window's Splits (the sweep's one split when it has no walk-forward)."""
        return [_splits(fields) for fields in (self.window_splits or [self.splits])]

    @property
    def train_storage(self) -> str:
        return str(Path(self.experiment_dir) / "train")


def _splits(fields: dict):
    from crnn_ray.data import Splits  # deferred: the Tune trainable imports this module and stays lean

    return Splits(**{k: tuple(v) if isinstance(v, (list, tuple)) else v for k, v in fields.items()})


def share_panel(panel, windows: list, label: str, clip: float, x_dtype: str) -> tuple[list, Any]:
    """([ObjectRef of the panel normalised once] for TrialContext.panel_refs, the driver's zero-copy view of it).

    The driver normalises the panel (one vectorised pass, over its own raw features: `panel.X` is consumed and
    set to None) with the fingerprint of each window's data, and puts it in the object store once; every model of
    every pack then reads it zero-copy on its node (Ray copies an object to a node once) and slices the days its
    window needs. The driver keeps no copy either: its view (baselines, the leaderboard) maps the same object, plus
    the raw ret1 column the reversal baseline sums. Peak on the driver's node: 2 x X while the put copies, 1 x X
    after (docs/data.md, "One normalised panel")."""
    from crnn_ray.data import normalise_panel  # deferred: as _splits

    normalised = normalise_panel(panel, clip=clip, x_dtype=x_dtype, windows=windows, labels=[label], consume=True,
                                 keep_raw=["ret1"])
    raw, normalised.raw = normalised.raw, {}  # the workers never read raw columns
    ref = ray.put(normalised)
    del normalised  # the driver's own normalised copy: the object store's is the one left
    view = ray.get(ref)
    view.raw = raw
    return [ref], view


def run_name(experiment: str, trial_key: str) -> str:
    return f"{experiment}-{trial_key}"


# ------------------------------------------------------------------------------------------- Tune trainable
class TrialProgress(tune.Callback):
    """One line per trial start / end / error (the workers print one line per epoch)."""

    @staticmethod
    def _model_tag(t: dict) -> str:
        grid = " ".join(f"{k}={v}" for k, v in t.get("grid", {}).items())
        return f"{t['key']} {t['variant_id']} seed {t['seed']}{' ' + grid if grid else ''}"

    @classmethod
    def _tag(cls, trial) -> str:
        models = pack_models(trial.config["trial"])
        if len(models) == 1:
            return cls._model_tag(models[0])
        return f"pack {trial.config['trial']['key']} ({len(models)} models: {', '.join(m['key'] for m in models)})"

    def on_trial_start(self, iteration, trials, trial, **info):
        print(f"[sweep] started {self._tag(trial)}", flush=True)

    def on_trial_complete(self, iteration, trials, trial, **info):
        r = trial.last_result or {}
        if len(pack_models(trial.config["trial"])) > 1:
            print(f"[sweep] finished {self._tag(trial)}", flush=True)
            return
        ic = r.get("valid_ic")
        ic = f", valid IC {ic:+.4f}" if isinstance(ic, float) and math.isfinite(ic) else ""
        print(f"[sweep] finished {self._tag(trial)}: {r.get('status', '?')}{ic}", flush=True)

    def on_trial_error(self, iteration, trials, trial, **info):
        print(f"[sweep] error in {self._tag(trial)}; see {trial.local_path}", flush=True)

    def on_trial_result(self, iteration, trials, trial, result, **info):
        """A worker could not write its checkpoint (a full disk): stop the sweep at once. Raising here ends
        Tune's loop without its final state sync, which on a full disk would truncate the experiment state
        it overwrites (the trials stay resumable in the last state Tune synced)."""
        if result.get(STORAGE_ERROR):
            ray_compat.STOPPING.set()  # what the dying actors print now is the stop's noise
            raise SweepStorageError(str(result[STORAGE_ERROR]))


class SweepStorageError(Exception):
    """The storage could not take a checkpoint (DISK_ERRNOS): the sweep stops (run._fit says it in one line)."""


def trial_driver(config: dict, ctx: TrialContext) -> None:
    """Tune function trainable: run this trial's Train run; its reports reach Tune via TuneReportCallback."""
    driver_t0 = time.time()  # the Tune trainable entered: the rest of the start-up is Train's
    trial = config["trial"]
    ray_compat.configure_train_driver(ctx.start_timeout_s, ctx.private_ray)
    run_dir = Path(ctx.train_storage) / run_name(ctx.experiment, trial["key"])
    _repair_train_record(run_dir)
    p = ctx.placement
    trainer = ray_compat.lean_torch_trainer()(
        train_worker,
        train_loop_config={"trial": trial, "ctx": ctx, "driver_t0": driver_t0},
        # One worker per trial: there are no collectives, so gloo works everywhere (real GPUs, fake GPUs
        # declared as Ray resources, CPU-only torch builds); the model itself goes to CUDA when present.
        torch_config=TorchConfig(backend="gloo"),
        scaling_config=ScalingConfig(num_workers=1, use_gpu=p.use_gpu, resources_per_worker=p.worker_resources()),
        run_config=RunConfig(
            name=run_name(ctx.experiment, trial["key"]),
            storage_path=ctx.train_storage,
            failure_config=FailureConfig(max_failures=ctx.max_failures,
                                         controller_failure_limit=ctx.start_retries),
            # two: when the newest is corrupt, the worker resumes from the one before (resume_point)
            checkpoint_config=CheckpointConfig(num_to_keep=2),
            callbacks=[TuneReportCallback()],
            logging_config=LoggingConfig(log_level="WARNING"),  # Train's per-report INFO lines are noise here
        ),
    )
    try:
        trainer.fit()
    except ray.train.ControllerError as exc:
        cause = getattr(exc, "controller_failure", None)
        if not (isinstance(cause, OSError) and cause.errno in DISK_ERRNOS):
            raise
        # Train's controller could not write its record of the checkpoints (a full disk): not retryable
        # either; stop the sweep like a worker does (_stop_sweep)
        where = cause.filename if cause.filename is not None else run_dir / TRAIN_RECORD
        tune.report({STORAGE_ERROR: f"{where}: {os.strerror(cause.errno)} (writing Train's checkpoint record)"})
        _wait_to_be_stopped(cause)


def _repair_train_record(run_dir: Path) -> None:
    """Train V2 restores a run from its checkpoint_manager_snapshot.json, and its controller fails to start,
    on every retry, when a full disk left that record truncated. Every checkpoint is still on disk and the
    worker resumes from the most advanced intact one it finds there (PackState.restore), so a damaged record
    is set aside (`.damaged`) with one line, and Train starts the run with no record."""
    record = run_dir / TRAIN_RECORD
    try:
        json.loads(record.read_text())
        return
    except FileNotFoundError:
        return
    except (OSError, ValueError):
        pass
    try:
        record.replace(record.with_name(record.name + ".damaged"))
    except OSError:
        return  # Train will say what is wrong with it
    print(f"{record}: damaged (a full disk?): set aside; the pack resumes from its checkpoints on disk", flush=True)


# -------------------------------------------------------------------------------------------- Train worker


def train_worker(loop_config: dict) -> None:
    """The Ray Train worker: quota first (once), then train_one for each unfinished model of the pack, one
    report (and checkpoint) per epoch.

    Each report is one model's epoch metrics under its own `trial_key` (Tune overwrites `trial_id` with its
    own) (they carry its best epoch's metrics as `best_*`, the status and the reason), stamped with where the
    worker ran: a model's last report alone makes its trials.parquet row. A model that raises gets one `failed`
    report and the pack goes on. A checkpoint the storage cannot take (a full disk) stops the sweep instead
    (`_stop_sweep`): Train and Tune would retry it into the same full disk, over and over.
    """
    worker_t0 = time.time()  # wall clock (comparable across a node's processes): the sweep's time split
    pack: dict = loop_config["trial"]
    ctx: TrialContext = loop_config["ctx"]
    p = ctx.placement

    # The training code loads here, in the Train worker: the Tune trainable imports this module too (to hand
    # this function to Train) and stays lean. torch is already imported by Ray Train here.
    from crnn_ray.train import CpuSampler, apply_cpu_quota

    # cpu_quota false: the seed report's setting, torch free to use every core of the node
    quota = apply_cpu_quota(p.threads if p.cpu_quota else (os.cpu_count() or 1))
    ray_compat.quiet_train_report_log()
    panel = _normalised_panel(ray.get(ctx.panel_refs[0]), ctx, pack_models(pack)[0])
    device = ray.train.torch.get_device() if torch.cuda.is_available() else torch.device("cpu")
    dealt = pack_models(pack)
    run_dir = Path(ctx.train_storage) / run_name(ctx.experiment, pack["key"])
    where = _where(pack, p, quota, device, worker_t0, loop_config.get("driver_t0"))
    workdir = Path(tempfile.mkdtemp(prefix=f"crnn_{pack['key']}_"))
    trial = None
    try:
        checkpoint = ray.train.get_checkpoint()
        with checkpoint.as_directory() if checkpoint is not None else nullcontext(None) as given:
            state = PackState.restore(Path(given) if given else None, workdir, dealt, run_dir,
                                      str(checkpoint.path) if checkpoint is not None else "")
        sampler = CpuSampler()
        i = 0
        for group in _stacks(_pack_order(state, ctx.queue, pack["key"]), p.stack_size(device.type)):
            for trial in group:
                i += 1
                if len(dealt) > 1 or ctx.queue is not None:
                    taken = " (taken over: no pack had started it)" if trial["key"] in state.stolen_keys else ""
                    print(f"[pack {pack['key']}] model {i} ({len(dealt)} dealt): {trial['key']} "
                          f"{trial['variant_id']} seed {trial['seed']}{taken}"
                          + (f" (stacked: {len(group)} models of one spec)" if len(group) > 1 else ""), flush=True)
            trial = group[0]
            if len(group) > 1:
                _train_stack(group, state, ctx, panel, device, workdir, sampler, where)
            else:
                _train_model(trial, state, ctx, panel, device, workdir, sampler, where)
    except OSError as exc:
        if exc.errno not in DISK_ERRNOS:
            raise
        _stop_sweep(exc, trial, run_dir, where)
    finally:
        shutil.rmtree(workdir, ignore_errors=True)


def _normalised_panel(panel, ctx: TrialContext, trial: dict):
    """The shared NormalisedPanel as it is; a raw Panel (a driver that put one) normalised here, once for the
    whole pack rather than once per model, with the pack's training config (clip and x_dtype are not grid axes,
    so every model of a sweep shares them)."""
    from crnn_ray.data import NormalisedPanel, normalise_panel
    from crnn_ray.train import TrainConfig

    if isinstance(panel, NormalisedPanel):
        return panel
    cfg = TrainConfig(**trial["train_config"])
    return normalise_panel(panel, clip=cfg.clip, x_dtype=cfg.x_dtype, windows=ctx.all_splits(), labels=[cfg.label])


def _stacks(trials, size: int):
    """The pack's models in order, as groups to train together: up to `size` consecutive models of one spec and
    lookback (a stack: crnn_ray.train.train_stacked); size 1 gives one model at a time. A full group is handed
    over before the next model is asked for: asking claims it (PackQueue), and a model claimed early could not
    be taken over by an idle pack."""
    group: list[dict] = []
    for trial in trials:
        if group and _stack_key(trial) != _stack_key(group[0]):
            yield group
            group = []
        group.append(trial)
        if len(group) >= size:
            yield group
            group = []
    if group:
        yield group


def _stack_key(trial: dict) -> tuple:
    return trial["spec"], trial["train_config"].get("lookback")


@dataclass
class _ModelRun:
    """What the pack gives one model's training: where it resumes, its epoch hook (a report and a pack
    checkpoint per epoch), its metadata, and the stamp its reports carry."""

    trial: dict
    tag: str
    resume_dir: Path | None
    stamp: dict
    on_epoch: Any
    meta_extra: dict


def _model_run(trial: dict, state: "PackState", ctx: TrialContext, workdir: Path, where: dict) -> _ModelRun:
    key, tag = trial["key"], f"[{trial['variant_id']}] {trial['key']}"
    resume_dir, resumed_from = state.resume.get(key, (None, 0))
    if key in state.lines:
        print(state.lines[key], flush=True)
    elif resume_dir is not None:
        print(f"{tag}: resuming from epoch {resumed_from} ({state.sources.get(key, state.shown)})", flush=True)
    stamp = {**where, "trial_key": key, "resumed_from_epoch": resumed_from, "model_t0": time.time()}
    reports = state.reports.setdefault(key, [])

    def on_epoch(metrics: dict, checkpoint_dir: Path) -> None:
        # train_one reports `threads` (torch's: the quota) and `os_threads` (the worker's, Ray's included)
        metrics = {**metrics, **stamp, "report_t": time.time()}
        reports.append(metrics)
        _report(metrics, state.stage(workdir, key, checkpoint_dir, metrics.get("status") != "running"), state.run_dir)

    meta_extra = {"variant_id": trial["variant_id"], "trial_id": key, "experiment": ctx.experiment,
                  **({"window": int(trial["window"]), "line": trial["line"]} if trial.get("window") is not None
                     else {})}
    return _ModelRun(trial, tag, resume_dir, stamp, on_epoch, meta_extra)


def _failed(run: _ModelRun, exc: Exception, state: "PackState", workdir: Path) -> None:
    """A model that raised: one `failed` report (the pack goes on); a disk error propagates (_stop_sweep)."""
    if isinstance(exc, OSError) and exc.errno in DISK_ERRNOS:
        raise exc
    key = run.trial["key"]
    reason = f"{type(exc).__name__}: {str(exc).splitlines()[0] if str(exc) else ''}"[:300]
    print(f"{run.tag}: failed: {reason}", flush=True)
    state.failed[key] = reason
    _report({**run.stamp, "status": "failed", "reason": reason, "report_t": time.time()},
            state.stage(workdir, key, None, True), state.run_dir)


def _finished(run: _ModelRun, result, state: "PackState", workdir: Path) -> None:
    key = run.trial["key"]
    if result.checkpoint_dir is not None and key not in state.over:
        # resumed into an already finished run (train_one reports nothing then): carry it as it is
        state.keep(workdir, key, result.checkpoint_dir)
    shutil.rmtree(workdir / "run" / key, ignore_errors=True)


def _train_model(trial: dict, state: "PackState", ctx: TrialContext, panel, device, workdir: Path, sampler,
                 where: dict) -> None:
    """One model of the pack: train_one from where it stopped, a report and a pack checkpoint per epoch; a
    model that raises gets one `failed` report (the pack goes on), a disk error propagates (_stop_sweep)."""
    from crnn_ray.train import TrainConfig, train_one

    run = _model_run(trial, state, ctx, workdir, where)
    try:
        result = train_one(trial["spec"], panel, ctx.splits_of(trial), TrainConfig(**trial["train_config"]),
                           device=device, resume_from=run.resume_dir, on_epoch=run.on_epoch,
                           workdir=workdir / "run" / trial["key"], sampler=sampler, meta_extra=run.meta_extra)
    except Exception as exc:  # noqa: BLE001 - one model's failure must not end its pack
        _failed(run, exc, state, workdir)
        return
    _finished(run, result, state, workdir)


def _train_stack(group: list[dict], state: "PackState", ctx: TrialContext, panel, device, workdir: Path, sampler,
                 where: dict) -> None:
    """Models of one spec trained as one stacked module (resources.stack_size: one vmapped step for all of them;
    each keeps its own data order, early stopping, reports and checkpoints, exactly as train_one would). When
    the stack itself raises, its unfinished models are trained one at a time instead, from where the pack had
    resumed them (epochs the stack reported are trained and reported again)."""
    from crnn_ray.train import StackMember, TrainConfig, train_stacked

    runs = [_model_run(t, state, ctx, workdir, where) for t in group]
    members = [StackMember(TrainConfig(**t["train_config"]), ctx.splits_of(t), workdir=workdir / "run" / t["key"],
                           meta_extra=r.meta_extra, resume_from=r.resume_dir, on_epoch=r.on_epoch)
               for t, r in zip(group, runs)]
    try:
        results = train_stacked(group[0]["spec"], panel, members, device=device, sampler=sampler)
    except Exception as exc:  # noqa: BLE001 - the stack's failure must not end its models
        if isinstance(exc, OSError) and exc.errno in DISK_ERRNOS:
            raise
        print(f"[stack {', '.join(t['key'] for t in group)}] {type(exc).__name__}: {str(exc)[:160]}; training "
              "its models one at a time", flush=True)
        for t in group:
            if t["key"] not in state.over:
                _train_model(t, state, ctx, panel, device, workdir, sampler, where)
        return
    for run, result in zip(runs, results):
        _finished(run, result, state, workdir)


def _stop_sweep(exc: OSError, trial: dict | None, run_dir: Path, stamp: dict) -> None:
    """The storage could not take a checkpoint (ENOSPC and its kin, DISK_ERRNOS): report it, without a
    checkpoint, so the driver stops the whole sweep (TrialProgress raises SweepStorageError in Tune's loop; every
    trial stays resumable and `--resume` continues once space is freed), then wait to be stopped. Raising
    instead would have Train restart the worker and Tune rerun the trial into the same full disk (the issue
    measured 12 failures for 2 models, 614 stderr lines, 16 tracebacks). After STOP_WAIT_S (nothing stopped
    it) the error is raised after all."""
    where = exc.filename if exc.filename is not None else run_dir
    what = f"a checkpoint of {trial['key']}" if trial is not None else "a checkpoint"
    message = f"{where}: {os.strerror(exc.errno)} (writing {what})"
    print(f"[pack {stamp['pack_id']}] cannot write {what}: {where}: {os.strerror(exc.errno)}; stopping the sweep",
          flush=True)
    ray.train.report({**stamp, "trial_key": trial["key"] if trial is not None else stamp["pack_id"],
                      STORAGE_ERROR: message, "report_t": time.time()})
    _wait_to_be_stopped(exc)


def _wait_to_be_stopped(exc: Exception) -> None:
    """Block until the driver stops the sweep (it kills this process); after STOP_WAIT_S raise `exc`."""
    deadline = time.monotonic() + STOP_WAIT_S
    while time.monotonic() < deadline:
        time.sleep(1.0)
    raise exc


def _where(pack: dict, p: Placement, quota: dict, device, worker_t0: float, driver_t0) -> dict:
    """What every report of this worker is stamped with: where it ran, its CPU grant, when it started.
    `worker_` prefixes: Tune stamps every result with its own pid / node_ip (the trial driver's)."""
    return {
        "pack_id": pack["key"],
        "worker_node_ip": ray.util.get_node_ip_address(),
        "worker_node_id": ray.get_runtime_context().get_node_id(),
        "gpu_ids": json.dumps([str(g) for g in ray.get_gpu_ids()]),
        "device": str(device),
        "worker_pid": os.getpid(),
        "cpu_quota": float(p.cpus_per_trial) if p.cpu_quota else 0.0,
        "quota_threads": int(quota["threads"]),
        "worker_t0": worker_t0,
        "driver_t0": float(driver_t0 or worker_t0),
    }


def _pack_order(state: "PackState", queue, pack_key: str):
    """The models this pack trains, in order: its own unfinished ones (each claimed first when a PackQueue
    shares the work: one another pack has claimed is skipped), then those it had taken over before a restart
    that no checkpoint holds yet (the queue's ledger remembers them), then, one at a time, the longest model no
    pack has started (added to the pack's checkpoint, so a restarted worker finishes it)."""
    for trial in list(state.models):
        if trial["key"] in state.over:
            continue
        if queue is not None and not ray.get(queue.claim.remote(pack_key, trial["key"])):
            continue
        yield trial
    if queue is None:
        return
    for trial in ray.get(queue.mine.remote(pack_key)):
        if trial["key"] not in {m["key"] for m in state.models}:
            state.models.append(trial)
            state.stolen.append(trial)
            yield trial
    while True:
        trial = ray.get(queue.steal.remote(pack_key))
        if trial is None:
            return
        state.models.append(trial)
        state.stolen.append(trial)
        yield trial


def _report(metrics: dict, stage: Path, run_dir: Path) -> None:
    """One epoch's report with the pack's checkpoint, which the worker itself persists (`_persist`) and Train
    registers as it is (NO_UPLOAD). Why not Train's upload: a failed upload leaves Train's report counter one
    ahead, so the worker could never report again (not even that it failed), and it leaves a partial
    `checkpoint_*` directory behind."""
    persisted = _persist(stage, run_dir)
    ray.train.report(metrics, checkpoint=ray.train.Checkpoint.from_directory(str(persisted)),
                     checkpoint_upload_mode=ray.train.CheckpointUploadMode.NO_UPLOAD)


def _persist(stage: Path, run_dir: Path) -> Path:
    """Copy a staged pack checkpoint into the Train run's storage directory (a path every node mounts) under
    Train's own naming, `checkpoint_<timestamp>`: written as a hidden sibling and renamed once whole, so a kill
    or a full disk never leaves a partial checkpoint where a resume would look. A checkpoint that would leave
    less than RESERVE_BYTES free is not written (ENOSPC): the small writes that follow it (Train's record of
    its checkpoints, Tune's state) must not be the ones to meet the full disk. An OSError names the
    checkpoint's path (its errno kept: a full disk stops the sweep, DISK_ERRNOS)."""
    name = f"checkpoint_{datetime.now().strftime('%Y-%m-%d_%H-%M-%S.%f')}"
    final, tmp = run_dir / name, run_dir / f".{name}.tmp"
    try:
        run_dir.mkdir(parents=True, exist_ok=True)
        size = sum(f.stat().st_size for f in stage.rglob("*") if f.is_file())
        if shutil.disk_usage(run_dir).free < size + RESERVE_BYTES:
            raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))
        for src in sorted(stage.rglob("*")):
            dst = tmp / src.relative_to(stage)
            if src.is_dir():
                dst.mkdir(parents=True, exist_ok=True)
            else:
                dst.parent.mkdir(parents=True, exist_ok=True)
                shutil.copyfile(src, dst)
        os.rename(tmp, final)
    except OSError as exc:
        shutil.rmtree(tmp, ignore_errors=True)
        raise OSError(exc.errno, exc.strerror or type(exc).__name__, str(final)) from None
    return final


class PackState:
    """Which models of a pack are over (their final checkpoint directories, kept locally) and where the others
    resume; builds each epoch's pack checkpoint directory."""

    def __init__(self, models: list[dict]):
        self.models = list(models)               # dealt to this pack, then those it took over (`stolen`)
        self.stolen: list[dict] = []
        self.over: dict[str, Path] = {}          # finished (ok / diverged) model key -> its final directory
        self.failed: dict[str, str] = {}         # model key -> reason (raised; nothing to carry)
        self.resume: dict[str, tuple[Path, int]] = {}  # model key -> (directory to resume from, its epoch)
        self.sources: dict[str, str] = {}        # model key -> the persisted checkpoint it continues from
        self.lines: dict[str, str] = {}          # model key -> the corrupt-checkpoint warning line
        self.reports: dict[str, list[dict]] = {}  # model key -> its epoch reports so far (REPORTS_FILE)
        self.shown = ""
        self.run_dir = Path()                    # the Train run's storage directory (its checkpoint_* go there)

    @property
    def stolen_keys(self) -> set[str]:
        return {m["key"] for m in self.stolen}

    @classmethod
    def restore(cls, given: Path | None, workdir: Path, models: list[dict], run_dir: Path, shown: str):
        """From what is on disk: Train's latest checkpoint (`given`, None on a fresh start) and every other
        `checkpoint_*` of the run. Each model continues from its most advanced intact directory in any of them
        (resume_point): a driver killed after a worker persisted a checkpoint but before Train registered it
        leaves that newest one outside Train's books, and a model finished there is not trained again.
        Everything needed later is copied out, since Train deletes old checkpoints as new ones are reported."""
        state = cls(models)
        state.shown, state.run_dir = shown, run_dir
        sources = ([given] if given is not None else []) + _run_checkpoints(run_dir, skip={Path(shown).name})
        infos = [read_pack_file(d) for d in sources]
        for info in reversed(infos):  # the newest (Train's) last: its word stands
            state.failed.update(info.get("failed") or {})
        known = {m["key"] for m in state.models}
        for info in infos:
            for m in info.get("stolen") or []:
                if m.get("key") not in known:
                    known.add(m["key"])
                    state.stolen.append(m)
        state.models += state.stolen
        for trial in state.models:
            if trial["key"] in state.failed:
                state.over[trial["key"]] = None  # type: ignore[assignment] - over, nothing to carry
            elif sources:
                # no checkpoint from Train (a kill before it registered one): a path that holds nothing, so
                # every model is looked for in the run's checkpoints on disk
                state._restore_model(trial, given if given is not None else workdir / "none", workdir, run_dir)
        return state

    def _restore_model(self, trial: dict, given: Path, workdir: Path, run_dir: Path) -> None:
        """Where one model continues (`given`: Train's checkpoint): over (its final directory kept), resumed
        from an epoch, or not started."""
        key = trial["key"]
        directory, line = resume_point(given / key, run_dir, self.shown, f"[{trial['variant_id']}] {key}", sub=key)
        if line:
            self.lines[key] = line
        if directory is None:
            return  # not started (or nothing intact: from epoch 0)
        self.reports[key] = read_reports(directory)
        if _meta_status(directory) not in ("running", None):
            self.keep(workdir, key, directory)
            return
        local = workdir / "resume" / key
        shutil.copytree(directory, local)
        self.resume[key] = (local, _checkpoint_epoch(local))
        self.sources[key] = str(directory.parent) if directory.parent != given else self.shown

    def keep(self, workdir: Path, key: str, directory: Path) -> None:
        local = workdir / "over" / key
        if local.exists():
            shutil.rmtree(local)
        shutil.copytree(directory, local)
        self._write_reports(local, key)
        self.over[key] = local

    def stage(self, workdir: Path, key: str, current: Path | None, over: bool) -> Path:
        """This report's checkpoint: the finished models' final directories, the current model's newest one
        (when it has one) and pack.json; the previous stage is removed once Train has persisted it."""
        if over and current is not None:
            self.keep(workdir, key, current)
        elif over:
            self.over[key] = None  # type: ignore[assignment]
        stage = Path(tempfile.mkdtemp(prefix="stage_", dir=workdir))
        for done, directory in self.over.items():
            if directory is not None:
                _link_tree(directory, stage / done)
        if current is not None and not over:
            _link_tree(current, stage / key)
            self._write_reports(stage / key, key)
        (stage / PACK_FILE).write_text(json.dumps({
            "models": [m["key"] for m in self.models],
            "over": [k for k, d in self.over.items() if d is not None],
            "failed": self.failed,
            "stolen": self.stolen}))
        for old in workdir.glob("stage_*"):
            if old != stage:
                shutil.rmtree(old, ignore_errors=True)
        return stage

    def _write_reports(self, directory: Path, key: str) -> None:
        """The model's reports beside its checkpoint files: what its row is rebuilt from when Tune lost them
        (a driver killed: Tune restarts the pack's trial with an empty result log; collect.disk_reports)."""
        (directory / REPORTS_FILE).unlink(missing_ok=True)  # a hard link into the previous stage: never rewrite it
        (directory / REPORTS_FILE).write_text(to_json(self.reports.get(key, []), indent=None))


def _link_tree(src: Path, dst: Path) -> None:
    """Hard links where the filesystem allows (no bytes copied locally; Train copies once to storage)."""
    try:
        shutil.copytree(src, dst, copy_function=os.link)
    except OSError:
        shutil.rmtree(dst, ignore_errors=True)
        shutil.copytree(src, dst)


def read_pack_file(directory: Path) -> dict:
    try:
        return json.loads((directory / PACK_FILE).read_text())
    except (OSError, ValueError):  # missing or damaged: every model's own files say how far it got
        return {}


def read_reports(directory: Path) -> list[dict]:
    try:
        reports = json.loads((Path(directory) / REPORTS_FILE).read_text())
    except (OSError, ValueError):  # older checkpoints have none; a damaged one is not worth a failure
        return []
    return [r for r in reports if isinstance(r, dict)] if isinstance(reports, list) else []


def _meta_status(directory: Path) -> str | None:
    try:
        return json.loads((Path(directory) / "meta.json").read_text()).get("status")
    except (OSError, ValueError, AttributeError):
        return None


def _run_checkpoints(run_dir: Path, skip: set[str] = frozenset()) -> list[Path]:
    """Every persisted `checkpoint_*` directory of a Train run, newest first (Train's two and any a kill left
    outside its books)."""
    if not run_dir.is_dir():
        return []
    return sorted((d for d in run_dir.glob("checkpoint_*") if d.is_dir() and d.name not in skip), reverse=True)


def started_models(train_dir: Path, experiment: str, packs: list[dict], ledger: Path | None = None) -> dict[str, str]:
    """{model key: pack key} of every model a pack had started, recovered from disk: the generation's PackQueue
    ledger (every claim, in order) and every persisted checkpoint of each pack (over, failed, or with a
    directory). On --resume what a pack had started stays its own (PackQueue); the first claim wins."""
    claimed = read_ledger(ledger) if ledger is not None else {}
    for p in packs:
        for ckpt in _run_checkpoints(train_dir / run_name(experiment, p["key"])):
            info = read_pack_file(ckpt)
            started = list(info.get("over") or []) + list(info.get("failed") or {}) + \
                [d.name for d in ckpt.iterdir() if d.is_dir()]
            for key in started:
                claimed.setdefault(key, p["key"])
    return claimed


def resume_point(given: Path, run_dir: Path, shown: str, tag: str, sub: str = "") -> tuple[Path | None, str | None]:
    """Where a restarted model continues: (checkpoint directory, or None for epoch 0; warning line or None).

    `given` is the model's directory in Train's latest checkpoint, local (`shown`: the checkpoint's persisted
    path; `sub`: the model's sub-directory in a pack checkpoint). It is used when it loads
    (crnn_ray.train.checkpoint.load_train_state: meta, weights, state) and no other `checkpoint_*` directory of
    the same Train run under `run_dir` holds an intact one of a later epoch (a kill can leave a checkpoint
    persisted but unregistered). When it does not load: the newest intact one of the others (local or
    shared-filesystem storage; Train keeps two), else none — with one warning line either way, never a retry.
    A model `given` does not hold at all is looked for in the others, without a warning.
    """
    present = given.is_dir()
    problem = unusable(given) if present else None
    skip = {Path(shown).name, (given.parent if sub else given).name}
    floor = _checkpoint_epoch(given) if present and problem is None else -1
    others = sorted(((_checkpoint_epoch(d / sub), d.name, d / sub) for d in _run_checkpoints(run_dir, skip)
                     if (d / sub).is_dir()), reverse=True)
    line = f"{tag}: checkpoint {shown}{'/' + sub if sub else ''} is corrupt ({problem}); " if problem else None
    for epoch, name, directory in others:
        if epoch <= floor:
            break
        if unusable(directory) is None:
            return directory, (line + f"resuming from {name} (epoch {epoch})" if line else None)
    if line:
        return None, line + "no intact checkpoint: restarting from epoch 0"
    return (given if present else None), None


def unusable(directory: Path) -> str | None:
    """Why a checkpoint directory cannot be resumed from (one short line), or None when it loads."""
    from crnn_ray.train.checkpoint import load_train_state

    try:
        load_train_state(directory)
    except CliError as exc:
        return str(exc).replace(f"{directory}{os.sep}", "")
    except Exception as exc:  # noqa: BLE001 - any failure to read it is a reason not to resume from it
        return f"{type(exc).__name__}: {str(exc).splitlines()[0][:120] if str(exc) else ''}"
    return None


def _checkpoint_epoch(directory: str) -> int:
    try:
        return int(json.loads((Path(directory) / "meta.json").read_text()).get("epoch") or 0)
    except (OSError, ValueError):
        return 0
