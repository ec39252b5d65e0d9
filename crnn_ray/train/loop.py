"""train_one: one model, one device, one readable loop — no Ray.

The sweep wraps this function inside a Ray Train worker; a unit test, a benchmark or a GPU box without Ray
calls it directly. Data path: the features are normalised once per panel (crnn_ray.data.normalise_panel: the
sweep shares one normalised cube per node, read zero-copy; a plain Panel is normalised here, on the window's days
only), the window's days of the cube [days, S, F], the labels and the sample indices go to the device once, and
every batch is a set of (day, stock) windows gathered on the device — samples x lookback is never materialised
for the whole set.

Validation: the valid part (it chooses the epoch) is scored every validated epoch; the select part (it only
ranks runs) once, with the weights the valid part chose (cfg.select_scoring), in batches of cfg.eval_batch
rows under torch.inference_mode.

Determinism: model init under torch.manual_seed(seed); the shuffling order of epoch e comes from a CPU
torch.Generator seeded from (seed, e, the run's identity: spec + hyperparameters); torch.manual_seed(seed * 1000 + e) at the start of epoch e fixes
dropout. Nothing carries over between epochs except weights, optimizer and early-stopping state, all in
the checkpoint — so resuming at an epoch boundary reproduces an uninterrupted run exactly.
"""

from __future__ import annotations

import hashlib
import json
import math
import shutil
import tempfile
import time
import warnings
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Callable

import numpy as np
import torch

from crnn_ray.io import CliError
from crnn_ray.schema import METRICS, VALID_METRICS
from crnn_ray.train.checkpoint import load_train_state, write_checkpoint
from crnn_ray.train.config import SWEEPABLE, TrainConfig
from crnn_ray.zoo import build_model, count_params

# crnn_ray.data and crnn_ray.metrics (pandas, scipy, pyarrow: ~180 MB, ~1 s) are imported in the functions that
# use them, on purpose: `import crnn_ray.train` (TrainConfig, apply_cpu_quota, load_checkpoint) stays free of
# them; a Train worker imports it to apply its CPU quota first.

#: steps between the host's looks at the on-device divergence record (nanoGPT's log_interval idea: the loop
#: never waits for the device on an ordinary step; a diverged epoch is caught within this many steps)
DIVERGENCE_CHECK_STEPS = 50
#: bytes of first-layer input gates one validation block holds (_predict_by_cells)
GATE_BLOCK_BYTES = 64 * 2**20


@dataclass
class TrainResult:
    status: str  # "ok" (finished / early-stopped) or "diverged"
    reason: str
    best_epoch: int | None
    best_metrics: dict
    history: list[dict]
    checkpoint_dir: Path | None
    params: int
    samples_per_s: float  # mean training throughput over the epochs this call ran
    setup_s: float = 0.0  # this call's data set-up: the window's normalised features, labels, indices, fingerprint


def train_one(
    spec: str,
    panel,
    splits,
    cfg: TrainConfig,
    *,
    device: str | torch.device = "cpu",
    resume_from: str | Path | None = None,
    on_epoch: Callable[[dict, Path], None] | None = None,
    workdir: str | Path | None = None,
    sampler=None,
    meta_extra: dict | None = None,
) -> TrainResult:
    """Train `spec` on `panel` (train split), validate on the valid split every cfg.eval_every epochs and at the
    last (on cfg.eval_max_days evenly spaced days when set), score the select split with the best epoch's weights
    (cfg.select_scoring), checkpoint each epoch.

    `panel`: a crnn_ray.data.NormalisedPanel (normalised once for many models; its clip and x_dtype must be the
    config's) or a plain Panel, normalised here on the days this window reads.

    on_epoch(metrics, checkpoint_dir) is called after every epoch with a full checkpoint directory (it may be
    deleted once the call returns). Besides the scores and timings, an epoch's metrics count the run's progress:
    samples_seen (training samples stepped so far, a resumed run's earlier epochs included), train_rows (the
    train split's samples: one full epoch) and finished_by (None, then "early_stopping", "epochs" or "diverged"). A NaN/inf loss, gradient or prediction, or (loss "mse") an epoch's mean
    loss above cfg.max_loss_ratio x the target variance, ends training with status "diverged" and the
    reason; it is reported, never raised.
    """
    cfg.validate()
    device = torch.device(device)
    meta_extra = dict(meta_extra or {})
    t_setup = time.perf_counter()
    meta_extra["seen_data"] = _seen_data(panel, splits, cfg)
    data = _TrainData.build(spec, panel, splits, cfg, device)
    setup_s = time.perf_counter() - t_setup

    # ---- model + optimizer (init under the seed) ------------------------------------------------------
    torch.manual_seed(cfg.seed)
    model = build_model(spec, len(panel.features), cfg.lookback).to(device)
    run = RunState.start(spec, panel, splits, cfg, data, model, meta_extra=meta_extra, on_epoch=on_epoch,
                         setup_s=setup_s)
    optimizer = torch.optim.AdamW(model.parameters(), lr=cfg.lr, weight_decay=cfg.weight_decay)
    forward = torch.compile(model, mode=cfg.compile_mode()) if cfg.compile_mode() else model
    start_epoch = 1

    if resume_from is not None:
        state = resume_run(run, model, resume_from)
        optimizer.load_state_dict(state["optimizer"])
        start_epoch = int(state["epoch"]) + 1
        if run.status != "running":
            return run.train_result()

    run.workdir = new_workdir(workdir)
    if sampler is not None:
        sampler.sample()  # start the CPU-use window at the first epoch

    for epoch in range(start_epoch, cfg.epochs + 1):
        t0 = time.perf_counter()
        torch.manual_seed(cfg.seed * 1000 + epoch)  # dropout stream of this epoch
        steps = _train_epoch(model, forward, optimizer, data, cfg, epoch, device)
        status = close_epoch(run, model, forward, epoch, steps, started=t0, optimizer_state=optimizer.state_dict,
                             rng_state=_rng_states, sample=sampler.sample if sampler is not None else None)
        if status != "running":
            break
    return run.train_result()


