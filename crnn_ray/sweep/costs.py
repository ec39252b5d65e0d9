"""What each model of a grid costs to train, measured on the driver, so that packs can be dealt evenly.

Why: a pack's wall time is the sum of its models', and the sweep waits for its slowest pack. Dealt blindly,
the quickstart's two packs took 48 s and 99 s (the two slowest recurrent nets landed together), so one
slot idled half the sweep. Parameter counts do not rank the nets (a small convLSTM costs more than a larger
CNN1d: the recurrence is sequential); one timed forward and backward pass of each spec does, in a fraction
of a second per spec.

    step_costs   per spec: seconds per sample of a training step (at the trials' batch size, up to 256) and of
                 inference (the CPU eval batch, EVAL_BATCH["cpu"] rows); the nets' costs spread further apart at
                 the batch sizes they run than at small probe batches (convgru/m05 vs m01: 1.9x at 256, 1.5x at 64)
    model_costs  per trial: epochs x training samples x step cost + (validations x valid samples + the
                 select samples, scored once) x inference cost
    CostProbe    model_costs in a background thread while Ray starts (timing the specs takes a second or two)

The packs are dealt by these costs in crnn_ray.sweep.placement.
"""

from __future__ import annotations

import math
import threading
import time

import numpy as np
import torch

from crnn_ray.train import TrainConfig
from crnn_ray.train.config import EVAL_BATCH
from crnn_ray.zoo import build_model

MAX_TRAIN_BATCH, INFER_BATCH = 256, EVAL_BATCH["cpu"]


def step_costs(specs: list[str], n_features: int, lookback: int, batch: int = 256,
               repeats: int = 3) -> dict[str, tuple[float, float]]:
    """{spec: (seconds per sample of a training step, seconds per sample of inference)}, single-threaded (what
    a 1-CPU worker runs; relative costs are what matter): the fastest of `repeats` passes (the first warms up;
    the minimum shrugs off another process taking the core for a moment)."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    out = {}
    try:
        train_batch = max(1, min(int(batch), MAX_TRAIN_BATCH))
        gen = torch.Generator().manual_seed(0)
        x = torch.randn(max(INFER_BATCH, train_batch), lookback, n_features, generator=gen)
        for spec in dict.fromkeys(specs):
            model = build_model(spec, n_features, lookback)
            train, infer = [], []
            for _ in range(repeats):
                t0 = time.perf_counter()
                model(x[:train_batch]).float().sum().backward()
                t1 = time.perf_counter()
                with torch.inference_mode():
                    model(x[:INFER_BATCH])
                t2 = time.perf_counter()
                train.append((t1 - t0) / train_batch)
                infer.append((t2 - t1) / INFER_BATCH)
            out[spec] = (min(train), min(infer))
    finally:
        torch.set_num_threads(threads)
    return out


def model_costs(grid: list[dict], panel, windows: list) -> dict[str, float]:
    """{trial key: estimated seconds} from step_costs and how much data each trial's TrainConfig touches:
    per epoch min(max_steps_per_epoch x batch, its train rows) training samples, per validation its valid
    (or eval_max_days of it) rows, and its select rows once (select_scoring "end"; "best": at most once per
    validation). Early stopping can only shorten a trial."""
    first = TrainConfig(**grid[0]["train_config"])
    costs = step_costs([t["spec"] for t in grid], len(panel.features), first.lookback, first.batch_size)
    rows_per_day = float(np.asarray(panel.mask).sum(axis=1).mean()) if panel.n_days else 0.0
    out = {}
    for t in grid:
        cfg = TrainConfig(**t["train_config"])
        splits = windows[t.get("window") or 0]
        days = lambda part: 0 if getattr(splits, part) is None else getattr(splits, part)[1] - getattr(splits, part)[0] + 1  # noqa: E731
        train_rows = days("train") * rows_per_day
        if cfg.max_steps_per_epoch:
            train_rows = min(train_rows, cfg.max_steps_per_epoch * cfg.batch_size)
        valid_days = days("valid") if not cfg.eval_max_days else min(days("valid"), cfg.eval_max_days)
        validations = math.ceil(cfg.epochs / max(1, cfg.eval_every))
        selects = validations if cfg.select_scoring == "best" else 1
        eval_rows = (validations * valid_days + selects * days("select")) * rows_per_day
        step, infer = costs[t["spec"]]
        out[t["key"]] = cfg.epochs * train_rows * step + eval_rows * infer
    return out


class CostProbe:
    """model_costs in a background thread (torch releases the GIL), so the timing hides behind Ray's start:
    result() waits for it; a probe that failed deals round-robin instead (with one line saying why)."""

    def __init__(self, trials: list[dict], panel, windows: list):
        self._out: dict = {}
        self.seconds = 0.0
        self._thread = threading.Thread(target=self._run, args=(trials, panel, windows), daemon=True)
        self._thread.start()

    def _run(self, trials, panel, windows) -> None:
        t0 = time.perf_counter()
        try:
            self._out["costs"] = model_costs(trials, panel, windows)
        except Exception as exc:  # noqa: BLE001 - an estimate only: never stops the sweep
            self._out["error"] = f"{type(exc).__name__}: {str(exc)[:160]}"
        self.seconds = time.perf_counter() - t0

    def result(self) -> dict | None:
        self._thread.join()
        if "error" in self._out and not self._out.get("said"):
            self._out["said"] = True
            print(f"note: packs dealt round-robin (timing the specs failed: {self._out['error']})", flush=True)
        return self._out.get("costs")

