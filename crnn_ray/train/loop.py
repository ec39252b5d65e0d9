"""train_one: one model, one device, one readable loop — no Ray.

The sweep wraps this function inside a Ray Train worker; a unit test, a benchmark or a GPU box without Ray
calls it directly. Data path: the panel is normalised once, the feature cube X [D, S, F], the labels and the
train / valid sample indices go to the device once, and every batch is a set of (day, stock) windows gathered
on the device — samples x lookback is never materialised for the whole set.

Determinism: model init under torch.manual_seed(seed); the shuffling order of epoch e comes from a CPU
torch.Generator seeded from (seed, e); torch.manual_seed(seed * 1000 + e) at the start of epoch e fixes
dropout. Nothing carries over between epochs except weights, optimizer and early-stopping state, all in
the checkpoint — so resuming at an epoch boundary reproduces an uninterrupted run exactly.
"""

from __future__ import annotations

import math
import shutil
import tempfile
import time
from dataclasses import asdict, dataclass, fields
from pathlib import Path
from typing import Any, Callable

import numpy as np
import torch

from crnn_ray.io import CliError
from crnn_ray.train.checkpoint import load_train_state, write_checkpoint

LOSSES = ("mse", "ic")
#: metrics early stopping can watch (all "higher is better")
STOPPING_METRICS = ("valid_ic", "valid_rank_ic", "valid_icir", "valid_pnl_long_short", "valid_pnl_long")
#: evaluate().summary key behind each valid_* metric
_SUMMARY_KEYS = {
    "valid_ic": "ic",
    "valid_rank_ic": "rank_ic",
    "valid_icir": "icir",
    "valid_pnl_long_short": "pnl_long_short",
    "valid_pnl_long": "pnl_long",
}