# ---- one run's state, and the end of its epochs (train_one's and a stacked member's) ---------------------


@dataclass
class EpochSteps:
    """What one epoch's training steps left, for close_epoch: train_one's _train_epoch returns it, a stacked
    member's comes from its round."""

    train_loss: float   # mean loss over the steps taken
    samples: int        # training samples stepped (the rows of the batches taken)
    seconds: float      # the steps' wall time: samples_per_s = samples / seconds
    diverged: str = ""  # the first non-finite loss or gradient norm as a reason; ""


@dataclass
class RunState:
    """One run's state from epoch to epoch: what close_epoch reads and updates. train_one keeps one; a stacked
    member is one (stacked._Run), so both end their epochs by the same code."""

    spec: str
    panel: object
    splits: object
    cfg: TrainConfig
    data: _TrainData
    tag: str                            # the epoch line's and the checkpoint's name: variant_id, else the spec
    meta_extra: dict
    params: int
    stopper: EarlyStopping
    target_var: float | None = None     # the "mse" explosion rule's scale (_loss_explosion); None: off
    init_rms: float | None = None       # the "ic" explosion rule's scale (_weight_explosion); None: off
    on_epoch: Callable[[dict, Path], None] | None = None
    workdir: Path | None = None
    history: list = field(default_factory=list)
    samples_seen: int = 0               # training samples stepped over all epochs so far, a resume's included
    rates: list = field(default_factory=list)  # samples/s of the epochs this call trained
    status: str = "running"
    reason: str = ""
    checkpoint_dir: Path | None = None  # the newest checkpoint (a finished run resumed: the one it resumed)
    previous_dir: Path | None = None    # the checkpoint this call wrote last (removed when the next is written)
    setup_s: float = 0.0

    @classmethod
    def start(cls, spec: str, panel, splits, cfg: TrainConfig, data: _TrainData, model: torch.nn.Module, *,
              meta_extra: dict, on_epoch=None, setup_s: float = 0.0, **extra) -> RunState:
        """A run at its first epoch, `model` freshly initialised (the explosion rules' scales and the early
        stopper's stand-in weights are taken from it)."""
        return cls(
            spec=spec, panel=panel, splits=splits, cfg=cfg, data=data,
            tag=meta_extra.get("variant_id") or spec, meta_extra=meta_extra, params=int(count_params(model)),
            stopper=EarlyStopping(cfg.early_stopping_metric, cfg.patience, _cpu_copy(model.state_dict())),
            # what a constant prediction's mse is: the scale of the finite-explosion rule (mse only)
            target_var=_target_variance(data) if cfg.loss == "mse" and cfg.max_loss_ratio is not None else None,
            # the weights' scale at initialisation: the "ic" loss's explosion rule
            init_rms=_weight_rms(model) if cfg.loss == "ic" and cfg.max_weight_growth is not None else None,
            on_epoch=on_epoch, setup_s=setup_s, **extra)

    def train_result(self) -> TrainResult:
        return TrainResult(
            status=self.status if self.status != "running" else "ok",
            reason=self.reason,
            best_epoch=self.stopper.best_epoch,
            best_metrics=self.stopper.best_metrics,
            history=self.history,
            checkpoint_dir=self.checkpoint_dir,
            params=self.params,
            samples_per_s=float(np.mean(self.rates)) if self.rates else 0.0,
            setup_s=self.setup_s,
        )


def new_workdir(workdir: str | Path | None) -> Path:
    """The run's checkpoint folder (a fresh temporary one when None), created."""
    path = Path(workdir) if workdir is not None else Path(tempfile.mkdtemp(prefix="crnn_train_"))
    path.mkdir(parents=True, exist_ok=True)
    return path


def resume_run(run: RunState, model: torch.nn.Module, resume_from: str | Path) -> dict:
    """Load checkpoint `resume_from` into `run` and `model` (last weights, history, early stopping, samples
    seen) and return its train state: the optimizer state in it is the caller's to load (torch's AdamW or a
    stack row). A run that is over -- diverged, early-stopped, or out of cfg.epochs -- gets its status, reason
    and checkpoint_dir, so the caller returns run.train_result(); one that used up its epochs goes on when cfg
    has more."""
    meta, best_state, last_state, state = load_train_state(resume_from)
    if meta["spec"] != run.spec:
        raise CliError(f"{Path(resume_from) / 'meta.json'}: checkpoint is for spec {meta['spec']!r}, "
                       f"not {run.spec!r}")
    model.load_state_dict(last_state)
    run.history = list(state["history"])
    run.stopper.load_state_dict(state["early_stopping"], best_state, run.history)
    done = int(state["epoch"])
    run.samples_seen = (int(state["samples_seen"]) if state.get("samples_seen") is not None
                        else _recount_samples(run.cfg, run.data, done))
    finished = state["status"] == "diverged" or state.get("finished_by") == "early_stopping"
    if finished or done + 1 > run.cfg.epochs:
        run.status = state["status"] if state["status"] != "running" else "ok"
        run.reason = state.get("reason", "")
        run.checkpoint_dir = Path(resume_from)
    return state


def _recount_samples(cfg: TrainConfig, data: _TrainData, epochs: int) -> int:
    """Training samples of epochs 1..epochs, for a checkpoint written before samples_seen was kept: each epoch's
    batches are a function of (seed, epoch, run identity), so its order tells them again."""
    cpu = torch.device("cpu")
    return sum(int(hi - lo) for epoch in range(1, epochs + 1)
               for lo, hi, _ in _epoch_order(cfg, epoch, data.day_starts, data.day_counts, cpu, data.identity).batches)


