"""Watching a sweep from its driver: the status line, one MLflow run and one TensorBoard series per model.

Every epoch report reaches the driver through Tune with its model key (`trial_key`); a pack is several models one
after another, so anything keyed by Tune's trial would chain them into one curve. `SweepMonitor` keys by model:

    status line   `[sweep] 7/24 models done (6 ok, 1 diverged), 3 running, 4m10s elapsed, ETA 6m05s` every
                  STATUS_EVERY_S and whenever a model ends. ETA: the remaining work at the rate measured so far
                  in this run (finished models and the epochs of running ones). A model's work is half a fixed
                  share (its start-up, data and checkpoints, which the probe does not time) and half its cost
                  probe estimate relative to the mean (crnn_ray.sweep.costs; its epochs without a probe).
    MLflow        crnn_ray.tracking.Tracker: a run per model nested under the sweep's run.
    TensorBoard   DIR/NAME/tensorboard/<model key>: one series per model, step = epoch.

The Tune callbacks hold no state (`MonitorCallback` forwards to the monitor installed with `watching`), because
`Tuner.restore` unpickles the callbacks it saved: a stateful callback would come back stale on --resume.
`NoTrialBoards` takes the place of Tune's own TensorBoard logger, whose per-trial curves chain a pack's models.
"""

from __future__ import annotations

import contextlib
import math
import time
from pathlib import Path
from typing import Iterator

from ray import tune
from ray.tune.logger import TBXLoggerCallback

from crnn_ray.console import PROGRESS_EVERY_S, duration
from crnn_ray.tracking import EPOCH_METRICS, Tracker

__all__ = ["SweepMonitor", "MonitorCallback", "NoTrialBoards", "watching", "model_params", "STATUS_EVERY_S"]

#: seconds between two status lines while nothing ends
STATUS_EVERY_S = PROGRESS_EVERY_S
#: statuses that end a model
FINAL = ("ok", "diverged", "failed")

_ACTIVE: list["SweepMonitor"] = []


def model_params(trial: dict) -> dict:
    """A model's MLflow params: what identifies it and its whole TrainConfig (`train.*`)."""
    out = {"model": trial["key"], "variant_id": trial["variant_id"], "spec": trial["spec"], "seed": trial["seed"]}
    if trial.get("window") is not None:
        out.update(window=int(trial["window"]), line=trial.get("line"))
    out.update({f"grid.{k}": v for k, v in (trial.get("grid") or {}).items()})
    out.update({f"train.{k}": v for k, v in (trial.get("train_config") or {}).items()})
    return out


def _weights(grid: dict[str, dict], costs: dict | None) -> dict[str, float]:
    """Each model's share of the sweep's work (see the module doc): 0.5 + 0.5 x cost / mean cost."""
    raw = {k: float(costs[k]) if costs and costs.get(k) else float(t["train_config"]["epochs"])
           for k, t in grid.items()}
    mean = sum(raw.values()) / len(raw) if raw else 1.0
    return {k: 0.5 + 0.5 * v / mean if mean > 0 else 1.0 for k, v in raw.items()}


