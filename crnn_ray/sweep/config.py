"""Sweep config: YAML -> validated dataclasses, and the grid of trials it describes.

Everything a sweep needs is checked here before any trial starts (and, for the static part, before Ray
starts), so a typo costs seconds, not a queued cluster job. Errors are one line naming the file and the key:
`quickstart.yaml: training.lr: expected a positive number, got 'abc'`.
"""

from __future__ import annotations

import math
import os
import re
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import yaml

from crnn_ray import defaults
from crnn_ray.io import CliError

#: validation metrics a sweep can early-stop / schedule / rank on (all "higher is better")
VALID_METRICS = ("valid_ic", "valid_rank_ic", "valid_icir", "valid_pnl_long_short", "valid_pnl_long")
#: training keys that accept a list: each list becomes one axis of the grid
GRID_KEYS = ("lr", "batch_size", "weight_decay", "loss", "grad_clip")
LOSSES = ("mse", "ic")


# ----------------------------------------------------------------------------------------------- dataclasses
@dataclass
class DataConfig:
    path: str | None = None                 # an existing panel (parquet / csv); relative to the current directory
    synth: dict | None = None               # or: synthesise one (kwargs of crnn_ray.data.synthesize)
    lookback: int = defaults.LOOKBACK
    features: list[str] | None = None      # None: every feature of the panel
    label: str = defaults.LABEL
    splits: dict = field(default_factory=lambda: {"fractions": [0.6, 0.2, 0.2]})


@dataclass
class TrainingConfig:
    epochs: int = 5
    batch_size: Any = 512                   # int, or a list of ints (grid)
    lr: Any = 1e-3                          # float, or a list (grid)
    weight_decay: Any = 0.0
    loss: Any = "mse"                       # "mse" | "ic", or a list
    grad_clip: Any = 1.0                    # float | None, or a list
    rank_label: bool = True
    clip: float = 5.0
    early_stopping_metric: str = "valid_ic"
    patience: int = 3
    max_steps_per_epoch: int | None = None
    eval_batch_size: int = 4096
    compile: bool = False


@dataclass
class ResourcesConfig:
    gpus_per_trial: Any = "auto"            # "auto": 1 where the cluster has GPUs, else 0; fractions allowed
    cpus_per_trial: float = 1.0             # the worker's CPU grant = its torch thread quota
    max_concurrent_trials: Any = "auto"     # "auto": cluster GPUs / gpus_per_trial (CPUs / cpus_per_trial)
    driver_memory_mb: int = 256             # reserved for each trial's driver (Tune trainable + Train controller)
    cpu_quota: bool = True                  # false: torch may use every core of the node (the seed's setting)


@dataclass
class SchedulerConfig:
    type: str = "fifo"                      # "fifo" | "asha"
    metric: str | None = None               # None: training.early_stopping.metric
    grace_period: int = 1                   # asha: epochs every trial gets before it can be pruned
    reduction_factor: float = 2.0           # asha: keep 1/reduction_factor of the trials at each rung


@dataclass
class FaultToleranceConfig:
    max_failures: int = 2                   # Train: restarts of a dead worker, from its last checkpoint
    trial_max_failures: int = 1             # Tune: reruns of a failed trial (same Train run name -> resumes)
    start_timeout_s: float = 120.0          # Train: how long a worker group may wait for its resources
    start_retries: int = 2                  # Train: worker-group start-ups tried again before the trial fails