@dataclass
class TrainConfig:
    """Everything that shapes one training run besides the model spec and the data."""

    label: str = "y5"
    lookback: int = 20
    epochs: int = 5
    batch_size: int = 512
    lr: float = 1e-3
    weight_decay: float = 0.0
    loss: str = "mse"  # or "ic": negative mean per-day Pearson IC, batches made of whole days
    rank_label: bool = True
    clip: float = 5.0
    grad_clip: float | None = 1.0
    early_stopping_metric: str = "valid_ic"
    patience: int = 3
    max_steps_per_epoch: int | None = None
    eval_batch_size: int = 4096
    seed: int = 0
    compile: bool = False

    def validate(self) -> "TrainConfig":
        """Raise CliError naming the first bad key."""
        ints = {"lookback": 1, "epochs": 1, "batch_size": 1, "patience": 1, "eval_batch_size": 1}
        for key, low in ints.items():
            value = getattr(self, key)
            if isinstance(value, bool) or not isinstance(value, int) or value < low:
                raise CliError(f"train config key {key!r}: expected an integer >= {low}, got {value!r}")
        if self.max_steps_per_epoch is not None and (
            isinstance(self.max_steps_per_epoch, bool)
            or not isinstance(self.max_steps_per_epoch, int)
            or self.max_steps_per_epoch < 1
        ):
            raise CliError(f"train config key 'max_steps_per_epoch': expected null or an integer >= 1, "
                           f"got {self.max_steps_per_epoch!r}")
        if not isinstance(self.lr, (int, float)) or not self.lr > 0 or not math.isfinite(self.lr):
            raise CliError(f"train config key 'lr': expected a positive number, got {self.lr!r}")
        if not isinstance(self.weight_decay, (int, float)) or self.weight_decay < 0:
            raise CliError(f"train config key 'weight_decay': expected a number >= 0, got {self.weight_decay!r}")
        if not isinstance(self.clip, (int, float)) or not self.clip > 0:
            raise CliError(f"train config key 'clip': expected a positive number, got {self.clip!r}")
        if self.grad_clip is not None and (not isinstance(self.grad_clip, (int, float)) or not self.grad_clip > 0):
            raise CliError(f"train config key 'grad_clip': expected null or a positive number, got {self.grad_clip!r}")
        if self.loss not in LOSSES:
            raise CliError(f"train config key 'loss': expected one of {list(LOSSES)}, got {self.loss!r}")
        if self.early_stopping_metric not in STOPPING_METRICS:
            raise CliError(f"train config key 'early_stopping_metric': expected one of {list(STOPPING_METRICS)}, "
                           f"got {self.early_stopping_metric!r}")
        if isinstance(self.seed, bool) or not isinstance(self.seed, int) or self.seed < 0:
            raise CliError(f"train config key 'seed': expected an integer >= 0, got {self.seed!r}")
        return self

    @classmethod
    def from_dict(cls, values: dict) -> "TrainConfig":
        """Build from a plain dict (a YAML section); an unknown key is a CliError naming it."""
        known = {f.name for f in fields(cls)}
        for key in values:
            if key not in known:
                raise CliError(f"train config: unknown key {key!r} (known: {', '.join(sorted(known))})")
        return cls(**values).validate()


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
    """Train `spec` on `panel` (train split), validate each epoch on the valid split, checkpoint each epoch.

    on_epoch(metrics, checkpoint_dir) is called after every epoch with a full checkpoint directory (it may be
    deleted once the call returns). A NaN/inf loss, gradient or prediction ends training with status
    "diverged" and the reason; it is reported, never raised.
    """
    from crnn_ray.data import gather_windows, normalize_features, rank_label, sample_index
    from crnn_ray.metrics import evaluate
    from crnn_ray.zoo import build_model, count_params

    cfg.validate()
    device = torch.device(device)
    meta_extra = dict(meta_extra or {})
    lookback = cfg.lookback

    # ---- data: normalise once, move once ---------------------------------------------------------------
    raw_label = panel.label(cfg.label)  # CliError naming the label when absent
    horizon = _horizon(panel, cfg.label)
    X = normalize_features(panel.X, panel.mask, clip=cfg.clip).astype(np.float32, copy=False)
    target = rank_label(raw_label) if cfg.rank_label else raw_label
    train_idx = _sorted_by_day(sample_index(panel.mask, raw_label, lookback, *splits.train))
    valid_idx = _sorted_by_day(sample_index(panel.mask, raw_label, lookback, *splits.valid))
    if len(train_idx) == 0:
        raise CliError(f"train split {list(splits.train)} has no sample with lookback {lookback} "
                       f"and label {cfg.label!r}")
    if len(valid_idx) == 0:
        raise CliError(f"valid split {list(splits.valid)} has no sample with lookback {lookback} "
                       f"and label {cfg.label!r}")
    v_lo, v_hi = int(splits.valid[0]), int(splits.valid[1])
    valid_label = raw_label[v_lo : v_hi + 1]
    valid_dates = panel.dates[v_lo : v_hi + 1]

    X_dev = torch.from_numpy(np.ascontiguousarray(X)).to(device)
    y_dev = torch.from_numpy(np.ascontiguousarray(target, dtype=np.float32)).to(device)
    train_dev = torch.from_numpy(train_idx).to(device)
    valid_dev = torch.from_numpy(valid_idx).to(device)
    day_starts, day_counts = _day_segments(train_idx[:, 0])  # for the "ic" loss (whole-day batches)

    # ---- model + optimizer (init under the seed) ----------------------------------------------------------
    torch.manual_seed(cfg.seed)
    model = build_model(spec, panel.X.shape[2], lookback).to(device)
    params = int(count_params(model))
    optimizer = torch.optim.AdamW(model.parameters(), lr=cfg.lr, weight_decay=cfg.weight_decay)
    forward = torch.compile(model) if cfg.compile else model

    history: list[dict] = []
    best_value, best_epoch, bad_epochs = -math.inf, None, 0
    best_state = _cpu_copy(model.state_dict())
    best_metrics: dict = {}
    start_epoch = 1
    previous_dir: Path | None = None

    if resume_from is not None:
        meta, best_state, last_state, state = load_train_state(resume_from)
        if meta["spec"] != spec:
            raise CliError(f"{Path(resume_from) / 'meta.json'}: checkpoint is for spec {meta['spec']!r}, not {spec!r}")
        model.load_state_dict(last_state)
        optimizer.load_state_dict(state["optimizer"])
        es = state["early_stopping"]
        best_value = -math.inf if es["best_value"] is None else float(es["best_value"])
        best_epoch, bad_epochs = es["best_epoch"], int(es["bad_epochs"])
        history = list(state["history"])
        best_metrics = next((h for h in history if h["epoch"] == best_epoch), {})
        start_epoch = int(state["epoch"]) + 1
        # a run that diverged or early-stopped is over; one that used up its epochs continues when cfg has more
        finished = state["status"] == "diverged" or state.get("finished_by") == "early_stopping"
        if finished or start_epoch > cfg.epochs:
            status = state["status"] if state["status"] != "running" else "ok"
            return TrainResult(status, state.get("reason", ""), best_epoch, best_metrics, history,
                               Path(resume_from), params, 0.0)

    workdir = Path(workdir) if workdir is not None else Path(tempfile.mkdtemp(prefix="crnn_train_"))
    workdir.mkdir(parents=True, exist_ok=True)
    if sampler is not None:
        sampler.sample()  # start the CPU-use window at the first epoch
    tag = meta_extra.get("variant_id") or spec
    status, reason, finished_by, rates = "running", "", None, []
    checkpoint_dir: Path | None = None

    for epoch in range(start_epoch, cfg.epochs + 1):
        t0 = time.perf_counter()
        torch.manual_seed(cfg.seed * 1000 + epoch)  # dropout stream of this epoch
        order = _epoch_order(cfg, epoch, day_starts, day_counts, device)

        # ---- train ------------------------------------------------------------------------------------
        model.train()
        losses, n_samples, diverged = [], 0, ""
        for step, (lo, hi, seg) in enumerate(order.batches):
            rows = train_dev[order.perm_dev[lo:hi]]
            xb = gather_windows(X_dev, rows[:, 0], rows[:, 1], lookback)
            yb = y_dev[rows[:, 0], rows[:, 1]]
            pred = forward(xb)
            loss = _loss(cfg.loss, pred, yb, seg)
            optimizer.zero_grad(set_to_none=True)
            loss.backward()
            grad_norm = torch.nn.utils.clip_grad_norm_(
                model.parameters(), cfg.grad_clip if cfg.grad_clip is not None else math.inf)
            loss_value, norm_value = torch.stack([loss.detach(), grad_norm.detach().to(loss.dtype)]).tolist()
            if not math.isfinite(loss_value):
                diverged = f"non-finite loss ({loss_value}) at epoch {epoch} step {step + 1}"
                break
            if not math.isfinite(norm_value):
                diverged = f"non-finite gradient norm ({norm_value}) at epoch {epoch} step {step + 1}"
                break
            optimizer.step()
            losses.append(loss_value)
            n_samples += hi - lo
        if device.type == "cuda":
            torch.cuda.synchronize(device)
        train_s = time.perf_counter() - t0
        samples_per_s = n_samples / train_s if train_s > 0 else 0.0

        # ---- validate ---------------------------------------------------------------------------------
        summary: dict = {}
        if not diverged:
            signal = _predict(forward, model, X_dev, valid_dev, v_lo, v_hi - v_lo + 1, lookback,
                              cfg.eval_batch_size, gather_windows)
            predicted = signal[valid_idx[:, 0] - v_lo, valid_idx[:, 1]]
            if not np.isfinite(predicted).all():
                diverged = f"non-finite validation predictions at epoch {epoch}"
            else:
                summary = evaluate(signal, valid_label, horizon=horizon, dates=valid_dates).summary

        metrics = {
            "epoch": epoch,
            "train_loss": float(np.mean(losses)) if losses and not diverged else math.nan,
            **{name: _finite_or_nan(summary.get(key)) for name, key in _SUMMARY_KEYS.items()},
            "samples_per_s": samples_per_s,
            "epoch_s": 0.0,
        }

        # ---- early stopping / status -------------------------------------------------------------------
        if diverged:
            status, reason, finished_by = "diverged", diverged, "diverged"
        else:
            value = metrics[cfg.early_stopping_metric]
            if math.isfinite(value) and value > best_value:
                best_value, best_epoch, bad_epochs = value, epoch, 0
                best_state = _cpu_copy(model.state_dict())
            else:
                bad_epochs += 1
            if bad_epochs >= cfg.patience:
                status, finished_by = "ok", "early_stopping"
                reason = f"early stopped at epoch {epoch}: no {cfg.early_stopping_metric} gain for {bad_epochs} epochs"
            elif epoch == cfg.epochs:
                status, reason, finished_by = "ok", f"completed {epoch} epochs", "epochs"
        metrics["best_epoch"] = best_epoch
        metrics[f"best_{cfg.early_stopping_metric}"] = best_value if math.isfinite(best_value) else math.nan
        metrics["status"], metrics["reason"] = status, reason
        if sampler is not None:
            metrics.update(sampler.sample())
        metrics["epoch_s"] = time.perf_counter() - t0
        history.append(metrics)
        if best_epoch == epoch:
            best_metrics = metrics
        rates.append(samples_per_s)

        # ---- checkpoint + report -----------------------------------------------------------------------
        checkpoint_dir = workdir / f"checkpoint_{epoch:04d}"
        write_checkpoint(
            checkpoint_dir,
            best_state=best_state if best_epoch is not None else model.state_dict(),  # no valid epoch yet: last
            last_state=model.state_dict(),
            train_state={
                "epoch": epoch,
                "optimizer": optimizer.state_dict(),
                "rng": _rng_states(),
                "early_stopping": {
                    "metric": cfg.early_stopping_metric,
                    "best_value": best_value if math.isfinite(best_value) else None,
                    "best_epoch": best_epoch,
                    "bad_epochs": bad_epochs,
                },
                "history": history,
                "status": status,
                "reason": reason,
                "finished_by": finished_by,
                "config": asdict(cfg),
            },
            meta=_meta(spec, panel, splits, cfg, horizon, epoch, best_epoch, best_metrics, params, status,
                       reason, tag, meta_extra),
        )
        print(_epoch_line(tag, metrics, cfg.epochs), flush=True)
        if on_epoch is not None:
            on_epoch(dict(metrics), checkpoint_dir)
        if previous_dir is not None and previous_dir != checkpoint_dir:
            shutil.rmtree(previous_dir, ignore_errors=True)  # keep only the newest checkpoint on disk
        previous_dir = checkpoint_dir
        if status != "running":
            break

    return TrainResult(
        status=status if status != "running" else "ok",
        reason=reason,
        best_epoch=best_epoch,
        best_metrics=best_metrics,
        history=history,
        checkpoint_dir=checkpoint_dir,
        params=params,
        samples_per_s=float(np.mean(rates)) if rates else 0.0,
    )


