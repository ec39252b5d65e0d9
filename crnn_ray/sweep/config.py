"""Sweep config: YAML -> validated dataclasses, and the grid of trials it describes.

Everything a sweep needs is checked here before any trial starts (and, for the static part, before Ray
starts), so a typo costs seconds, not a queued cluster job. Each section is a dataclass whose fields declare
their defaults and checks (crnn_ray/config.py); the `training:` section is crnn_ray.train.TrainConfig itself
(its `sweep=True` fields may be lists, one grid axis each). Errors are one line naming the file and the key:
`quickstart.yaml: training.lr: expected a positive number, got 'abc'`.
"""

from __future__ import annotations

import dataclasses
import math
import os
import re
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

from crnn_ray import defaults
from crnn_ray.config import (Checker, auto_or, boolean, choice, int_at_least, load_yaml, names, nonneg_int,
                             nonneg_number, optional, positive_int, positive_number, read_section, section_dict, setting, show,
                             text)
from crnn_ray.data.splits import WALK_FORWARD_KEYS, window_key
from crnn_ray.io import CliError
from crnn_ray.schema import STOPPING_METRICS, selection_twin
from crnn_ray.tracking import TrackingConfig
from crnn_ray.train.config import SWEEPABLE, TrainConfig
from crnn_ray.zoo import load_zoo, resolve_variants

#: share of the valid part given to the selection part when data.splits uses fractions and says nothing
DEFAULT_SELECT_SHARE = 0.5
#: TrainConfig fields a sweep sets from other sections, not from `training:`
TRAINING_ELSEWHERE = {"label": "data.label", "lookback": "data.lookback", "seed": "seeds"}


# ----------------------------------------------------------------------------------------------- sections
def _gpus(c: Checker, value: Any, key: str):
    if value == "auto":
        return value
    gpus = nonneg_number(c, value, key)
    if gpus > 1 and gpus != int(gpus):
        raise c.fail(key, f"fractions are allowed below 1 only, got {gpus:g}")
    return gpus


@dataclass
class DataConfig:
    path: str | None = setting(None, check=optional(text))   # an existing panel (parquet / csv)
    synth: dict | None = setting(None)                         # or: synthesise one (checked by _parse_synth)
    lookback: int = setting(defaults.LOOKBACK, check=int_at_least(2))
    features: list[str] | None = setting(None, check=optional(names))  # None: every feature of the panel
    label: str = setting(defaults.LABEL, check=text)
    min_part_days: int = setting(20, check=positive_int)  # a valid / select part shorter than this is refused
    # select: the share of the valid part that ranks runs and picks members (after an embargo); the rest
    # chooses each run's epoch. 0 turns it off (ranking then uses the epoch-choosing split: optimistic).
    splits: dict = setting(default_factory=lambda: {"fractions": [0.6, 0.2, 0.2], "select": DEFAULT_SELECT_SHARE})
    # or: rolling retrain windows (crnn_ray.data.walk_forward_splits): {train: N | expanding, valid, select,
    # step, embargo, first_test, windows}; every trial of the grid is trained once per window
    walk_forward: dict | None = setting(None)


@dataclass
class ResourcesConfig:
    gpus_per_trial: Any = setting("auto", check=_gpus)  # "auto": 1 where the cluster has GPUs, else 0
    cpus_per_trial: float = setting(1.0, check=positive_number)  # the worker's CPU grant = its thread quota
    max_concurrent_trials: Any = setting("auto", check=auto_or(positive_int))  # "auto": from the cluster
    # memory resource (MiB) of each Train run's bookkeeping, all on the Tune trainable's node: trainable +
    # TrainController + SynchronizationActor + _QueueActor + PreemptionWatcher, measured 1298 MiB RSS (1497
    # with the DatasetManager a Ray without ray_compat.lean_torch_trainer's hook still starts;
    # bench/bookkeeping_placement.py; docs/operations.md, "Sizing the head")
    driver_memory_mb: int = setting(1536, check=positive_int)
    cpu_quota: bool = setting(True, check=boolean)  # false: torch may use every core (the seed's setting)
    # models one Train run trains one after another (a "pack"): "auto" fills the concurrent slots evenly
    models_per_trial: Any = setting("auto", check=auto_or(positive_int))
    # models of one spec (seeds, settings that keep the shapes, windows of one line) a worker trains as one
    # stacked module (crnn_ray.train.train_stacked): "auto" = 1 on a CPU, 8 on a GPU (placement.STACK_AUTO)
    stack_size: Any = setting("auto", check=auto_or(positive_int))
    # the largest grid a sweep accepts (windows x variants x hyperparameter combinations x seeds): a typo in a
    # list can ask for millions of trials, which would hang while the grid is built
    max_trials: int = setting(100_000, check=positive_int)