@dataclass
class SweepConfig:
    name: str
    data: DataConfig
    variants: list[str]                     # as written (ids, globs, inline specs)
    seeds: list[int]
    training: TrainingConfig
    resources: ResourcesConfig
    scheduler: SchedulerConfig
    fault_tolerance: FaultToleranceConfig
    source: str = ""                        # the file it came from (for messages)
    resolved_variants: list[tuple[str, str]] = field(default_factory=list)  # (variant_id, spec)

    def to_dict(self) -> dict:
        """The resolved config as plain YAML-able data (written to DIR/NAME/config.yaml)."""
        training = asdict(self.training)
        training["early_stopping"] = {
            "metric": training.pop("early_stopping_metric"),
            "patience": training.pop("patience"),
        }
        return {
            "name": self.name,
            "data": asdict(self.data),
            "variants": list(self.variants),
            "seeds": list(self.seeds),
            "training": training,
            "resources": asdict(self.resources),
            "scheduler": asdict(self.scheduler),
            "fault_tolerance": asdict(self.fault_tolerance),
        }

    def grid(self) -> list[dict]:
        """Every trial: variant x seed x hyperparameter combination, in a stable order with stable keys."""
        axes = [(k, v) for k in GRID_KEYS for v in [getattr(self.training, k)] if isinstance(v, list)]
        combos: list[dict] = [{}]
        for key, values in axes:
            combos = [{**c, key: v} for c in combos for v in values]
        trials = []
        for variant_id, spec in self.resolved_variants:
            for hp in combos:
                for seed in self.seeds:
                    idx = len(trials)
                    trials.append({
                        "key": f"t{idx:03d}",
                        "variant_id": variant_id,
                        "spec": spec,
                        "seed": int(seed),
                        "hparams": {k: self._scalar(k, hp) for k in GRID_KEYS},
                        "grid": dict(hp),
                    })
        return trials

    def _scalar(self, key: str, overrides: dict) -> Any:
        return overrides[key] if key in overrides else getattr(self.training, key)

    def train_config_kwargs(self, trial: dict) -> dict:
        """Keyword arguments of crnn_ray.train.TrainConfig for one trial of the grid."""
        t = self.training
        return {
            "label": self.data.label,
            "lookback": self.data.lookback,
            "epochs": t.epochs,
            "batch_size": int(trial["hparams"]["batch_size"]),
            "lr": float(trial["hparams"]["lr"]),
            "weight_decay": float(trial["hparams"]["weight_decay"]),
            "loss": trial["hparams"]["loss"],
            "rank_label": t.rank_label,
            "clip": t.clip,
            "grad_clip": trial["hparams"]["grad_clip"],
            "early_stopping_metric": t.early_stopping_metric,
            "patience": t.patience,
            "max_steps_per_epoch": t.max_steps_per_epoch,
            "eval_batch_size": t.eval_batch_size,
            "seed": int(trial["seed"]),
            "compile": t.compile,
        }

    @property
    def schedule_metric(self) -> str:
        return self.scheduler.metric or self.training.early_stopping_metric


# ------------------------------------------------------------------------------------------------ validation
class _Checker:
    """Typed getters that raise one-line CliErrors naming `file: key`."""

    def __init__(self, source: str):
        self.source = source

    def fail(self, key: str, msg: str) -> CliError:
        return CliError(f"{self.source}: {key}: {msg}")

    def mapping(self, value: Any, key: str, allowed: tuple[str, ...]) -> dict:
        if value is None:
            return {}
        if not isinstance(value, dict):
            raise self.fail(key, f"expected a mapping, got {_show(value)}")
        for k in value:
            if k not in allowed:
                raise self.fail(f"{key}.{k}" if key else str(k),
                                f"unknown key (allowed: {', '.join(allowed)})")
        return value

    def number(self, value: Any, key: str, *, positive=False, nonneg=False, integer=False) -> float | int:
        what = "integer" if integer else "number"
        kind = f"a positive {what}" if positive else f"a non-negative {what}" if nonneg else f"a {what}"
        num = _as_number(value)
        if num is None or (integer and float(num) != int(num)):
            raise self.fail(key, f"expected {kind}, got {_show(value)}")
        if (positive and not num > 0) or (nonneg and not num >= 0):
            raise self.fail(key, f"expected {kind}, got {_show(value)}")
        return int(num) if integer else float(num)

    def boolean(self, value: Any, key: str) -> bool:
        if not isinstance(value, bool):
            raise self.fail(key, f"expected true or false, got {_show(value)}")
        return value

    def string(self, value: Any, key: str, choices: tuple[str, ...] | None = None) -> str:
        if not isinstance(value, str) or not value:
            raise self.fail(key, f"expected a string, got {_show(value)}")
        if choices and value not in choices:
            raise self.fail(key, f"expected one of {', '.join(choices)}, got {_show(value)}")
        return value

    def grid(self, value: Any, key: str, one) -> Any:
        """A scalar, or a non-empty list of them (one grid axis)."""
        if isinstance(value, list):
            if not value:
                raise self.fail(key, "an empty list gives an empty grid")
            out = [one(v, f"{key}[{i}]") for i, v in enumerate(value)]
            if len(set(map(repr, out))) != len(out):
                raise self.fail(key, f"duplicate values in {_show(value)}")
            return out if len(out) > 1 else out[0]
        return one(value, key)


