"""Where the predictor runs: in this process (small jobs) or on Ray Data actors (large ones), with one result.

    choose_path    in-process for small jobs (Ray Data's start-up costs seconds), else Ray Data
    predict_rows   a window plan's raw member predictions [D, S, K] on the chosen path, with timing figures

Both paths run the same EnsemblePredictor on the same fixed chunks, so they agree bit for bit. Ray is imported
only on the Ray Data path (a GPU box without Ray scores in-process).
"""

from __future__ import annotations

import os
import sys
import time

import numpy as np
import pyarrow as pa

from crnn_ray.console import Progress
from crnn_ray.io import CliError
from crnn_ray.ray_compat import quiet_init_kwargs
from crnn_ray.score.config import ScoreConfig
from crnn_ray.score.plan import WindowPlan
from crnn_ray.score.predict import CHUNK_ROWS, EnsemblePredictor

__all__ = ["choose_path", "predict_in_process", "predict_ray", "predict_rows"]


def choose_path(plan: WindowPlan, requested: str, cfg: ScoreConfig) -> tuple[str, str]:
    """(path, why): a forced path; else in-process for small jobs (Ray Data's start-up costs seconds) and for
    jobs on this machine alone; Ray Data for large jobs with a Ray cluster to spread over.

    On one machine both paths run the same predictor on the same cores, and Ray Data adds its executor, the
    actors' start and the batches' trips through the object store: at ~1M rows on one 2-CPU node it reached
    0.74-0.81 of the members' forward-pass bound where in-process reached 0.99 (bench/score_bench.py,
    docs/scoring.md). It pays where the cluster has more CPUs or GPUs than this process can use.
    """
    if requested not in ("auto", "in_process", "ray"):
        raise CliError(f"score config: path {requested!r} unknown (auto | in_process | ray)")
    if requested != "auto":
        return requested, "forced"
    n_days, n_rows = plan.n_dates, plan.n_rows
    max_days, max_rows = int(cfg.in_process_max_days), int(cfg.in_process_max_rows)
    if n_days <= max_days:
        return "in_process", f"auto: {n_days} dates <= in_process_max_days {max_days}"
    if n_rows <= max_rows:
        return "in_process", f"auto: {n_rows:,} rows <= in_process_max_rows {max_rows:,}"
    if not _has_cluster(cfg):
        return "in_process", (f"auto: {n_rows:,} rows on this machine alone (no Ray cluster to join: ray.address "
                              "and RAY_ADDRESS unset), where in-process runs at the forward-pass bound and Ray Data "
                              "below it")
    return "ray", f"auto: {n_days} dates > {max_days} and {n_rows:,} rows > {max_rows:,} on a Ray cluster"


def _has_cluster(cfg: ScoreConfig) -> bool:
    """A Ray cluster to spread the job over: an address to join, or a Ray this process is already connected to
    (a notebook's, a test's). Ray is not imported for the question."""
    if cfg.ray.address or os.environ.get("RAY_ADDRESS"):
        return True
    ray = sys.modules.get("ray")
    return bool(ray is not None and hasattr(ray, "is_initialized") and ray.is_initialized())


def _predictor_kwargs(plan: WindowPlan, cfg: ScoreConfig) -> dict:
    chunk = cfg.chunk_rows  # "auto": each predictor picks its device's size (predict.CHUNK_ROWS)
    return {"members": plan.payloads, "inputs": plan.inputs, "chunk_rows": chunk if chunk == "auto" else int(chunk)}