@dataclass
class SchedulerConfig:
    type: str = setting("fifo", check=choice("fifo", "asha"))
    metric: str | None = setting(None, check=optional(choice(*STOPPING_METRICS)))  # None: early stopping's
    grace_period: int = setting(1, check=positive_int)        # asha: epochs every trial gets before pruning
    reduction_factor: float = setting(2.0, check=positive_number)  # asha: keep 1/reduction_factor per rung


@dataclass
class FaultToleranceConfig:
    max_failures: int = setting(2, check=nonneg_int)          # Train: restarts of a dead worker
    trial_max_failures: int = setting(1, check=nonneg_int)    # Tune: reruns of a failed trial
    start_timeout_s: float = setting(120.0, check=positive_number)  # Train: wait for the worker's resources
    start_retries: int = setting(2, check=nonneg_int)         # Train: worker-group start-ups tried again


@dataclass
class SweepConfig:
    name: str
    data: DataConfig
    variants: list[str]                     # as written (ids, globs, inline specs)
    seeds: list[int]
    training: TrainConfig                   # scalars, or lists for the SWEEPABLE fields (grid axes)
    resources: ResourcesConfig
    scheduler: SchedulerConfig
    fault_tolerance: FaultToleranceConfig
    tracking: TrackingConfig = field(default_factory=TrackingConfig)  # MLflow + TensorBoard (crnn_ray.tracking)
    source: str = ""                        # the file it came from (for messages)
    resolved_variants: list[tuple[str, str]] = field(default_factory=list)  # (variant_id, spec)

    def to_dict(self) -> dict:
        """The resolved config as plain YAML-able data (written to DIR/NAME/config.yaml)."""
        return {
            "name": self.name,
            "data": {k: v for k, v in asdict(self.data).items()
                     if not (k == "walk_forward" and v is None) and not (k == "splits" and self.walk_forward)},
            "variants": list(self.variants),
            "seeds": list(self.seeds),
            "training": section_dict(self.training, skip=tuple(TRAINING_ELSEWHERE)),
            "resources": asdict(self.resources),
            "scheduler": asdict(self.scheduler),
            "fault_tolerance": asdict(self.fault_tolerance),
            "tracking": asdict(self.tracking),
        }

    @property
    def walk_forward(self) -> bool:
        return self.data.walk_forward is not None

    @property
    def has_select(self) -> bool:
        """Whether every trial has a selection part (data.splits.select, or walk_forward.select > 0)."""
        if self.walk_forward:
            return float(self.data.walk_forward.get("select", DEFAULT_SELECT_SHARE)) > 0
        return "select" in self.data.splits

    def grid(self, n_windows: int = 1) -> list[dict]:
        """Every trial: (window x) variant x hyperparameter combination x seed, in a stable order with stable
        keys. With walk_forward the window is the outer axis and keys read `w03-t005` (the same `t005` in every
        window: one model line), so adding a window appends trials and leaves every earlier key as it was.

        Each trial carries its whole TrainConfig (`train_config`), so a trial is self-contained: it travels
        as its own Tune config, and `--resume` re-reads it from Tune's state.
        """
        if self.walk_forward:
            return [{**t, "key": f"{window_key(w)}-{t['key']}", "line": t["key"], "window": w}
                    for w in range(n_windows) for t in self._line_grid()]
        return self._line_grid()

    def grid_size(self, n_windows: int = 1) -> tuple[int, str]:
        """(number of trials, how it is made up) without building the grid."""
        axes = [len(v) for k in SWEEPABLE for v in [getattr(self.training, k)] if isinstance(v, list)]
        combos = math.prod(axes)
        n = n_windows * len(self.resolved_variants) * combos * len(self.seeds)
        return n, (f"{n_windows} window(s) x " if self.walk_forward else "") + (
            f"{len(self.resolved_variants)} variant(s) x {combos} hyperparameter combination(s) x "
            f"{len(self.seeds)} seed(s)")

    def check_grid_size(self, n_windows: int = 1) -> None:
        """CliError when the grid exceeds resources.max_trials (at --check and before anything is built)."""
        n, parts = self.grid_size(n_windows)
        if n > self.resources.max_trials:
            raise CliError(f"{self.source}: resources.max_trials: the grid has {n:,} trials ({parts}), more than "
                           f"{self.resources.max_trials:,}; shrink a list or raise the limit")

    def _line_grid(self) -> list[dict]:
        axes = [(k, v) for k in SWEEPABLE for v in [getattr(self.training, k)] if isinstance(v, list)]
        combos: list[dict] = [{}]
        for key, values in axes:
            combos = [{**c, key: v} for c in combos for v in values]
        trials = []
        for variant_id, spec in self.resolved_variants:
            for hp in combos:
                for seed in self.seeds:
                    config = dataclasses.replace(self.training, **hp, label=self.data.label,
                                                 lookback=self.data.lookback, seed=int(seed))
                    trials.append({
                        "key": f"t{len(trials):03d}",
                        "variant_id": variant_id,
                        "spec": spec,
                        "seed": int(seed),
                        "hparams": {k: getattr(config, k) for k in SWEEPABLE},
                        "grid": dict(hp),
                        "train_config": asdict(config),
                    })
        return trials

    def train_config_kwargs(self, trial: dict) -> dict:
        """Keyword arguments of crnn_ray.train.TrainConfig for one trial of the grid."""
        return dict(trial["train_config"])

    @property
    def models_per_trial(self):
        """resources.models_per_trial, except under ASHA: it prunes whole Tune trials, so one model each."""
        return 1 if self.scheduler.type == "asha" else self.resources.models_per_trial

    @property
    def schedule_metric(self) -> str:
        return self.scheduler.metric or self.training.early_stopping_metric

    @property
    def rank_metric(self) -> str:
        """What ranks the leaderboard: the schedule metric measured on the selection part when there is one
        (select_ic for valid_ic), since the valid part chose each run's epoch."""
        return selection_twin(self.schedule_metric) if self.has_select else self.schedule_metric