def _as_number(value: Any) -> float | None:
    if isinstance(value, bool):
        return None
    if isinstance(value, (int, float)):
        return float(value) if math.isfinite(value) else None
    if isinstance(value, str):  # YAML 1.1 reads `1e-3` as a string
        try:
            num = float(value.strip())
        except ValueError:
            return None
        return num if math.isfinite(num) else None
    return None


def _show(value: Any) -> str:
    text = repr(value)
    return text if len(text) <= 60 else text[:57] + "..."


TOP_KEYS = ("name", "data", "variants", "seeds", "training", "resources", "scheduler", "fault_tolerance")
DATA_KEYS = ("path", "synth", "lookback", "features", "label", "splits")
SPLIT_KEYS = ("fractions", "train", "valid", "test", "embargo")
TRAINING_KEYS = ("epochs", "batch_size", "lr", "weight_decay", "loss", "grad_clip", "rank_label", "clip",
                 "early_stopping", "max_steps_per_epoch", "eval_batch_size", "compile")
EARLY_KEYS = ("metric", "patience")
RESOURCE_KEYS = ("gpus_per_trial", "cpus_per_trial", "max_concurrent_trials", "driver_memory_mb", "cpu_quota")
SCHEDULER_KEYS = ("type", "metric", "grace_period", "reduction_factor")
FAULT_KEYS = ("max_failures", "trial_max_failures", "start_timeout_s", "start_retries")


def load_config(path: str | os.PathLike, *, resolve: bool = True) -> SweepConfig:
    """Read and statically validate a sweep YAML (no data read, no Ray): CliError naming the key on failure.

    `resolve=True` also resolves the variants against the zoo (ids, globs, inline specs).
    """
    path = Path(path)
    source = path.name
    if not path.is_file():
        raise CliError(f"{path}: config file not found")
    try:
        raw = yaml.safe_load(path.read_text())
    except yaml.YAMLError as exc:
        mark = getattr(exc, "problem_mark", None)
        where = f" (line {mark.line + 1})" if mark is not None else ""
        raise CliError(f"{source}: not valid YAML{where}: {getattr(exc, 'problem', None) or exc}") from None
    if raw is None:
        raw = {}
    return parse_config(raw, source=source, default_name=path.stem, resolve=resolve)


def parse_config(raw: Any, *, source: str = "config.yaml", default_name: str = "sweep",
                 resolve: bool = True) -> SweepConfig:
    """Validate an already-parsed config mapping (see load_config)."""
    c = _Checker(source)
    if not isinstance(raw, dict):
        raise CliError(f"{source}: expected a mapping at the top level, got {_show(raw)}")
    c.mapping(raw, "", TOP_KEYS)

    name = raw.get("name", default_name)
    name = c.string(name, "name")
    if not re.fullmatch(r"[A-Za-z0-9][A-Za-z0-9_.-]*", name):
        raise c.fail("name", f"use letters, digits, '_', '-', '.' only, got {_show(name)}")

    data = _parse_data(c, raw.get("data"))
    variants = _parse_variants(c, raw.get("variants"))
    seeds = _parse_seeds(c, raw.get("seeds", [0]))
    training = _parse_training(c, raw.get("training"))
    resources = _parse_resources(c, raw.get("resources"))
    scheduler = _parse_scheduler(c, raw.get("scheduler"), training)
    fault = _parse_fault(c, raw.get("fault_tolerance"))

    cfg = SweepConfig(name=name, data=data, variants=variants, seeds=seeds, training=training,
                      resources=resources, scheduler=scheduler, fault_tolerance=fault, source=source)
    if resolve:
        cfg.resolved_variants = resolve_variant_items(c, variants)
    return cfg