def close_epoch(run: RunState, model: torch.nn.Module, forward, epoch: int, steps: EpochSteps, *,
                started: float | None, optimizer_state: Callable[[], dict], rng_state: Callable[[], dict],
                sample: Callable[[], dict] | None = None) -> str:
    """The end of epoch `epoch` of `run`, whose weights after it are in `model` (`forward`: the model or its
    compiled self): explosion checks, validation, early stopping and status, the select part, the epoch's
    metrics into the history, checkpoint, epoch line, on_epoch, the previous checkpoint removed. Returns the
    run's status ("running" while it goes on).

    The callers differ only in what they pass: `started`, the perf_counter at which train_one began the epoch
    (train_s and epoch_s are timed from it: the whole epoch); None for a stacked member, whose train_s is its
    round's (steps.seconds, every member trained in it) and epoch_s that plus its own validation.
    `optimizer_state` / `rng_state` give what the checkpoint keeps (torch's AdamW and global RNG, or a stack
    row's and the member's generator); `sample` takes the CPU-use sample (train_one's sampler now, a stack's
    round's).
    """
    cfg, data, stopper = run.cfg, run.data, run.stopper
    # a Python int: the "ic" loss's batch bounds are numpy ints, and a numpy scalar in the history would make
    # state.pt unloadable under torch.load(weights_only=True), i.e. the run unresumable
    samples = int(steps.samples)
    samples_per_s = samples / steps.seconds if steps.seconds > 0 else 0.0
    run.samples_seen += samples
    diverged = steps.diverged
    exploded = "" if diverged else (_loss_explosion(steps.train_loss, run.target_var, cfg.max_loss_ratio, epoch)
                                    or _weight_explosion(model, run.init_rms, cfg.max_weight_growth, epoch))
    diverged = diverged or exploded
    t_valid = time.perf_counter()
    validated = not diverged and _validates(cfg, epoch)
    summary, bad_prediction = _validate(forward, model, data, cfg, epoch, ("valid",)) if validated else ({}, "")
    diverged = diverged or bad_prediction
    valid_s = time.perf_counter() - t_valid if validated else 0.0
    metrics = {
        "epoch": epoch,
        "train_loss": steps.train_loss if exploded or not diverged else math.nan,  # an explosion's is finite
        **{m.name: _finite_or_nan(summary.get(m.part, {}).get(m.summary_key)) for m in METRICS.values()},
        "samples_per_s": samples_per_s,
        "samples_seen": run.samples_seen,      # training samples stepped so far, over all epochs of the run
        "train_rows": len(data.train_rows),    # training samples in the train split (one full epoch)
        "epoch_s": 0.0,
        # training steps (+ the divergence checks); a stacked member: its round's, every member trained in them
        "train_s": t_valid - started if started is not None else steps.seconds,
        "valid_s": valid_s,       # predicting and scoring the valid part (0 when skipped), and the select
                                  # part where it was scored (select_scoring)
        "params": run.params,
    }

    # ---- early stopping / status ---------------------------------------------------------------------
    status, reason, finished_by = "running", "", None
    if diverged:
        status, reason, finished_by = "diverged", diverged, "diverged"
    else:
        if validated:  # an epoch without validation neither improves nor uses up patience
            stopper.update(metrics, epoch, model)
        if stopper.done:
            status, finished_by = "ok", "early_stopping"
            reason = (f"early stopped at epoch {epoch}: no {cfg.early_stopping_metric} gain for "
                      f"{stopper.bad_epochs} epochs")
        elif epoch == cfg.epochs:
            status, reason, finished_by = "ok", f"completed {epoch} epochs", "epochs"
    if stopper.best_epoch == epoch:
        stopper.best_metrics = metrics
    selected = None  # the epoch whose weights scored the select part now
    if _scores_select(cfg, data, stopper, epoch, status):
        t_select = time.perf_counter()
        selected, bad_prediction = stopper.best_epoch, _score_select(forward, model, data, cfg, stopper, epoch)
        if bad_prediction:
            status, reason, finished_by = "diverged", bad_prediction, "diverged"
        metrics["valid_s"] += time.perf_counter() - t_select
    metrics["best_epoch"] = stopper.best_epoch
    metrics.update({f"best_{name}": stopper.best_metrics.get(name, math.nan) for name in VALID_METRICS})
    metrics["status"], metrics["reason"], metrics["finished_by"] = status, reason, finished_by
    if sample is not None:
        # `threads` is torch's intra-op quota (what the CPU quota sets); the OS count (Ray's threads
        # included) is `os_threads`, the same keys the sweep reports
        taken = sample()
        metrics.update(cpu_percent=taken["cpu_percent"], threads=torch.get_num_threads(),
                       os_threads=taken["threads"])
    now = time.perf_counter()
    metrics["epoch_s"] = now - started if started is not None else steps.seconds + (now - t_valid)
    run.history.append(metrics)
    run.rates.append(samples_per_s)
    run.status, run.reason = status, reason

    # ---- checkpoint + report -------------------------------------------------------------------------
    checkpoint_dir = run.workdir / f"checkpoint_{epoch:04d}"
    last_state = model.state_dict()
    write_checkpoint(
        checkpoint_dir,
        # no valid epoch yet: the last weights stand in for the best
        best_state=stopper.best_state if stopper.best_epoch is not None else last_state,
        last_state=last_state,
        train_state={"epoch": epoch, "optimizer": optimizer_state(), "rng": rng_state(),
                     "early_stopping": stopper.state_dict(), "history": run.history, "status": status,
                     "reason": reason, "finished_by": finished_by, "samples_seen": run.samples_seen,
                     "config": asdict(cfg)},
        meta=_meta(run.spec, run.panel, run.splits, cfg, data.horizon, epoch, stopper.best_epoch,
                   stopper.best_metrics, run.params, status, reason, run.tag, run.meta_extra),
    )
    print(_epoch_line(run.tag, metrics, cfg.epochs, data.eval_parts["valid"].budget if validated else None,
                      None if validated or diverged else cfg.eval_every, selected), flush=True)
    if run.on_epoch is not None:
        run.on_epoch(dict(metrics), checkpoint_dir)
    if run.previous_dir is not None and run.previous_dir != checkpoint_dir:
        shutil.rmtree(run.previous_dir, ignore_errors=True)  # keep only the newest checkpoint on disk
    run.previous_dir = run.checkpoint_dir = checkpoint_dir
    return status