TOP_KEYS = ("name", "data", "variants", "seeds", "training", "resources", "scheduler", "fault_tolerance", "tracking")
SPLIT_KEYS = ("fractions", "train", "valid", "select", "test", "embargo")


def load_config(path: str | os.PathLike, *, resolve: bool = True) -> SweepConfig:
    """Read and statically validate a sweep YAML (no data read, no Ray): CliError naming the key on failure.

    `resolve=True` also resolves the variants against the zoo (ids, globs, inline specs).
    """
    path = Path(path)
    raw = load_yaml(path)
    return parse_config({} if raw is None else raw, source=path.name, default_name=path.stem, resolve=resolve)


def parse_config(raw: Any, *, source: str = "config.yaml", default_name: str = "sweep",
                 resolve: bool = True) -> SweepConfig:
    """Validate an already-parsed config mapping (see load_config)."""
    c = Checker(source)
    if not isinstance(raw, dict):
        raise CliError(f"{source}: expected a mapping at the top level, got {show(raw)}")
    c.mapping(raw, "", TOP_KEYS)

    name = text(c, raw.get("name", default_name), "name")
    if not re.fullmatch(r"[A-Za-z0-9][A-Za-z0-9_.-]*", name):
        raise c.fail("name", f"use letters, digits, '_', '-', '.' only, got {show(name)}")

    training = TrainConfig(**read_section(c, TrainConfig, raw.get("training"), "training", lists=True,
                                          skip=tuple(TRAINING_ELSEWHERE)))
    scheduler = SchedulerConfig(**read_section(c, SchedulerConfig, raw.get("scheduler"), "scheduler"))
    if scheduler.reduction_factor <= 1:
        raise c.fail("scheduler.reduction_factor", f"expected a number > 1, got {scheduler.reduction_factor:g}")
    resources = ResourcesConfig(**read_section(c, ResourcesConfig, raw.get("resources"), "resources"))
    if scheduler.type == "asha" and resources.models_per_trial not in ("auto", 1):
        raise c.fail("resources.models_per_trial", f"{resources.models_per_trial} models per Train run cannot run "
                     "under scheduler.type asha (it prunes whole trials): use 1 or auto (auto is 1 under asha)")
    if scheduler.type == "asha":  # a pruned trial never reaches its end: score select at each new best epoch
        if (raw.get("training") or {}).get("select_scoring") == "end":
            raise c.fail("training.select_scoring", "end scores the select part after the last epoch, which a "
                         "trial pruned by scheduler.type asha never reaches: use best (the default under asha)")
        training = dataclasses.replace(training, select_scoring="best")
    if scheduler.type == "asha" and scheduler.grace_period > training.epochs:
        raise c.fail("scheduler.grace_period", f"{scheduler.grace_period} exceeds training.epochs "
                     f"({training.epochs}): nothing would be pruned")
    cfg = SweepConfig(
        name=name, data=_parse_data(c, raw.get("data")), variants=_parse_variants(c, raw.get("variants")),
        seeds=_parse_seeds(c, raw.get("seeds", [0])), training=training,
        resources=resources, scheduler=scheduler,
        fault_tolerance=FaultToleranceConfig(**read_section(c, FaultToleranceConfig, raw.get("fault_tolerance"),
                                                            "fault_tolerance")),
        tracking=TrackingConfig(**read_section(c, TrackingConfig, raw.get("tracking"), "tracking")),
        source=source)
    if resolve:
        cfg.resolved_variants = resolve_variant_items(c, cfg.variants)
        cfg.check_grid_size()
    return cfg


