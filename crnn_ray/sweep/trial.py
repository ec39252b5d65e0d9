"""One trial = one Ray Train run, driven from a Tune function trainable ("Train-in-Tune", Train V2).

Why this shape: Tune owns the grid, the scheduler and trial-level retries; Train owns placement of the one
worker on a (node, GPU) with its CPU grant, worker restarts from the last checkpoint, and checkpoint
persistence. The Tune trainable (`trial_driver`) holds no CPU or GPU (only a little memory); it builds a
TorchTrainer whose single worker runs `train_worker`, which calls the plain-PyTorch `train_one`.

A Train run is named `<experiment>-<trial key>` under `<experiment dir>/train/`, so a trial that Tune reruns
(or an experiment resumed with `--resume`) picks up the same run and continues from its last checkpoint.
"""

from __future__ import annotations

import json
import math
import os
import shutil
import tempfile
from dataclasses import dataclass
from pathlib import Path

from ray import tune

from crnn_ray.io import CliError
from crnn_ray.sweep import ray_compat


# ------------------------------------------------------------------------------------------------ placement
@dataclass
class Placement:
    """What each trial asks the cluster for, decided once from the config and the cluster."""

    cpus_per_trial: float
    gpus_per_trial: float
    max_concurrent_trials: int
    cpu_quota: bool = True
    driver_memory_mb: int = 256
    cluster: str = ""                       # one line: what the cluster offers

    @property
    def use_gpu(self) -> bool:
        return self.gpus_per_trial > 0

    @property
    def threads(self) -> int:
        """The worker's torch thread quota: its CPU grant, at least one thread."""
        return max(1, math.ceil(self.cpus_per_trial - 1e-9))

    def worker_resources(self) -> dict:
        res = {"CPU": float(self.cpus_per_trial)}
        if self.gpus_per_trial > 0:
            res["GPU"] = float(self.gpus_per_trial)
        return res


def cluster_nodes() -> tuple[list[dict], list[tuple[dict, int]]]:
    """(resources of each alive node, [(resources, max_count)] of the autoscaler's node types, if any).

    Node types come from the autoscaler v2 cluster-config record (KubeRay, local fake clusters) or, on a
    cluster-launcher head (autoscaler v1 publishes no such record), from its ~/ray_bootstrap_config.yaml:
    a sweep submitted with `ray job submit` runs its driver on the head, where that file lives.
    """
    import ray

    nodes = [dict(n.get("Resources") or {}) for n in ray.nodes() if n.get("Alive")]
    node_types = ray_compat.autoscaler_node_types()
    if not node_types:
        node_types = launcher_node_types(Path(os.path.expanduser("~/ray_bootstrap_config.yaml")))
    return nodes, node_types


def launcher_node_types(path: Path) -> list[tuple[dict, int]]:
    """[(resources, max_workers)] of the worker node types in a cluster-launcher config; [] if none is there."""
    if not path.is_file():
        return []
    try:
        import yaml

        config = yaml.safe_load(path.read_text()) or {}
        types = config.get("available_node_types") or {}
        head = config.get("head_node_type")
        return [({k: float(v) for k, v in (t.get("resources") or {}).items()}, int(t.get("max_workers", 0)))
                for name, t in types.items() if name != head]
    except Exception:  # unreadable: fall back to the alive nodes only
        return []


def _slots(node: dict, cpus: float, gpus: float) -> int:
    """How many trial workers fit on one node of these resources."""
    by_cpu = math.floor(node.get("CPU", 0.0) / cpus + 1e-9)
    if gpus <= 0:
        return by_cpu
    return min(by_cpu, math.floor(node.get("GPU", 0.0) / gpus + 1e-9))


def _describe(res: dict) -> str:
    return "{" + ", ".join(f"{k}: {res.get(k, 0):g}" for k in ("CPU", "GPU") if k in res or k == "CPU") + "}"