# ---- the parts of the loop ------------------------------------------------------------------------------


@dataclass
class _EvalPart:
    """One part of the data the model is scored on (valid: chooses the epoch; select: ranks runs)."""

    rows: torch.Tensor              # (day, stock) of its samples on the device, sorted by day (window days)
    index: np.ndarray               # the same on the host
    lo: int                         # its first day (window days)
    label: np.ndarray               # raw label [days of the part, S]
    dates: np.ndarray
    returns: np.ndarray | None = None  # 1-day forward returns [days of the part, S]: realised pnl (H > 1)
    budget: tuple[int, int] | None = None  # (days scored, days with samples) under cfg.eval_max_days


@dataclass
class _TrainData:
    """The run's data on the device: the window's days of the normalised features, moved once, gathered by index
    every batch. Day indices here count from the window's first day (`first_day` on the panel)."""

    X: torch.Tensor                 # normalised features [window days, S, F] (cfg.x_dtype; batches are made float32)
    y: torch.Tensor                 # training target [window days, S] (ranked label, or the raw label)
    train_rows: torch.Tensor        # (day, stock) of every training sample, sorted by day
    day_starts: np.ndarray          # first training row of each training day (the "ic" loss's whole-day batches)
    day_counts: np.ndarray
    eval_parts: dict                # "valid" (and "select" when the splits have one) -> _EvalPart
    horizon: int
    identity: int                   # run_identity(spec, cfg): enters the data order
    first_day: int = 0              # the panel day of the window's day 0

    @classmethod
    def build(cls, spec: str, panel, splits, cfg: TrainConfig, device: torch.device) -> "_TrainData":
        from crnn_ray.data import NormalisedPanel, normalize_features, rank_label, sample_index  # deferred: see the imports
        from crnn_ray.data.labels import training_label

        raw_label = panel.label(cfg.label)  # CliError naming the label when absent
        # the target trains without the moves the data flags as jumps; the valid / select parts are scored on
        # every held return, as the scorer scores them (data.labels)
        fit_label = training_label(panel, cfg.label)
        rows = {}
        for part in [p for p in ("train", "valid", "select") if getattr(splits, p, None) is not None]:
            lo, hi = getattr(splits, part)
            label = fit_label if part == "train" else raw_label
            rows[part] = _sorted_by_day(sample_index(panel.mask, label, cfg.lookback, lo, hi))
            if len(rows[part]) == 0:
                raise CliError(f"{part} split {[lo, hi]} has no sample with lookback {cfg.lookback} "
                               f"and label {cfg.label!r}")
        # the days this window reads: its first sample's lookback .. its last sample (rows are sorted by day)
        first = min(int(r[0, 0]) for r in rows.values()) - cfg.lookback + 1
        days = slice(first, max(int(r[-1, 0]) for r in rows.values()) + 1)
        if isinstance(panel, NormalisedPanel):
            X = _shared_cube(panel, cfg)[days]  # a view: nothing copied on a CPU
        else:  # per-date normalisation: the window's days alone give the same values
            X = normalize_features(panel.X[days], panel.mask[days], clip=cfg.clip, dtype=cfg.x_dtype)
        target = rank_label(fit_label[days]) if cfg.rank_label else fit_label[days]
        rows = {part: r - np.array([first, 0]) for part, r in rows.items()}
        day_starts, day_counts = _day_segments(rows["train"][:, 0])
        eval_parts = {}
        returns = panel.returns() if hasattr(panel, "returns") else None  # None: evaluate's fallback pnl
        for part in [p for p in ("valid", "select") if p in rows]:
            lo, hi = (int(d) for d in getattr(splits, part))
            index, budget = rows[part], None
            if part == "valid" and cfg.eval_max_days is not None:  # select ranks runs: always whole
                scored = np.unique(index[:, 0])
                chosen = scored[budget_days(len(scored), cfg.eval_max_days)]
                index = np.ascontiguousarray(index[np.isin(index[:, 0], chosen)])
                budget = (len(chosen), len(scored))
            eval_parts[part] = _EvalPart(torch.from_numpy(index).to(device), index, lo - first,
                                         raw_label[lo:hi + 1], panel.dates[lo:hi + 1],
                                         None if returns is None else returns[lo:hi + 1], budget)
        return cls(
            X=_tensor(X, cfg.x_dtype).to(device),
            y=_tensor(np.ascontiguousarray(target, dtype=np.float32)).to(device),
            train_rows=torch.from_numpy(rows["train"]).to(device),
            day_starts=day_starts, day_counts=day_counts, eval_parts=eval_parts,
            horizon=_horizon(panel, cfg.label), identity=run_identity(spec, cfg), first_day=first)


def _shared_cube(panel, cfg: TrainConfig) -> np.ndarray:
    """The normalised panel's cube, once it is the one this config asks for."""
    if (float(panel.clip), panel.x_dtype) != (float(cfg.clip), cfg.x_dtype):
        raise CliError(f"the shared normalised panel has clip {panel.clip:g}, x_dtype {panel.x_dtype}; this run asks "
                       f"for clip {cfg.clip:g}, x_dtype {cfg.x_dtype} (normalise_panel with the training config's)")
    return panel.Z