class SweepMonitor:
    """The live state of one sweep run, fed every report (`report`) and the Tune loop's ticks (`tick`)."""

    def __init__(self, grid: list[dict], exp_dir: Path, *, costs: dict | None = None,
                 done: dict[str, str] | None = None, tracker: Tracker | None = None, tensorboard: bool = True,
                 every_s: float = STATUS_EVERY_S):
        self.grid = {t["key"]: t for t in grid}
        self.exp_dir, self.every_s = Path(exp_dir), every_s
        self.weights = _weights(self.grid, costs)
        self.done: dict[str, str] = {k: s for k, s in (done or {}).items() if k in self.grid}
        self.epochs: dict[str, int] = {}    # model key -> last epoch reported (running models)
        self.packs: set[str] = set()          # Tune trials (packs) running: each trains one model at a time
        self.tracker, self.tensorboard = tracker, tensorboard
        self.writers: dict = {}
        self.t0 = time.monotonic()
        self.work_at_start = self._work_done()
        self.last_line = self.t0

    # ---- reports --------------------------------------------------------------------------------------------
    def report(self, result: dict) -> None:
        key = result.get("trial_key")
        if key not in self.grid:
            return
        status, epoch = result.get("status"), result.get("epoch")
        if epoch is not None and epoch == epoch:
            self.epochs[key] = int(epoch)
        if self.tracker is not None:
            self.tracker.model_run(key, model_params(self.grid[key]), {"crnn_ray.variant": self.grid[key]["variant_id"]})
            self.tracker.log_epoch(key, result)
        if self.tensorboard and epoch is not None and epoch == epoch:
            self._board(key, result, int(epoch))
        if status in FINAL and key not in self.done:
            self.done[key] = status
            self.epochs.pop(key, None)
            if self.tracker is not None:
                self.tracker.end_model(key, status, str(result.get("reason") or ""),
                                       {k: result.get(k) for k in EPOCH_METRICS if k.startswith("best_")})
            self._close_board(key)
            self.print_status()

    def pack_started(self, key: str) -> None:
        self.packs.add(key)

    def pack_ended(self, key: str) -> None:
        self.packs.discard(key)

    def tick(self) -> None:
        if time.monotonic() - self.last_line >= self.every_s:
            self.print_status()

    # ---- the status line --------------------------------------------------------------------------------------
    def _work_done(self) -> float:
        done = sum(self.weights[k] for k in self.done)
        running = sum(self.weights[k] * min(1.0, e / max(1, int(self.grid[k]["train_config"]["epochs"])))
                      for k, e in self.epochs.items())
        return done + running

    def eta_s(self) -> float | None:
        """Seconds left at this run's measured rate of work; None before the first epoch of this run."""
        total, done = sum(self.weights.values()), self._work_done()
        elapsed = time.monotonic() - self.t0
        gained = done - self.work_at_start
        return (total - done) * elapsed / gained if gained > 0 and elapsed > 0 else None

    def status_line(self) -> str:
        counts = {s: sum(1 for v in self.done.values() if v == s) for s in FINAL}
        detail = ", ".join(f"{n} {s}" for s, n in counts.items() if n)
        eta = self.eta_s()
        left = len(self.grid) - len(self.done)
        return (f"[sweep] {len(self.done)}/{len(self.grid)} models done" + (f" ({detail})" if detail else "")
                + f", {min(max(len(self.epochs), len(self.packs)), left)} running, "
                f"{duration(time.monotonic() - self.t0)} elapsed"
                + ("" if left == 0 else f", ETA {duration(eta)}" if eta is not None and math.isfinite(eta)
                   else ", ETA after the first epoch"))

    def print_status(self) -> None:
        self.last_line = time.monotonic()
        print(self.status_line(), flush=True)

    # ---- TensorBoard ------------------------------------------------------------------------------------------
    def _board(self, key: str, result: dict, epoch: int) -> None:
        from tensorboardX import SummaryWriter  # deferred: only when TensorBoard is on

        writer = self.writers.get(key)
        if writer is None:
            writer = self.writers[key] = SummaryWriter(str(self.exp_dir / "tensorboard" / key), flush_secs=30)
        for name in EPOCH_METRICS:
            value = result.get(name)
            if isinstance(value, (int, float)) and not isinstance(value, bool) and math.isfinite(value):
                writer.add_scalar(name, float(value), epoch)

    def _close_board(self, key: str) -> None:
        writer = self.writers.pop(key, None)
        if writer is not None:
            writer.close()

    def close(self) -> None:
        for key in list(self.writers):
            self._close_board(key)


@contextlib.contextmanager
def watching(monitor: SweepMonitor) -> Iterator[SweepMonitor]:
    """Install `monitor` as the one MonitorCallback forwards to, for the block."""
    _ACTIVE.append(monitor)
    try:
        yield monitor
    finally:
        _ACTIVE.remove(monitor)
        monitor.close()


class MonitorCallback(tune.Callback):
    """Forwards Tune's results and loop ticks to the installed SweepMonitor (stateless: see the module doc)."""

    def on_trial_result(self, iteration, trials, trial, result, **info):
        if _ACTIVE:
            _ACTIVE[-1].report(result)

    def on_step_end(self, iteration, trials, **info):
        if _ACTIVE:
            _ACTIVE[-1].tick()

    def on_trial_start(self, iteration, trials, trial, **info):
        if _ACTIVE:
            _ACTIVE[-1].pack_started(trial.trial_id)

    def on_trial_complete(self, iteration, trials, trial, **info):
        if _ACTIVE:
            _ACTIVE[-1].pack_ended(trial.trial_id)

    def on_trial_error(self, iteration, trials, trial, **info):
        if _ACTIVE:
            _ACTIVE[-1].pack_ended(trial.trial_id)


class NoTrialBoards(TBXLoggerCallback):
    """Stands where Tune would add its TensorBoard logger (one series per trial = per pack) and writes nothing:
    the per-model series are SweepMonitor's."""

    def log_trial_start(self, trial):
        return None

    def log_trial_result(self, iteration, trial, result):
        return None

    def log_trial_end(self, trial, failed=False):
        return None