# ---- helpers ------------------------------------------------------------------------------------------------


@dataclass
class _EpochOrder:
    perm_dev: torch.Tensor  # positions into the train index, in this epoch's order (on the device)
    batches: list  # (lo, hi, segments): a batch is perm_dev[lo:hi]; segments = (day ordinal per row, n_days) for "ic"


def _epoch_seed(seed: int, epoch: int) -> int:
    return (int(seed) * 1_000_003 + int(epoch)) % (2**63 - 1)


def _epoch_order(cfg: TrainConfig, epoch: int, day_starts: np.ndarray, day_counts: np.ndarray,
                 device: torch.device) -> _EpochOrder:
    """This epoch's sample order, drawn on the CPU from (seed, epoch) so it is the same on every device.

    mse: a random permutation of all training samples cut into batch_size pieces.
    ic:  a random permutation of the training DAYS; consecutive days are packed into one batch until it
         holds >= batch_size samples, so every day in a batch is its whole cross-section.
    """
    generator = torch.Generator().manual_seed(_epoch_seed(cfg.seed, epoch))
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


@torch.no_grad()
def _predict(forward, model, X_dev, valid_dev, day_lo, n_days, lookback, batch_size, gather_windows) -> np.ndarray:
    """Predictions over the valid samples scattered into [Dv, S] (NaN where there is no sample)."""
    model.eval()
    out = torch.full((n_days, X_dev.shape[1]), math.nan, dtype=torch.float32, device=X_dev.device)
    for lo in range(0, len(valid_dev), batch_size):
        rows = valid_dev[lo : lo + batch_size]
        pred = forward(gather_windows(X_dev, rows[:, 0], rows[:, 1], lookback))
        out[rows[:, 0] - day_lo, rows[:, 1]] = pred.reshape(-1).float()
    return out.cpu().numpy()