def _tensor(array: np.ndarray, x_dtype: str = "float32") -> torch.Tensor:
    """A CPU tensor over `array` without a copy, also when the array is read-only (Ray's object store hands out
    read-only arrays): training only ever reads X and y, so torch's warning about writing to one does not apply.
    bfloat16 arrives as its uint16 bits (crnn_ray.data.X_DTYPES)."""
    with warnings.catch_warnings():
        warnings.filterwarnings("ignore", message="The given NumPy array is not writable", category=UserWarning)
        tensor = torch.from_numpy(np.ascontiguousarray(array))
    return tensor.view(torch.bfloat16) if x_dtype == "bfloat16" else tensor


@dataclass
class EarlyStopping:
    """Best epoch so far on `metric` (higher is better), its weights and metrics, and the patience count."""

    metric: str
    patience: int
    best_state: dict                                   # CPU copy of the best epoch's weights
    best_value: float = -math.inf
    best_epoch: int | None = None
    bad_epochs: int = 0
    best_metrics: dict = field(default_factory=dict)   # the best epoch's metrics (the caller sets it)

    def update(self, metrics: dict, epoch: int, model: torch.nn.Module) -> None:
        value = metrics[self.metric]
        if math.isfinite(value) and value > self.best_value:
            self.best_value, self.best_epoch, self.bad_epochs = value, epoch, 0
            self.best_state = _cpu_copy(model.state_dict())
        else:
            self.bad_epochs += 1

    @property
    def done(self) -> bool:
        return self.bad_epochs >= self.patience

    def state_dict(self) -> dict:
        return {"metric": self.metric, "best_value": self.best_value if math.isfinite(self.best_value) else None,
                "best_epoch": self.best_epoch, "bad_epochs": self.bad_epochs}

    def load_state_dict(self, state: dict, best_state: dict, history: list[dict]) -> None:
        self.best_value = -math.inf if state["best_value"] is None else float(state["best_value"])
        self.best_epoch, self.bad_epochs = state["best_epoch"], int(state["bad_epochs"])
        self.best_state = best_state
        self.best_metrics = next((h for h in history if h["epoch"] == self.best_epoch), {})


def budget_days(n_days: int, max_days: int | None) -> np.ndarray:
    """Positions 0..n_days-1 of the days validated under a budget of `max_days`: all when it is None or not
    smaller, else max_days evenly spaced ones, first and last included (round(linspace)).

    A fixed set, not a draw: every epoch (and every run with the same splits) is scored on the same days, so
    early stopping compares epochs on one sample, and runs under one budget stay comparable.
    """
    if max_days is None or max_days >= n_days:
        return np.arange(n_days)
    return np.unique(np.round(np.linspace(0, n_days - 1, int(max_days))).astype(np.int64))


def _validates(cfg: TrainConfig, epoch: int) -> bool:
    """Whether epoch `epoch` is validated: every cfg.eval_every-th one, and always the last."""
    return epoch % cfg.eval_every == 0 or epoch == cfg.epochs


def _train_epoch(model, forward, optimizer, data: _TrainData, cfg: TrainConfig, epoch: int,
                 device: torch.device) -> EpochSteps:
    """One pass over this epoch's batches: its mean train loss, the samples stepped, the seconds they took and
    the divergence reason ("" when none).

    Each step's loss and gradient norm are written into device buffers; the host looks at them only every
    DIVERGENCE_CHECK_STEPS steps and at the end, so an ordinary step never waits for the device.
    """
    from crnn_ray.data import gather_windows  # deferred: see the imports

    t0 = time.perf_counter()
    order = _epoch_order(cfg, epoch, data.day_starts, data.day_counts, device, data.identity)
    model.train()
    n_steps = len(order.batches)
    losses = torch.full((n_steps,), math.nan, device=device)
    norms = torch.full((n_steps,), math.nan, device=device)
    max_norm = cfg.grad_clip if cfg.grad_clip is not None else math.inf
    steps, n_samples, diverged = 0, 0, ""
    for step, (lo, hi, seg) in enumerate(order.batches):
        rows = data.train_rows[order.perm_dev[lo:hi]]
        pred = forward(gather_windows(data.X, rows[:, 0], rows[:, 1], cfg.lookback).float())
        loss = _loss(cfg.loss, pred, data.y[rows[:, 0], rows[:, 1]], seg)
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        norms[step] = torch.nn.utils.clip_grad_norm_(model.parameters(), max_norm).detach()
        losses[step] = loss.detach()
        optimizer.step()
        steps, n_samples = step + 1, n_samples + (hi - lo)
        if steps % DIVERGENCE_CHECK_STEPS == 0 or steps == n_steps:
            diverged = _divergence(losses[:steps], norms[:steps], epoch)
            if diverged:
                break
    if device.type == "cuda":
        torch.cuda.synchronize(device)
    train_s = time.perf_counter() - t0
    loss_values = losses[:steps].double().cpu().numpy()
    return EpochSteps(float(np.mean(loss_values)) if steps else math.nan, n_samples, train_s, diverged)


def _divergence(losses: torch.Tensor, norms: torch.Tensor, epoch: int) -> str:
    """The first non-finite loss or gradient norm among the steps so far, as a reason; "" when all are finite."""
    bad = ~(torch.isfinite(losses) & torch.isfinite(norms))
    if not bool(bad.any()):
        return ""
    step = int(torch.nonzero(bad)[0, 0])
    loss, norm = float(losses[step]), float(norms[step])
    if not math.isfinite(loss):
        return f"non-finite loss ({loss}) at epoch {epoch} step {step + 1}"
    return f"non-finite gradient norm ({norm}) at epoch {epoch} step {step + 1}"


def _target_variance(data: _TrainData) -> float:
    """Variance of the training target over the training samples: the mse of the best constant prediction
    (~1/12 for the ranked label, whose values spread evenly over [-0.5, 0.5])."""
    y = data.y[data.train_rows[:, 0], data.train_rows[:, 1]].double()
    return float(y.var(unbiased=False)) if len(y) else math.nan