def _parse_data(c: _Checker, raw: Any) -> DataConfig:
    raw = c.mapping(raw, "data", DATA_KEYS)
    d = DataConfig()
    path, synth = raw.get("path"), raw.get("synth")
    if path is not None and synth is not None:
        raise c.fail("data", "give either data.path or data.synth, not both")
    if path is None and synth is None:
        synth = {}
    if path is not None:
        d.path = c.string(path, "data.path")
    else:
        if not isinstance(synth, dict):
            raise c.fail("data.synth", f"expected a mapping, got {_show(synth)}")
        d.synth = _parse_synth(c, synth)
    d.lookback = c.number(raw.get("lookback", d.lookback), "data.lookback", positive=True, integer=True)
    if d.lookback < 2:
        raise c.fail("data.lookback", f"expected an integer >= 2, got {d.lookback}")
    feats = raw.get("features")
    if feats is not None:
        if not isinstance(feats, list) or not feats or not all(isinstance(f, str) and f for f in feats):
            raise c.fail("data.features", f"expected a non-empty list of column names, got {_show(feats)}")
        if len(set(feats)) != len(feats):
            raise c.fail("data.features", "duplicate column names")
        d.features = list(feats)
    if raw.get("label") is not None:
        d.label = c.string(raw["label"], "data.label")
    elif d.synth is not None:  # the synthetic market names its label after its horizon
        d.label = f"y{d.synth.get('horizon', defaults.HORIZON)}"
    d.splits = _parse_splits(c, raw.get("splits", d.splits))
    return d


#: data.synth keys -> crnn_ray.data.synthesize keyword (the sweep config speaks the CLI's words)
SYNTH_KEYS = {"symbols": "n_symbols", "days": "n_days", "seed": "seed", "horizon": "horizon",
              "signal_strength": "signal_strength"}
SYNTH_MIN = {"symbols": 10, "days": 60, "horizon": 1, "seed": 0}


def _parse_synth(c: _Checker, synth: dict) -> dict:
    c.mapping(synth, "data.synth", tuple(SYNTH_KEYS))
    out = {}
    for key, value in synth.items():
        where = f"data.synth.{key}"
        if key == "signal_strength":
            out[key] = c.number(value, where, nonneg=True)
            continue
        out[key] = c.number(value, where, nonneg=True, integer=True)
        if out[key] < SYNTH_MIN[key]:
            raise c.fail(where, f"expected an integer >= {SYNTH_MIN[key]}, got {out[key]}")
    return out


def synth_kwargs(synth: dict) -> dict:
    """data.synth as keyword arguments of crnn_ray.data.synthesize."""
    return {SYNTH_KEYS[k]: v for k, v in synth.items()}


def _parse_splits(c: _Checker, raw: Any) -> dict:
    raw = c.mapping(raw, "data.splits", SPLIT_KEYS)
    out: dict = {}
    has_dates = any(k in raw for k in ("train", "valid", "test"))
    if "fractions" in raw and has_dates:
        raise c.fail("data.splits", "give either fractions or train/valid/test date ranges, not both")
    if has_dates:
        for part in ("train", "valid", "test"):
            rng = raw.get(part)
            if (not isinstance(rng, list) or len(rng) != 2):
                raise c.fail(f"data.splits.{part}", f"expected [first_date, last_date], got {_show(rng)}")
            out[part] = [str(x) for x in rng]
    else:
        fr = raw.get("fractions", [0.6, 0.2, 0.2])
        if not isinstance(fr, list) or len(fr) != 3:
            raise c.fail("data.splits.fractions", f"expected 3 numbers [train, valid, test], got {_show(fr)}")
        vals = [c.number(v, f"data.splits.fractions[{i}]", positive=True) for i, v in enumerate(fr)]
        if sum(vals) > 1.0 + 1e-9:
            raise c.fail("data.splits.fractions", f"fractions sum to {sum(vals):g} > 1")
        out["fractions"] = vals
    if raw.get("embargo") is not None:
        out["embargo"] = c.number(raw["embargo"], "data.splits.embargo", nonneg=True, integer=True)
    return out