def _sorted_by_day(index: np.ndarray) -> np.ndarray:
    index = np.asarray(index, dtype=np.int64).reshape(-1, 2)
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
        "n_features": int(panel.X.shape[2]),
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
        "valid_metrics": {k: best_metrics.get(k, math.nan) for k in STOPPING_METRICS},
        "params": params,
        "status": status,
        "reason": reason,
        "loss": cfg.loss,
        "train_config": asdict(cfg),
    }
    meta.update({k: v for k, v in meta_extra.items() if k not in ("spec",)})
    return meta


def _epoch_line(tag: str, m: dict, epochs: int) -> str:
    line = (f"[{tag}] epoch {m['epoch']}/{epochs} loss {m['train_loss']:.5f} valid IC {m['valid_ic']:+.4f} "
            f"RankIC {m['valid_rank_ic']:+.4f} ICIR {m['valid_icir']:+.3f} pnl {m['valid_pnl_long_short']:+.4f} "
            f"long {m['valid_pnl_long']:+.4f} samples/s {m['samples_per_s']:,.0f} ({m['epoch_s']:.1f}s)")
    if "cpu_percent" in m:
        line += f" cpu {m['cpu_percent']:.0f}% threads {m['threads']}"
    if m["status"] != "running":
        line += f" -> {m['status']}: {m['reason']}"
    return line