def _loss_explosion(train_loss: float, target_var: float | None, max_ratio: float | None, epoch: int) -> str:
    """A finite blow-up as a reason: the epoch's mean train loss above max_ratio x the target variance; "".

    Only for "mse" (the caller passes target_var None otherwise): the "ic" loss is bounded in [-1, 1], and
    the gradient norm is no robust sign there (docs/training.md, "Divergence").
    """
    if target_var is None or max_ratio is None or not (math.isfinite(train_loss) and target_var > 0):
        return ""
    ratio = train_loss / target_var
    if ratio <= max_ratio:
        return ""
    return (f"train loss {train_loss:.2g} at epoch {epoch} is {ratio:.2g} x the target variance "
            f"(bound: max_loss_ratio {max_ratio:g})")


def _seen_data(panel, splits, cfg: TrainConfig) -> dict:
    """Which data chose this model -- its train part's first day to its selection (else valid) part's last --
    and their fingerprint: the scorer checks a panel against it (crnn_ray.data.panel.seen_data_fingerprint)."""
    from crnn_ray.data.panel import NormalisedPanel, seen_data_fingerprint, seen_span  # deferred: see the imports

    first, last = seen_span(splits, panel.dates)
    if isinstance(panel, NormalisedPanel):  # taken from the raw features before they were left behind
        fingerprint = panel.fingerprint(first, last, cfg.label)
    else:
        fingerprint = seen_data_fingerprint(panel, first, last, list(panel.features), cfg.label)
    return {"first": first, "last": last, "fingerprint": fingerprint}


def _weight_rms(model: torch.nn.Module) -> float:
    """Root mean square of every trainable weight."""
    with torch.no_grad():
        squares = sum(float(p.double().pow(2).sum()) for p in model.parameters() if p.requires_grad)
        count = sum(p.numel() for p in model.parameters() if p.requires_grad)
    return math.sqrt(squares / max(count, 1))


def _weight_explosion(model: torch.nn.Module, init_rms: float | None, max_growth: float | None, epoch: int) -> str:
    """The "ic" loss's finite blow-up as a reason: the weights' RMS above max_growth x its value at
    initialisation; "". An IC loss is bounded and scale-free, so neither its value nor its gradient norm
    shows an explosion (a huge step leaves tiny gradients), but the weights it leaves behind do."""
    if init_rms is None or max_growth is None or init_rms <= 0:
        return ""
    growth = _weight_rms(model) / init_rms
    if growth <= max_growth:
        return ""
    return f"weights' RMS grew {growth:.3g} x since initialisation by epoch {epoch} (bound: max_weight_growth {max_growth:g})"


def _validate(forward, model, data: _TrainData, cfg: TrainConfig, epoch: int,
              parts: tuple[str, ...]) -> tuple[dict, str]:
    """evaluate() summaries of the model's predictions on `parts` ({"valid": ...} or {"select": ...}), or
    ({}, reason) when a prediction is non-finite."""
    from crnn_ray.metrics import evaluate  # deferred: see the imports

    summaries = {}
    batch = cfg.eval_batch(data.X.device.type)
    for name in parts:
        part = data.eval_parts[name]
        signal = _predict(forward, model, data.X, part.rows, part.lo, len(part.dates), cfg.lookback, batch)
        if not np.isfinite(signal[part.index[:, 0] - part.lo, part.index[:, 1]]).all():
            return {}, f"non-finite {name} predictions at epoch {epoch}" if name != "valid" else \
                f"non-finite validation predictions at epoch {epoch}"
        summaries[name] = evaluate(signal, part.label, horizon=data.horizon, dates=part.dates,
                                   returns=part.returns).summary
    return summaries, ""


def _scores_select(cfg: TrainConfig, data: _TrainData, stopper: "EarlyStopping", epoch: int, status: str) -> bool:
    """Whether the select part is scored at this epoch: there is one and a best epoch, and this is the end
    (select_scoring "end") or that best epoch ("best")."""
    if "select" not in data.eval_parts or stopper.best_epoch is None:
        return False
    return status != "running" if cfg.select_scoring == "end" else stopper.best_epoch == epoch


def _score_select(forward, model, data: _TrainData, cfg: TrainConfig, stopper: "EarlyStopping", epoch: int) -> str:
    """Score the select part with the best epoch's weights into the best epoch's metrics (select_*: what its
    report and trials.parquet carry as best_select_*); the model keeps its own weights. A reason when a
    prediction is non-finite, else ""."""
    best = stopper.best_epoch
    own = None if best == epoch else _cpu_copy(model.state_dict())
    if own is not None:
        model.load_state_dict(stopper.best_state)
    try:
        summary, bad = _validate(forward, model, data, cfg, best, ("select",))
    finally:
        if own is not None:
            model.load_state_dict(own)
    if bad:
        return f"{bad} (the best epoch's weights, scored at epoch {epoch})"
    for m in METRICS.values():
        if m.part == "select":
            stopper.best_metrics[m.name] = _finite_or_nan(summary["select"].get(m.summary_key))
    return ""


# ---- helpers ------------------------------------------------------------------------------------------------


@dataclass
class _EpochOrder:
    perm_dev: torch.Tensor  # positions into the train index, in this epoch's order (on the device)
    batches: list  # (lo, hi, segments): a batch is perm_dev[lo:hi]; segments = (day ordinal per row, n_days) for "ic"


def run_identity(spec: str, cfg: TrainConfig) -> int:
    """A stable 63-bit number for what the run IS (its spec and sweepable hyperparameters), not its seed.

    It enters the data order, so two variants (or two learning rates) trained with the same seed still see
    independent batches: ensemble members are less alike than they need be otherwise, and two variants would
    be compared on the same draws. Epoch count, patience and the like are left out: a run resumed with more
    epochs keeps its order.
    """
    text = json.dumps([spec, {k: getattr(cfg, k) for k in SWEEPABLE}], sort_keys=True, default=str)
    return int.from_bytes(hashlib.sha256(text.encode()).digest()[:8], "big") >> 1