def _parse_data(c: Checker, raw: Any) -> DataConfig:
    d = DataConfig(**read_section(c, DataConfig, raw, "data"))
    if d.path is not None and d.synth is not None:
        raise c.fail("data", "give either data.path or data.synth, not both")
    if d.path is None:
        if d.synth is None:
            d.synth = {}
        if not isinstance(d.synth, dict):
            raise c.fail("data.synth", f"expected a mapping, got {show(d.synth)}")
        d.synth = _parse_synth(c, d.synth)
        if "label" not in (raw or {}):  # the synthetic market names its label after its horizon
            d.label = f"y{d.synth.get('horizon', defaults.HORIZON)}"
    if d.walk_forward is not None:
        if "splits" in (raw or {}):
            raise c.fail("data.walk_forward", "give either data.splits or data.walk_forward, not both")
        d.walk_forward = _parse_walk_forward(c, d.walk_forward)
        d.splits = {}
    else:
        d.splits = _parse_splits(c, d.splits)
    return d


def _parse_walk_forward(c: Checker, raw: Any) -> dict:
    """The static checks (keys, types); the window arithmetic itself needs the panel's dates and is checked by
    crnn_ray.data.walk_forward_splits when the sweep (or --check) has them."""
    raw = c.mapping(raw, "data.walk_forward", WALK_FORWARD_KEYS)
    for key in ("train", "valid", "step"):
        if key not in raw:
            raise c.fail(f"data.walk_forward.{key}", "missing (walk_forward needs train, valid and step, in "
                         "trading days)")
    out = dict(raw)
    if out["train"] != "expanding":
        out["train"] = positive_int(c, out["train"], "data.walk_forward.train")
    out["valid"] = positive_int(c, out["valid"], "data.walk_forward.valid")
    out["step"] = positive_int(c, out["step"], "data.walk_forward.step")
    if out.get("select") is not None:
        out["select"] = nonneg_number(c, out["select"], "data.walk_forward.select")
    if out.get("embargo") is not None:
        out["embargo"] = nonneg_int(c, out["embargo"], "data.walk_forward.embargo")
    if out.get("windows") not in (None, "all"):
        out["windows"] = positive_int(c, out["windows"], "data.walk_forward.windows")
    if out.get("first_test") is not None:
        ft = out["first_test"]
        out["first_test"] = float(ft) if isinstance(ft, float) else str(ft)
    return out


#: data.synth keys -> crnn_ray.data.synthesize keyword (the sweep config speaks the CLI's words)
SYNTH_KEYS = {"symbols": "n_symbols", "days": "n_days", "seed": "seed", "horizon": "horizon",
              "signal_strength": "signal_strength", "preset": "preset"}  # preset: crnn_ray.data.synth.PRESETS