def _parse_variants(c: _Checker, raw: Any) -> list[str]:
    if raw is None:
        raise c.fail("variants", "missing: list zoo ids (convgru/m05), globs (cnn1d/*) or inline specs")
    if isinstance(raw, str):
        raw = [raw]
    if not isinstance(raw, list) or not raw:
        raise c.fail("variants", f"expected a non-empty list, got {_show(raw)}")
    for i, item in enumerate(raw):
        if not isinstance(item, str) or not item.strip():
            raise c.fail(f"variants[{i}]", f"expected a zoo id, glob or spec string, got {_show(item)}")
    return [s.strip() for s in raw]


def resolve_variant_items(c: _Checker, items: list[str]) -> list[tuple[str, str]]:
    """Resolve each item on its own (so an error names its index); drop duplicates, keep the first."""
    from crnn_ray.zoo import load_zoo, resolve_variants

    zoo = load_zoo()
    seen: dict[str, str] = {}
    for i, item in enumerate(items):
        try:
            pairs = resolve_variants([item], zoo)
        except CliError as exc:
            raise c.fail(f"variants[{i}]", str(exc)) from None
        except (ValueError, KeyError, TypeError) as exc:
            raise c.fail(f"variants[{i}]", f"{item!r}: {exc}") from None
        if not pairs:
            raise c.fail(f"variants[{i}]", f"{item!r} matches no zoo entry")
        for variant_id, spec in pairs:
            seen.setdefault(variant_id, spec)
    return list(seen.items())


def _parse_seeds(c: _Checker, raw: Any) -> list[int]:
    if isinstance(raw, int) and not isinstance(raw, bool):
        if raw < 1:
            raise c.fail("seeds", f"expected a count >= 1 or a list of seeds, got {raw}")
        return list(range(raw))
    if not isinstance(raw, list) or not raw:
        raise c.fail("seeds", f"expected a list of integers (or a count), got {_show(raw)}")
    out = [c.number(v, f"seeds[{i}]", nonneg=True, integer=True) for i, v in enumerate(raw)]
    if len(set(out)) != len(out):
        raise c.fail("seeds", f"duplicate seeds in {_show(raw)}")
    return out


def _parse_training(c: _Checker, raw: Any) -> TrainingConfig:
    raw = c.mapping(raw, "training", TRAINING_KEYS)
    t = TrainingConfig()
    g = lambda key, default: raw.get(key, default)  # noqa: E731
    t.epochs = c.number(g("epochs", t.epochs), "training.epochs", positive=True, integer=True)
    t.batch_size = c.grid(g("batch_size", t.batch_size), "training.batch_size",
                          lambda v, k: c.number(v, k, positive=True, integer=True))
    t.lr = c.grid(g("lr", t.lr), "training.lr", lambda v, k: c.number(v, k, positive=True))
    t.weight_decay = c.grid(g("weight_decay", t.weight_decay), "training.weight_decay",
                            lambda v, k: c.number(v, k, nonneg=True))
    t.loss = c.grid(g("loss", t.loss), "training.loss", lambda v, k: c.string(v, k, LOSSES))
    t.grad_clip = c.grid(g("grad_clip", t.grad_clip), "training.grad_clip",
                         lambda v, k: None if v is None else c.number(v, k, positive=True))
    t.rank_label = c.boolean(g("rank_label", t.rank_label), "training.rank_label")
    t.clip = c.number(g("clip", t.clip), "training.clip", positive=True)
    es = c.mapping(raw.get("early_stopping"), "training.early_stopping", EARLY_KEYS)
    t.early_stopping_metric = c.string(es.get("metric", t.early_stopping_metric),
                                       "training.early_stopping.metric", VALID_METRICS)
    t.patience = c.number(es.get("patience", t.patience), "training.early_stopping.patience",
                          positive=True, integer=True)
    msp = g("max_steps_per_epoch", None)
    t.max_steps_per_epoch = None if msp is None else c.number(msp, "training.max_steps_per_epoch",
                                                              positive=True, integer=True)
    t.eval_batch_size = c.number(g("eval_batch_size", t.eval_batch_size), "training.eval_batch_size",
                                 positive=True, integer=True)
    t.compile = c.boolean(g("compile", t.compile), "training.compile")
    return t