def _batch_rows(cfg: ScoreConfig) -> int:
    """Rows per Ray Data batch: a multiple of the chunk (with "auto", of every device's, so CPU and GPU actors
    both cut it into whole chunks)."""
    chunk = max(CHUNK_ROWS.values()) if cfg.chunk_rows == "auto" else int(cfg.chunk_rows)
    return max(chunk, int(cfg.batch_rows) // chunk * chunk)


def _empty_grid(plan: WindowPlan) -> np.ndarray:
    """float32 [D, S, K], NaN: the prediction grid before any row is scored."""
    return np.full((len(plan.dates), len(plan.symbols), len(plan.predicted)), np.nan, dtype=np.float32)


def predict_in_process(plan: WindowPlan, cfg: ScoreConfig) -> np.ndarray:
    """The predictor over every scored row in this process -> [D, S, K].

    One call: the predictor cuts the rows into the same fixed chunks as the Ray Data batches (a multiple of
    chunk_rows), so both paths give the same values."""
    return _predict_in_process(plan, cfg)[0]


def _member_rates(plan: WindowPlan, member_seconds: np.ndarray) -> dict[str, float]:
    """rows/s of each member's forward passes alone: which member the scoring time goes to."""
    return {m.name: plan.n_rows / max(float(s), 1e-9) for m, s in zip(plan.predicted, member_seconds)}


def _usable_cpus() -> int:
    try:
        return len(os.sched_getaffinity(0))  # what this process may run on (a container's or taskset's share)
    except AttributeError:  # pragma: no cover - not on Linux
        return os.cpu_count() or 1


def _predict_in_process(plan: WindowPlan, cfg: ScoreConfig) -> tuple[np.ndarray, dict]:
    """(grid, timing figures): chunks on one worker thread per usable CPU, each op single-threaded (see
    EnsemblePredictor's `workers`: torch's own threads stall each other on a shared machine)."""
    predictor = EnsemblePredictor(**_predictor_kwargs(plan, cfg), device=str(cfg.device),
                                  workers=_usable_cpus())
    grid = _empty_grid(plan)
    grid[plan.cells] = predictor.predict_indices(plan.days, plan.stocks, Progress("score", plan.n_rows).add)
    return grid, {"member_rows_per_s": _member_rates(plan, predictor.member_seconds),
                  "chunk_rows": predictor.chunk_rows, "device": predictor.device.type,
                  "workers": min(predictor.workers, -(-plan.n_rows // predictor.chunk_rows))}


class _SharedPredictor:
    """Ray Data actor: an EnsemblePredictor on the object store's one copy of the features and weights.

    The driver ray.put()s them once; the reference arrives wrapped in a list, so Ray hands it over as is
    (instead of resolving it into each actor's constructor arguments) and the actor reads the shared copy.
    """

    def __init__(self, shared: list, device: str, threads: int):
        import ray  # a Ray Data actor: Ray is there

        self.predictor = EnsemblePredictor(**ray.get(shared[0]), device=device, threads=threads)

    def __call__(self, batch: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
        """The predictions plus `_seconds_<k>`: member k's forward time on this batch spread over its rows
        (summed over every batch by the driver: the per-member figures of the log line)."""
        before = self.predictor.member_seconds.copy()
        out = self.predictor(batch)
        n = max(1, len(out["day"]))
        for k, spent in enumerate(self.predictor.member_seconds - before):
            out[f"_seconds_{k}"] = np.full(len(out["day"]), spent / n)
        return out


def predict_ray(plan: WindowPlan, cfg: ScoreConfig) -> tuple[np.ndarray, dict]:
    """Ray Data: blocks of (day, stock) indices -> map_batches(predictor actors) -> scattered into [D, S, K]."""
    import ray  # optional: only the Ray Data path needs it (a GPU box without Ray scores in-process)

    rcfg = cfg.ray
    connected_here = not ray.is_initialized()  # a caller's Ray (tests, a notebook) is left as it was
    if connected_here:
        address = rcfg.address or os.environ.get("RAY_ADDRESS")
        if address:  # a cluster (e.g. under `ray job submit`): join it, disconnect at the end
            ray.init(**quiet_init_kwargs(address=address, log_to_driver=False))
        else:  # "local": never attach to somebody else's Ray on this machine
            ray.init(**quiet_init_kwargs(address="local", num_cpus=rcfg.num_cpus, include_dashboard=False,
                                         log_to_driver=False))
    names = [m.name for m in plan.predicted]
    grid = _empty_grid(plan)
    hit = np.zeros(grid.shape[:2], dtype=bool)
    returned = 0
    member_seconds = np.zeros(len(names))  # summed over the actors: per-actor member throughput
    try:
        resources = ray.cluster_resources()
        cpus, gpus = float(resources.get("CPU", 1)), float(resources.get("GPU", 0))
        actor_cpus = float(rcfg.actor_cpus)
        if gpus >= 1:
            actors = int(gpus // float(rcfg.gpus_per_actor)) if rcfg.actors is None else int(rcfg.actors)
            remote = {"num_cpus": actor_cpus, "num_gpus": float(rcfg.gpus_per_actor)}
            device = "cuda"
        else:
            actors = int(rcfg.actors) if rcfg.actors is not None else \
                min(8, max(1, int((cpus - 1) // actor_cpus)))
            remote = {"num_cpus": actor_cpus}
            device = "cpu"
        batch = _batch_rows(cfg)
        starts = range(0, plan.n_rows, batch)
        actors = max(1, min(actors, len(starts)))  # no idle actors on a small job
        ctx = ray.data.DataContext.get_current()
        ctx.enable_progress_bars = False
        shared = ray.put(_predictor_kwargs(plan, cfg))  # the features and weights, once for every actor
        # one block per batch, so the pool shares the work
        blocks = [pa.table({"day": plan.days[i:i + batch], "stock": plan.stocks[i:i + batch]}) for i in starts]
        ds = ray.data.from_arrow(blocks).map_batches(
            _SharedPredictor,
            fn_constructor_kwargs={"shared": [shared], "device": device, "threads": max(1, int(actor_cpus))},
            batch_size=batch, batch_format="numpy", compute=ray.data.ActorPoolStrategy(size=actors), **remote,
        )
        progress = Progress("score", plan.n_rows)  # Ray Data's own progress bars are off (they flood a log)
        for out in ds.iter_batches(batch_size=None, batch_format="numpy"):  # any order: each row knows its cell
            cells = (out["day"] - plan.first_day, out["stock"])
            grid[cells] = np.column_stack([out[n] for n in names])
            hit[cells] = True
            returned += len(out["day"])
            member_seconds += [float(out[f"_seconds_{k}"].sum()) for k in range(len(names))]
            progress.add(len(out["day"]))
    finally:
        if connected_here:
            ray.shutdown()
    if returned != plan.n_rows or int(hit.sum()) != plan.n_rows:
        raise RuntimeError(f"scoring returned {returned} rows for {plan.n_rows} scored rows")
    return grid, {"actors": actors, **remote, "cluster_cpus": cpus, "cluster_gpus": gpus,
                  "member_rows_per_s": _member_rates(plan, member_seconds)}


def predict_rows(plan: WindowPlan, path: str, cfg: ScoreConfig) -> tuple[np.ndarray, dict]:
    """Raw member predictions [D, S, K] (NaN where not scored) on the chosen path, with timing figures."""
    t0 = time.perf_counter()
    if path == "ray":
        preds, info = predict_ray(plan, cfg)
    else:
        preds, info = _predict_in_process(plan, cfg)
    seconds = time.perf_counter() - t0
    finite = np.isfinite(preds[plan.cells]).all(axis=0)
    if not finite.all():
        bad = plan.predicted[int(np.flatnonzero(~finite)[0])]
        raise CliError(f"member {bad.name} predicts non-finite values on {plan.period[0]}..{plan.period[1]} "
                       f"(checkpoint {bad.checkpoint})")
    return preds, {"path": path, "seconds": seconds, "rows_per_s": plan.n_rows / max(seconds, 1e-9), **info}