SYNTH_MIN = {"symbols": 10, "days": 60, "horizon": 1, "seed": 0}


def _parse_synth(c: Checker, synth: dict) -> dict:
    c.mapping(synth, "data.synth", tuple(SYNTH_KEYS))
    out = {}
    for key, value in synth.items():
        where = f"data.synth.{key}"
        if key == "signal_strength":
            out[key] = nonneg_number(c, value, where)
        elif key == "preset":
            out[key] = choice("easy", "realistic")(c, value, where)
        else:
            out[key] = int_at_least(SYNTH_MIN[key])(c, value, where)
    return out


def synth_kwargs(synth: dict) -> dict:
    """data.synth as keyword arguments of crnn_ray.data.synthesize."""
    return {SYNTH_KEYS[k]: v for k, v in synth.items()}


def _parse_splits(c: Checker, raw: Any) -> dict:
    raw = c.mapping(raw, "data.splits", SPLIT_KEYS)
    out: dict = {}
    has_dates = any(k in raw for k in ("train", "valid", "test"))
    if "fractions" in raw and has_dates:
        raise c.fail("data.splits", "give either fractions or train/valid/test date ranges, not both")
    if has_dates:
        for part in ("train", "valid", "test"):
            rng = raw.get(part)
            if not isinstance(rng, list) or len(rng) != 2:
                raise c.fail(f"data.splits.{part}", f"expected [first_date, last_date], got {show(rng)}")
            out[part] = [str(x) for x in rng]
    else:
        fr = raw.get("fractions", [0.6, 0.2, 0.2])
        if not isinstance(fr, list) or len(fr) != 3:
            raise c.fail("data.splits.fractions", f"expected 3 numbers [train, valid, test], got {show(fr)}")
        vals = [positive_number(c, v, f"data.splits.fractions[{i}]") for i, v in enumerate(fr)]
        if sum(vals) > 1.0 + 1e-9:
            raise c.fail("data.splits.fractions", f"fractions sum to {sum(vals):g} > 1")
        out["fractions"] = vals
    select = raw.get("select", None if has_dates else DEFAULT_SELECT_SHARE)
    if isinstance(select, list):
        if not has_dates or len(select) != 2:
            raise c.fail("data.splits.select", "a [first_date, last_date] selection part needs train/valid/test "
                         f"date ranges (with fractions give a share of the valid part), got {show(select)}")
        out["select"] = [str(x) for x in select]
    elif select is not None:
        share = nonneg_number(c, select, "data.splits.select")
        if share >= 1:
            raise c.fail("data.splits.select", f"expected a share of the valid part below 1, got {share:g}")
        if share > 0:
            out["select"] = share
    if raw.get("embargo") is not None:
        out["embargo"] = nonneg_int(c, raw["embargo"], "data.splits.embargo")
    return out


def _parse_variants(c: Checker, raw: Any) -> list[str]:
    if raw is None:
        raise c.fail("variants", "missing: list zoo ids (convgru/m05), globs (cnn1d/*) or inline specs")
    if isinstance(raw, str):
        raw = [raw]
    if not isinstance(raw, list) or not raw:
        raise c.fail("variants", f"expected a non-empty list, got {show(raw)}")
    for i, item in enumerate(raw):
        if not isinstance(item, str) or not item.strip():
            raise c.fail(f"variants[{i}]", f"expected a zoo id, glob or spec string, got {show(item)}")
    return [s.strip() for s in raw]


def resolve_variant_items(c: Checker, items: list[str]) -> list[tuple[str, str]]:
    """Resolve each item on its own (so an error names its index); drop duplicates, keep the first."""
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


def _parse_seeds(c: Checker, raw: Any) -> list[int]:
    if isinstance(raw, int) and not isinstance(raw, bool):
        if raw < 1:
            raise c.fail("seeds", f"expected a count >= 1 or a list of seeds, got {raw}")
        return list(range(raw))
    if not isinstance(raw, list) or not raw:
        raise c.fail("seeds", f"expected a list of integers (or a count), got {show(raw)}")
    out = [nonneg_int(c, v, f"seeds[{i}]") for i, v in enumerate(raw)]
    if len(set(out)) != len(out):
        raise c.fail("seeds", f"duplicate seeds in {show(raw)}")
    return out