def plan_placement(resources, n_trials: int, nodes: list[dict], node_types: list[tuple[dict, int]],
                   source: str = "config.yaml") -> Placement:
    """Resolve `auto` values and check that one trial's worker fits on some node, now or after autoscaling.

    Fails fast with a CliError naming the key: Train V2 would otherwise wait for resources that never come.
    """
    total_gpus = sum(n.get("GPU", 0.0) for n in nodes)
    scalable_gpus = any(t.get("GPU", 0.0) > 0 and count != 0 for t, count in node_types)
    gpus = resources.gpus_per_trial
    if gpus == "auto":
        gpus = 1.0 if (total_gpus > 0 or scalable_gpus) else 0.0
    cpus = float(resources.cpus_per_trial)
    need = {"CPU": cpus, **({"GPU": float(gpus)} if gpus > 0 else {})}
    offered = [n for n in nodes] + [t for t, count in node_types if count != 0]
    if not any(_slots(n, cpus, gpus) >= 1 for n in offered):
        largest = max(offered, key=lambda n: (n.get("GPU", 0.0), n.get("CPU", 0.0)), default={})
        key = "resources.gpus_per_trial" if gpus > 0 and largest.get("GPU", 0.0) < gpus else "resources.cpus_per_trial"
        raise CliError(
            f"{source}: {key}: a trial needs {_describe(need)} on one node, but no node of the cluster"
            f"{' or its autoscaler node types' if node_types else ''} has that "
            f"(largest: {_describe(largest)}; {len(nodes)} node(s), {total_gpus:g} GPU(s) in all)")
    slots = sum(_slots(n, cpus, gpus) for n in nodes)
    for t, count in node_types:
        if count == -1:
            slots = max(slots, n_trials)
        elif count > 0:
            slots += _slots(t, cpus, gpus) * count
    if resources.max_concurrent_trials == "auto":
        concurrent = max(1, min(slots, n_trials))
    else:
        concurrent = int(resources.max_concurrent_trials)
    cluster = (f"{len(nodes)} node(s), {sum(n.get('CPU', 0.0) for n in nodes):g} CPU(s), {total_gpus:g} GPU(s)"
               + (f", autoscaler node types: {len(node_types)}" if node_types else ""))
    return Placement(cpus_per_trial=cpus, gpus_per_trial=float(gpus), max_concurrent_trials=concurrent,
                     cpu_quota=bool(getattr(resources, "cpu_quota", True)),
                     driver_memory_mb=int(resources.driver_memory_mb), cluster=cluster)


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

    @property
    def train_storage(self) -> str:
        return str(Path(self.experiment_dir) / "train")


def run_name(experiment: str, trial_key: str) -> str:
    return f"{experiment}-{trial_key}"


# ------------------------------------------------------------------------------------------- Tune trainable
class TrialProgress(tune.Callback):
    """One line per trial start / end / error (the workers print one line per epoch)."""

    @staticmethod
    def _tag(trial) -> str:
        t = trial.config["trial"]
        grid = " ".join(f"{k}={v}" for k, v in t.get("grid", {}).items())
        return f"{t['key']} {t['variant_id']} seed {t['seed']}{' ' + grid if grid else ''}"

    def on_trial_start(self, iteration, trials, trial, **info):
        print(f"[sweep] started {self._tag(trial)}", flush=True)

    def on_trial_complete(self, iteration, trials, trial, **info):
        r = trial.last_result or {}
        ic = r.get("valid_ic")
        ic = f", valid IC {ic:+.4f}" if isinstance(ic, float) and math.isfinite(ic) else ""
        print(f"[sweep] finished {self._tag(trial)}: {r.get('status', '?')}{ic}", flush=True)

    def on_trial_error(self, iteration, trials, trial, **info):
        print(f"[sweep] error in {self._tag(trial)}; see {trial.local_path}", flush=True)


