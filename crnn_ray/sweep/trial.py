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
(crnn_ray/train/checkpoint.py) and `pack.json` (which models are over). Every checkpoint carries the finished
models' final directories, so the newest one (Train keeps two) holds the whole pack: a restarted worker skips
the finished models and resumes the first unfinished one from its last epoch.

A Train run is named `<experiment>-<pack key>` under `<experiment dir>/train/` (a one-model pack's key is its
model's, `t000`), so a trial that Tune reruns (or an experiment resumed with `--resume`) picks up the same run.

    trial_driver     the Tune trainable: one TorchTrainer per pack (runs in a Tune trial actor)
    train_worker     the Train worker: each model of the pack in turn, a report and a pack checkpoint per epoch
    PackState        which models of a pack are over, where the first unfinished one resumes (`resume_point`)
    TrialProgress    the driver's one line per trial event

The Tune trial actor imports this module to hand `train_worker` to Train, so the training code itself
(crnn_ray.train, crnn_ray.data) is imported in the functions the Train worker runs, never here.
"""

from __future__ import annotations

import json
import math
import os
import shutil
import tempfile
import time
from contextlib import nullcontext
from dataclasses import dataclass
from pathlib import Path

import ray
import ray.train
import ray.train.torch
import torch
from ray import tune
from ray.train import CheckpointConfig, FailureConfig, LoggingConfig, RunConfig, ScalingConfig
from ray.train.torch import TorchConfig
from ray.tune.integration.ray_train import TuneReportCallback

from crnn_ray import ray_compat
from crnn_ray.io import CliError
from crnn_ray.sweep.placement import Placement, pack_models


# ------------------------------------------------------------------------------------------ shared context
@dataclass
class TrialContext:
    """What every trial of one sweep shares (passed once through tune.with_parameters); what differs per
    trial (spec, seed, its whole TrainConfig) travels in the trial's own Tune config."""

    experiment: str                         # the sweep's name (prefix of every Train run name)
    experiment_dir: str                     # absolute DIR/NAME
    panel_refs: list                        # [ObjectRef of the Panel]: a list so Tune does not resolve it
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
        from crnn_ray.data import Splits

        fields = self.splits if trial.get("window") is None or not self.window_splits \
            else self.window_splits[int(trial["window"])]
        return Splits(**{k: tuple(v) if isinstance(v, (list, tuple)) else v for k, v in fields.items()})

    @property
    def train_storage(self) -> str:
        return str(Path(self.experiment_dir) / "train")


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


def trial_driver(config: dict, ctx: TrialContext) -> None:
    """Tune function trainable: run this trial's Train run; its reports reach Tune via TuneReportCallback."""
    driver_t0 = time.time()  # the Tune trainable entered: the rest of the start-up is Train's
    trial = config["trial"]
    ray_compat.configure_train_driver(ctx.start_timeout_s, ctx.private_ray)
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
    trainer.fit()


# -------------------------------------------------------------------------------------------- Train worker
PACK_FILE = "pack.json"


def train_worker(loop_config: dict) -> None:
    """The Ray Train worker: quota first (once), then train_one for each unfinished model of the pack, one
    report (and checkpoint) per epoch.

    Each report is one model's epoch metrics under its own `trial_key` (Tune overwrites `trial_id` with its own) (they carry its best epoch's metrics as
    `best_*`, the status and the reason), stamped with where the worker ran: a model's last report alone makes
    its trials.parquet row. A model that raises gets one `failed` report and the pack goes on.
    """
    worker_t0 = time.time()  # wall clock (comparable across a node's processes): the sweep's time split
    pack: dict = loop_config["trial"]
    ctx: TrialContext = loop_config["ctx"]
    p = ctx.placement

    # The training code loads here, in the Train worker: the Tune trainable imports this module too (to hand
    # this function to Train) and stays lean. torch is already imported by Ray Train here.
    from crnn_ray.train import CpuSampler, TrainConfig, apply_cpu_quota, train_one

    # cpu_quota false: the seed report's setting, torch free to use every core of the node
    quota = apply_cpu_quota(p.threads if p.cpu_quota else (os.cpu_count() or 1))
    ray_compat.quiet_train_report_log()
    panel = ray.get(ctx.panel_refs[0])
    device = ray.train.torch.get_device() if torch.cuda.is_available() else torch.device("cpu")
    models = pack_models(pack)
    run_dir = Path(ctx.train_storage) / run_name(ctx.experiment, pack["key"])
    where = _where(pack, p, quota, device, worker_t0, loop_config.get("driver_t0"))
    workdir = Path(tempfile.mkdtemp(prefix=f"crnn_{pack['key']}_"))
    try:
        checkpoint = ray.train.get_checkpoint()
        with checkpoint.as_directory() if checkpoint is not None else nullcontext(None) as given:
            state = PackState.restore(Path(given) if given else None, workdir, models, run_dir,
                                      str(checkpoint.path) if checkpoint is not None else "")
        sampler = CpuSampler()
        for i, trial in enumerate(_pack_order(state, ctx.queue, pack["key"])):
            tag = f"[{trial['variant_id']}] {trial['key']}"
            if len(models) > 1 or ctx.queue is not None:
                taken = " (taken over: no pack had started it)" if trial["key"] in state.stolen_keys else ""
                print(f"[pack {pack['key']}] model {i + 1} ({len(models)} dealt): {trial['key']} "
                      f"{trial['variant_id']} seed {trial['seed']}{taken}", flush=True)
            resume_dir, resumed_from = state.resume.get(trial["key"], (None, 0))
            if trial["key"] in state.lines:
                print(state.lines[trial["key"]], flush=True)
            elif resume_dir is not None:
                print(f"{tag}: resuming from epoch {resumed_from} ({state.shown})", flush=True)
            stamp = {**where, "trial_key": trial["key"], "resumed_from_epoch": resumed_from,
                     "model_t0": time.time()}

            def on_epoch(metrics: dict, checkpoint_dir: Path, trial=trial, stamp=stamp) -> None:
                # train_one reports `threads` (torch's: the quota) and `os_threads` (the worker's, Ray's included)
                metrics = {**metrics, **stamp, "report_t": time.time()}
                over = metrics.get("status") != "running"
                _report(metrics, state.stage(workdir, trial["key"], checkpoint_dir, over))

            try:
                result = train_one(
                    trial["spec"], panel, ctx.splits_of(trial), TrainConfig(**trial["train_config"]), device=device,
                    resume_from=resume_dir, on_epoch=on_epoch, workdir=workdir / "run" / trial["key"],
                    sampler=sampler, meta_extra={"variant_id": trial["variant_id"], "trial_id": trial["key"],
                                                 "experiment": ctx.experiment,
                                                 **({"window": int(trial["window"]), "line": trial["line"]}
                                                    if trial.get("window") is not None else {})})
            except Exception as exc:  # noqa: BLE001 - one model's failure must not end its pack
                reason = f"{type(exc).__name__}: {str(exc).splitlines()[0] if str(exc) else ''}"[:300]
                print(f"{tag}: failed: {reason}", flush=True)
                state.failed[trial["key"]] = reason
                _report({**stamp, "status": "failed", "reason": reason, "report_t": time.time()},
                        state.stage(workdir, trial["key"], None, True))
                continue
            if result.checkpoint_dir is not None and trial["key"] not in state.over:
                # resumed into an already finished run (train_one reports nothing then): carry it as it is
                state.keep(workdir, trial["key"], result.checkpoint_dir)
            shutil.rmtree(workdir / "run" / trial["key"], ignore_errors=True)
    finally:
        shutil.rmtree(workdir, ignore_errors=True)


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
    shares the work: one another pack has taken is skipped), then, one at a time, the longest model no pack has
    started (added to the pack's checkpoint, so a restarted worker finishes it)."""
    for trial in list(state.models):
        if trial["key"] in state.over:
            continue
        if queue is not None and not ray.get(queue.claim.remote(pack_key, trial["key"])):
            continue
        yield trial
    while queue is not None:
        trial = ray.get(queue.steal.remote(pack_key))
        if trial is None:
            return
        state.models.append(trial)
        state.stolen.append(trial)
        yield trial


def _report(metrics: dict, directory: Path) -> None:
    ray.train.report(metrics, checkpoint=ray.train.Checkpoint.from_directory(str(directory)))


class PackState:
    """Which models of a pack are over (their final checkpoint directories, kept locally) and where the first
    unfinished one resumes; builds each epoch's pack checkpoint directory."""

    def __init__(self, models: list[dict]):
        self.models = list(models)               # dealt to this pack, then those it took over (`stolen`)
        self.stolen: list[dict] = []
        self.over: dict[str, Path] = {}          # finished (ok / diverged) model key -> its final directory
        self.failed: dict[str, str] = {}         # model key -> reason (raised; nothing to carry)
        self.resume: dict[str, tuple[Path, int]] = {}  # model key -> (directory to resume from, its epoch)
        self.lines: dict[str, str] = {}          # model key -> the corrupt-checkpoint warning line
        self.shown = ""

    @property
    def stolen_keys(self) -> set[str]:
        return {m["key"] for m in self.stolen}

    @classmethod
    def restore(cls, given: Path | None, workdir: Path, models: list[dict], run_dir: Path, shown: str):
        """From Train's latest checkpoint (None: a fresh start). Everything needed later is copied out, since
        Train deletes old checkpoints as new ones are reported."""
        state = cls(models)
        state.shown = shown
        if given is None:
            return state
        info = _read_pack_file(given)
        state.failed = dict(info.get("failed") or {})
        known = {m["key"] for m in state.models}
        state.stolen = [m for m in info.get("stolen") or [] if m.get("key") not in known]
        state.models += state.stolen
        for trial in state.models:
            key = trial["key"]
            if key in state.failed:
                state.over[key] = None  # type: ignore[assignment] - over, nothing to carry
                continue
            tag = f"[{trial['variant_id']}] {key}"
            if key in info.get("over", []):
                directory, line = resume_point(given / key, run_dir, shown, tag, sub=key)
                if directory is not None and line is None:
                    state.keep(workdir, key, directory)
                    continue
                # a finished model whose final files are damaged: train_one continues from what is intact
            elif not (given / key).is_dir():
                continue  # not started yet
            directory, line = resume_point(given / key, run_dir, shown, tag, sub=key)
            if line:
                state.lines[key] = line
            if directory is not None:
                local = workdir / "resume" / key
                shutil.copytree(directory, local)
                state.resume[key] = (local, _checkpoint_epoch(local))
            break  # models after the first unfinished one have not started
        return state

    def keep(self, workdir: Path, key: str, directory: Path) -> None:
        local = workdir / "over" / key
        if local.exists():
            shutil.rmtree(local)
        shutil.copytree(directory, local)
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
        (stage / PACK_FILE).write_text(json.dumps({
            "models": [m["key"] for m in self.models],
            "over": [k for k, d in self.over.items() if d is not None],
            "failed": self.failed,
            "stolen": self.stolen}))
        for old in workdir.glob("stage_*"):
            if old != stage:
                shutil.rmtree(old, ignore_errors=True)
        return stage


def _link_tree(src: Path, dst: Path) -> None:
    """Hard links where the filesystem allows (no bytes copied locally; Train copies once to storage)."""
    try:
        shutil.copytree(src, dst, copy_function=os.link)
    except OSError:
        shutil.rmtree(dst, ignore_errors=True)
        shutil.copytree(src, dst)


def _read_pack_file(directory: Path) -> dict:
    try:
        return json.loads((directory / PACK_FILE).read_text())
    except (OSError, ValueError):  # missing or damaged: every model's own files say how far it got
        return {}


def started_models(train_dir: Path, experiment: str, packs: list[dict]) -> dict[str, str]:
    """{model key: pack key} of every model a pack had started (over, failed, or with a directory), read from
    each pack's newest persisted checkpoint: on --resume what a pack had started stays its own (PackQueue)."""
    claimed: dict[str, str] = {}
    for p in packs:
        run_dir = train_dir / run_name(experiment, p["key"])
        newest = sorted(d for d in run_dir.glob("checkpoint_*") if d.is_dir())[-1:] if run_dir.is_dir() else []
        for ckpt in newest:
            info = _read_pack_file(ckpt)
            started = list(info.get("over") or []) + list(info.get("failed") or {}) + \
                [d.name for d in ckpt.iterdir() if d.is_dir()]
            claimed.update({k: p["key"] for k in started})
    return claimed


def resume_point(given: Path, run_dir: Path, shown: str, tag: str, sub: str = "") -> tuple[Path | None, str | None]:
    """Where a restarted model continues: (checkpoint directory, or None for epoch 0; warning line or None).

    `given` is the model's directory in Train's latest checkpoint, local (`shown`: the checkpoint's persisted
    path; `sub`: the model's sub-directory in a pack checkpoint). It is used when it loads
    (crnn_ray.train.checkpoint.load_train_state: meta, weights, state). Otherwise the newest intact model
    directory in the other `checkpoint_*` directories of the same Train run under `run_dir` (local or
    shared-filesystem storage; Train keeps two), else none — with one warning line either way, never a retry.
    """
    problem = _unusable(given)
    if problem is None:
        return given, None
    skip = {Path(shown).name, (given.parent if sub else given).name}
    older = [(_checkpoint_epoch(d / sub), d.name, d / sub) for d in sorted(run_dir.glob("checkpoint_*"))
             if d.is_dir() and d.name not in skip and _unusable(d / sub) is None] if run_dir.is_dir() else []
    line = f"{tag}: checkpoint {shown}{'/' + sub if sub else ''} is corrupt ({problem}); "
    if not older:
        return None, line + "no intact checkpoint: restarting from epoch 0"
    epoch, name, directory = max(older)
    return directory, line + f"resuming from {name} (epoch {epoch})"


def _unusable(directory: Path) -> str | None:
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