def _epoch_seed(seed: int, epoch: int, identity: int = 0) -> int:
    return (int(seed) * 1_000_003 + int(epoch) + int(identity)) % (2**63 - 1)


def _epoch_order(cfg: TrainConfig, epoch: int, day_starts: np.ndarray, day_counts: np.ndarray,
                 device: torch.device, identity: int = 0) -> _EpochOrder:
    """This epoch's sample order, drawn on the CPU from (seed, epoch, run identity) so it is the same on
    every device and differs between runs that differ in spec or hyperparameters.

    mse: a random permutation of all training samples cut into batch_size pieces.
    ic:  a random permutation of the training DAYS; consecutive days are packed into one batch until it
         holds >= batch_size samples, so every day in a batch is its whole cross-section.
    """
    generator = torch.Generator().manual_seed(_epoch_seed(cfg.seed, epoch, identity))
    n = int(day_counts.sum())
    limit = cfg.max_steps_per_epoch
    if cfg.loss == "mse":
        perm = torch.randperm(n, generator=generator)
        batches = [(lo, min(lo + cfg.batch_size, n), None) for lo in range(0, n, cfg.batch_size)]
        return _EpochOrder(perm.to(device), batches[:limit])
    day_order = torch.randperm(len(day_counts), generator=generator).numpy()
    counts = day_counts[day_order]
    perm = np.concatenate([np.arange(day_starts[d], day_starts[d] + day_counts[d]) for d in day_order])
    ordinal = np.empty(n, dtype=np.int64)  # day ordinal within its batch, per row of perm
    batches, lo, pos, first_day = [], 0, 0, 0
    for i, count in enumerate(counts):
        ordinal[pos : pos + count] = i - first_day
        pos += count
        if pos - lo >= cfg.batch_size or i == len(counts) - 1:
            batches.append((lo, pos, i - first_day + 1))
            lo, first_day = pos, i + 1
    batches = batches[:limit]
    ordinal_dev = torch.from_numpy(ordinal).to(device)
    return _EpochOrder(
        torch.from_numpy(perm).to(device),
        [(lo, hi, (ordinal_dev[lo:hi], n_days)) for lo, hi, n_days in batches],
    )


def _loss(kind: str, pred: torch.Tensor, target: torch.Tensor, segments) -> torch.Tensor:
    pred = pred.reshape(-1).float()
    if kind == "mse":
        return torch.nn.functional.mse_loss(pred, target)
    return -_mean_daily_pearson(pred, target, *segments)


def _mean_daily_pearson(pred: torch.Tensor, target: torch.Tensor, day: torch.Tensor, n_days: int) -> torch.Tensor:
    """Mean over the batch's days of the Pearson correlation of pred and target within each day (differentiable).

    Days with fewer than 2 rows are left out; the eps keeps a constant prediction finite (IC 0, not NaN).
    """
    zeros = pred.new_zeros(n_days)
    n = zeros.index_add(0, day, torch.ones_like(pred))
    mean_p = zeros.index_add(0, day, pred) / n.clamp_min(1)
    mean_y = zeros.index_add(0, day, target) / n.clamp_min(1)
    dp, dy = pred - mean_p[day], target - mean_y[day]
    cov = zeros.index_add(0, day, dp * dy)
    var_p = zeros.index_add(0, day, dp * dp)
    var_y = zeros.index_add(0, day, dy * dy)
    ic = cov / (torch.sqrt(var_p + 1e-12) * torch.sqrt(var_y + 1e-12))
    weight = (n >= 2).to(pred.dtype)
    return (ic * weight).sum() / weight.sum().clamp_min(1.0)


@torch.inference_mode()
def _predict(forward, model, X_dev, valid_dev, day_lo, n_days, lookback, batch_size) -> np.ndarray:
    """Predictions over a part's samples scattered into [days of the part, S] (NaN where there is no sample)."""
    from crnn_ray.data import gather_windows  # deferred: see the imports

    model.eval()
    out = torch.full((n_days, X_dev.shape[1]), math.nan, dtype=torch.float32, device=X_dev.device)
    if forward is model and hasattr(model, "first_gates") and len(valid_dev):
        _predict_by_cells(model, X_dev, valid_dev, day_lo, lookback, batch_size, out)
        return out.cpu().numpy()
    for lo in range(0, len(valid_dev), batch_size):
        rows = valid_dev[lo : lo + batch_size]
        pred = forward(gather_windows(X_dev, rows[:, 0], rows[:, 1], lookback).float())
        out[rows[:, 0] - day_lo, rows[:, 1]] = pred.reshape(-1).float()
    return out.cpu().numpy()