def _parse_resources(c: _Checker, raw: Any) -> ResourcesConfig:
    raw = c.mapping(raw, "resources", RESOURCE_KEYS)
    r = ResourcesConfig()
    gpus = raw.get("gpus_per_trial", r.gpus_per_trial)
    if gpus != "auto":
        gpus = c.number(gpus, "resources.gpus_per_trial", nonneg=True)
        if gpus > 1 and gpus != int(gpus):
            raise c.fail("resources.gpus_per_trial", f"fractions are allowed below 1 only, got {gpus:g}")
    r.gpus_per_trial = gpus
    r.cpus_per_trial = c.number(raw.get("cpus_per_trial", r.cpus_per_trial), "resources.cpus_per_trial",
                                positive=True)
    mct = raw.get("max_concurrent_trials", r.max_concurrent_trials)
    r.max_concurrent_trials = mct if mct == "auto" else c.number(
        mct, "resources.max_concurrent_trials", positive=True, integer=True)
    r.driver_memory_mb = c.number(raw.get("driver_memory_mb", r.driver_memory_mb), "resources.driver_memory_mb",
                                  positive=True, integer=True)
    r.cpu_quota = c.boolean(raw.get("cpu_quota", r.cpu_quota), "resources.cpu_quota")
    return r


def _parse_scheduler(c: _Checker, raw: Any, training: TrainingConfig) -> SchedulerConfig:
    raw = c.mapping(raw, "scheduler", SCHEDULER_KEYS)
    s = SchedulerConfig()
    s.type = c.string(raw.get("type", s.type), "scheduler.type", ("fifo", "asha"))
    if raw.get("metric") is not None:
        s.metric = c.string(raw["metric"], "scheduler.metric", VALID_METRICS)
    s.grace_period = c.number(raw.get("grace_period", s.grace_period), "scheduler.grace_period",
                              positive=True, integer=True)
    s.reduction_factor = c.number(raw.get("reduction_factor", s.reduction_factor), "scheduler.reduction_factor",
                                  positive=True)
    if s.reduction_factor <= 1:
        raise c.fail("scheduler.reduction_factor", f"expected a number > 1, got {s.reduction_factor:g}")
    if s.type == "asha" and s.grace_period > training.epochs:
        raise c.fail("scheduler.grace_period",
                     f"{s.grace_period} exceeds training.epochs ({training.epochs}): nothing would be pruned")
    return s


def _parse_fault(c: _Checker, raw: Any) -> FaultToleranceConfig:
    raw = c.mapping(raw, "fault_tolerance", FAULT_KEYS)
    f = FaultToleranceConfig()
    f.max_failures = c.number(raw.get("max_failures", f.max_failures), "fault_tolerance.max_failures",
                              nonneg=True, integer=True)
    f.trial_max_failures = c.number(raw.get("trial_max_failures", f.trial_max_failures),
                                    "fault_tolerance.trial_max_failures", nonneg=True, integer=True)
    f.start_timeout_s = c.number(raw.get("start_timeout_s", f.start_timeout_s), "fault_tolerance.start_timeout_s",
                                 positive=True)
    f.start_retries = c.number(raw.get("start_retries", f.start_retries), "fault_tolerance.start_retries",
                               nonneg=True, integer=True)
    return f