def trial_driver(config: dict, ctx: TrialContext) -> None:
    """Tune function trainable: run this trial's Train run; its reports reach Tune via TuneReportCallback."""
    from ray.train import CheckpointConfig, FailureConfig, LoggingConfig, RunConfig, ScalingConfig
    from ray.train.torch import TorchConfig, TorchTrainer
    from ray.tune.integration.ray_train import TuneReportCallback

    trial = config["trial"]
    ray_compat.configure_train_driver(ctx.start_timeout_s)
    p = ctx.placement
    trainer = TorchTrainer(
        train_worker,
        train_loop_config={"trial": trial, "ctx": ctx},
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
def train_worker(loop_config: dict) -> None:
    """The Ray Train worker: quota first, then train_one with one report (and checkpoint) per epoch.

    Each report is the epoch's metrics (they carry the best epoch's metrics as `best_*`, the status and the
    reason), stamped with where the worker ran: the trial's last report alone makes its trials.parquet row.
    """
    trial: dict = loop_config["trial"]
    ctx: TrialContext = loop_config["ctx"]
    p = ctx.placement

    from crnn_ray.train import CpuSampler, apply_cpu_quota  # torch is already imported by Ray Train here

    # cpu_quota false: the seed report's setting, torch free to use every core of the node
    quota = apply_cpu_quota(p.threads if p.cpu_quota else (os.cpu_count() or 1))

    import ray
    import ray.train
    import ray.train.torch
    import torch

    from crnn_ray.data import Splits
    from crnn_ray.train import TrainConfig, train_one

    ray_compat.quiet_train_report_log()
    panel = ray.get(ctx.panel_refs[0])
    splits = Splits(**{k: tuple(v) if isinstance(v, (list, tuple)) else v for k, v in ctx.splits.items()})
    cfg = TrainConfig(**trial["train_config"])
    device = ray.train.torch.get_device() if torch.cuda.is_available() else torch.device("cpu")
    checkpoint = ray.train.get_checkpoint()
    resumed_from = 0
    # `worker_` prefixes: Tune stamps every result with its own pid / node_ip (the trial driver's)
    where = {
        "trial_id": trial["key"],
        "worker_node_ip": ray.util.get_node_ip_address(),
        "worker_node_id": ray.get_runtime_context().get_node_id(),
        "gpu_ids": json.dumps([str(g) for g in ray.get_gpu_ids()]),
        "device": str(device),
        "worker_pid": os.getpid(),
        "cpu_quota": float(p.cpus_per_trial) if p.cpu_quota else 0.0,
        "quota_threads": int(quota["threads"]),
    }

    def on_epoch(metrics: dict, checkpoint_dir: Path) -> None:
        # the sampler's `threads` is the worker's OS thread count (Ray's threads included); `threads` in the
        # report is torch's, the quota
        metrics = {**metrics, **where, "os_threads": metrics.get("threads"), "threads": torch.get_num_threads(),
                   "resumed_from_epoch": resumed_from}
        ray.train.report(metrics, checkpoint=ray.train.Checkpoint.from_directory(str(checkpoint_dir)))

    workdir = Path(tempfile.mkdtemp(prefix=f"crnn_{trial['key']}_"))
    meta_extra = {"variant_id": trial["variant_id"], "trial_id": trial["key"], "experiment": ctx.experiment}
    train = lambda resume_dir=None: train_one(  # noqa: E731
        trial["spec"], panel, splits, cfg, device=device, resume_from=resume_dir, on_epoch=on_epoch,
        workdir=workdir, sampler=CpuSampler(), meta_extra=meta_extra)
    try:
        if checkpoint is None:
            train()
        else:
            with checkpoint.as_directory() as given:
                # a corrupt checkpoint is not retried (every restart would fail the same way): one line, then
                # the newest intact older checkpoint of this Train run, or epoch 0
                resume_dir, warning = resume_point(
                    Path(given), Path(ctx.train_storage) / run_name(ctx.experiment, trial["key"]),
                    str(checkpoint.path), f"[{trial['variant_id']}] {trial['key']}")
                resumed_from = _checkpoint_epoch(resume_dir) if resume_dir is not None else 0
                print(warning or f"[{trial['variant_id']}] resuming {trial['key']} from epoch {resumed_from} "
                                 f"({checkpoint.path})", flush=True)
                train(resume_dir)
    finally:
        shutil.rmtree(workdir, ignore_errors=True)


def resume_point(given: Path, run_dir: Path, shown: str, tag: str) -> tuple[Path | None, str | None]:
    """Where a restarted worker continues: (checkpoint directory, or None for epoch 0; warning line or None).

    `given` is Train's latest checkpoint as a local directory (`shown`: its persisted path). It is used when
    it loads (crnn_ray.train.checkpoint.load_train_state: meta, weights, state). Otherwise the newest intact
    other `checkpoint_*` directory of the same Train run under `run_dir` (local or shared-filesystem storage;
    Train keeps two), else none — with one warning line either way, never a retry of the same file.
    """
    problem = _unusable(given)
    if problem is None:
        return given, None
    skip = {Path(shown).name, given.name}
    older = [(_checkpoint_epoch(d), d.name, d) for d in sorted(run_dir.glob("checkpoint_*"))
             if d.is_dir() and d.name not in skip and _unusable(d) is None] if run_dir.is_dir() else []
    line = f"{tag}: checkpoint {shown} is corrupt ({problem}); "
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