def _predict_by_cells(model, X_dev, rows, day_lo, lookback, batch_size, out) -> None:
    """_predict for a net whose first layer reads one day at a time (the recurrent nets: first_gates /
    from_first_gates): a part's windows overlap, so each (day, stock) cell's input gates are computed once
    for a block of consecutive days (plus the lookback before it) instead of once per window it is in (L times).

    The same values as forward() (tests/test_train_validation.py); a block holds at most GATE_BLOCK_BYTES of
    gates, so a wide panel goes in groups of stocks. `rows` (window days, stocks) are sorted by day.
    """
    from crnn_ray.data import gather_windows  # deferred: see the imports

    L, n_stocks = int(lookback), X_dev.shape[1]
    one = model.first_gates(X_dev[0, :1].float())                      # one cell's gates: [1, gates*C, P]
    cell_bytes = one.numel() * one.element_size()
    group = max(1, min(n_stocks, GATE_BLOCK_BYTES // (cell_bytes * (2 * L - 1))))  # >= L days of one group fit
    span = max(1, GATE_BLOCK_BYTES // (cell_bytes * group) - (L - 1))  # scored days per block
    for s0 in range(0, n_stocks, group):
        part = rows[(rows[:, 1] >= s0) & (rows[:, 1] < s0 + group)] if group < n_stocks else rows
        if not len(part):
            continue
        first, last = int(part[0, 0]), int(part[-1, 0])
        bounds = torch.searchsorted(part[:, 0].contiguous(),
                                    torch.arange(first, last + span + 1, span, device=part.device))
        for b, d0 in enumerate(range(first, last + 1, span)):
            block = part[int(bounds[b]):int(bounds[b + 1])]
            if not len(block):
                continue
            base, end = d0 - L + 1, int(block[-1, 0]) + 1                 # the days the block's windows read
            cells = X_dev[base:end, s0:s0 + group].float()
            gates = model.first_gates(cells.reshape(-1, cells.shape[-1])).reshape(*cells.shape[:2], *one.shape[1:])
            for lo in range(0, len(block), batch_size):
                r = block[lo:lo + batch_size]
                pred = model.from_first_gates(gather_windows(gates, r[:, 0] - base, r[:, 1] - s0, L))
                out[r[:, 0] - day_lo, r[:, 1]] = pred.reshape(-1).float()


def _sorted_by_day(index: np.ndarray) -> np.ndarray:
    """(day, stock) rows in (day, stock) order; sample_index's already are (a check, not a sort: millions of rows
    at a full-size panel)."""
    index = np.ascontiguousarray(index, dtype=np.int64).reshape(-1, 2)
    day_step, stock_step = np.diff(index[:, 0]), np.diff(index[:, 1])
    if bool(np.all((day_step > 0) | ((day_step == 0) & (stock_step > 0)))):
        return index
    return np.ascontiguousarray(index[np.lexsort((index[:, 1], index[:, 0]))])


def _day_segments(days: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    _, starts, counts = np.unique(days, return_index=True, return_counts=True)
    return starts.astype(np.int64), counts.astype(np.int64)


def _horizon(panel, label: str) -> int:
    """Label horizon in days (evaluate() uses it for non-overlapping pnl): the panel's own rule when it has one."""
    if hasattr(panel, "horizon"):
        return int(panel.horizon(label))
    return int((panel.meta.get("horizons") or {}).get(label, 1))


def _cpu_copy(state: dict) -> dict:
    return {k: v.detach().to("cpu").clone() for k, v in state.items()}


def _finite_or_nan(value) -> float:
    try:
        value = float(value)
    except (TypeError, ValueError):
        return math.nan
    return value if math.isfinite(value) else math.nan


def _rng_states() -> dict:
    states = {"torch": torch.get_rng_state()}
    if torch.cuda.is_available() and torch.cuda.is_initialized():
        states["cuda"] = torch.cuda.get_rng_state_all()
    return states


def _meta(spec, panel, splits, cfg, horizon, epoch, best_epoch, best_metrics, params, status, reason, tag,
          meta_extra) -> dict:
    panel_path = panel.meta.get("path")
    meta = {
        "spec": spec,
        "variant_id": tag,
        "features": list(panel.features),
        "n_features": len(panel.features),
        "lookback": cfg.lookback,
        "label": cfg.label,
        "horizon": horizon,
        "normalisation": {"method": "robust_z", "clip": float(cfg.clip)},
        "rank_label": bool(cfg.rank_label),
        "splits": splits.dates(panel.dates),
        "panel": str(Path(panel_path).resolve()) if panel_path else None,
        "seed": cfg.seed,
        "epoch": epoch,
        "best_epoch": best_epoch,
        "valid_metrics": {k: best_metrics.get(k, math.nan) for k in VALID_METRICS},
        "params": params,
        "status": status,
        "reason": reason,
        "loss": cfg.loss,
        "train_config": asdict(cfg),
    }
    meta.update({k: v for k, v in meta_extra.items() if k not in ("spec",)})
    return meta


def _epoch_line(tag: str, m: dict, epochs: int, budget: tuple[int, int] | None = None,
                skipped_every: int | None = None, selected: int | None = None) -> str:
    """One line per epoch. `budget`: (days scored, days) of the valid part under eval_max_days;
    `skipped_every`: the eval_every that left this epoch unvalidated; `selected`: the epoch whose weights
    scored the select part at this one."""
    loss = m["train_loss"]
    loss = f"{loss:.5f}" if not abs(loss) >= 1e4 else f"{loss:.3g}"  # an exploded loss: 6.88e+08
    line = f"[{tag}] epoch {m['epoch']}/{epochs} loss {loss} "
    if skipped_every is not None:
        line += f"valid skipped (eval_every {skipped_every})"
    else:
        days = f" ({budget[0]} of {budget[1]} days)" if budget and budget[0] < budget[1] else ""
        line += (f"valid{days} IC {m['valid_ic']:+.4f} RankIC {m['valid_rank_ic']:+.4f} ICIR "
                 f"{m['valid_icir']:+.3f} pnl {m['valid_pnl_long_short']:+.4f} long {m['valid_pnl_long']:+.4f}")
    if selected is not None:
        line += (f" | select (epoch {selected}) IC {m['best_select_ic']:+.4f} "
                 f"RankIC {m['best_select_rank_ic']:+.4f}")
    epoch_s, valid_s = m["epoch_s"], m.get("valid_s", 0.0)
    share = f" ({100 * valid_s / epoch_s:.0f} %)" if epoch_s > 0 else ""
    line += (f" samples/s {m['samples_per_s']:,.0f} ({epoch_s:.1f}s: train {m.get('train_s', 0.0):.1f}s "
             f"valid {valid_s:.1f}s{share})")
    if "cpu_percent" in m:
        line += f" cpu {m['cpu_percent']:.0f}% torch threads {m['threads']} (os threads {m['os_threads']})"
    if m["status"] != "running":
        line += f" -> {m['status']}: {m['reason']}"
    return line
