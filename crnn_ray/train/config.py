"""TrainConfig: the one training schema.

Every training hyperparameter is one field here, with its default and its check. The sweep's `training:`
section is "TrainConfig fields" (the ones marked `sweep=True` may be lists, one grid axis each); label,
lookback and seed come from the sweep's `data:` and `seeds:` instead. Adding a hyperparameter is one line
here (and its use in the loop).
"""

from __future__ import annotations

from dataclasses import dataclass, fields

from crnn_ray import defaults
from crnn_ray.config import (Checker, _as_number, auto_or, boolean, choice, int_at_least, nonneg_int,
                             nonneg_number, optional, positive_int, positive_number, setting, show, text)
from crnn_ray.io import CliError
from crnn_ray.schema import LOSSES, STOPPING_METRICS


def _above_one(c: Checker, value, key: str) -> float:
    num = _as_number(value)
    if num is None or num <= 1:  # at 1 a constant prediction would already count as diverged
        raise c.fail(key, f"expected a number > 1 (a constant prediction scores 1), got {show(value)}")
    return float(num)


#: eval_batch_size "auto" per device type (TrainConfig.eval_batch)
EVAL_BATCH = {"cpu": 256, "cuda": 8192}

#: torch.compile's modes (`compile` also takes true / false)
_compile_mode = choice("default", "reduce-overhead", "max-autotune", "max-autotune-no-cudagraphs")


@dataclass
class TrainConfig:
    """Everything that shapes one training run besides the model spec and the data."""

    label: str = setting(defaults.LABEL, check=text)
    lookback: int = setting(defaults.LOOKBACK, check=int_at_least(1))
    epochs: int = setting(5, check=positive_int)
    batch_size: int = setting(512, check=positive_int, sweep=True)
    lr: float = setting(1e-3, check=positive_number, sweep=True)
    weight_decay: float = setting(0.0, check=nonneg_number, sweep=True)
    # "mse" on the (ranked) label, or "ic": negative mean per-day Pearson IC, batches made of whole days
    loss: str = setting("mse", check=choice(*LOSSES), sweep=True)
    rank_label: bool = setting(True, check=boolean)
    clip: float = setting(5.0, check=positive_number)
    grad_clip: float | None = setting(1.0, check=optional(positive_number), sweep=True)
    early_stopping_metric: str = setting("valid_rank_ic", check=choice(*STOPPING_METRICS),
                                         yaml_key="early_stopping.metric")
    patience: int = setting(3, check=positive_int, yaml_key="early_stopping.patience")
    max_steps_per_epoch: int | None = setting(None, check=optional(positive_int))
    # rows per validation forward pass; "auto": EVAL_BATCH["cpu"] on a CPU, where larger batches spill the cache
    # (1.5-1.9x slower per row at 4096 than at 512), EVAL_BATCH["cuda"] on a GPU, where small ones are launch-bound
    eval_batch_size: int | str = setting("auto", check=auto_or(positive_int))
    # the select part, which only ranks runs, is scored with the weights the valid part chose: "end" once, after
    # the last epoch; "best" at every new best epoch (a run stopped from outside, by the ASHA scheduler, then
    # still has its select_* metrics). Both give the same numbers.
    select_scoring: str = setting("end", check=choice("end", "best"))
    # storage of the normalised feature cube (one per node, shared by every model there): "float16" and
    # "bfloat16" halve it; batches are computed in float32 either way (docs/data.md, "One normalised panel")
    x_dtype: str = setting("float32", check=choice("float32", "float16", "bfloat16"))
    # validation budget (docs/training.md, "Validation budget"); the defaults validate everything every epoch.
    # eval_max_days: score the valid part on at most this many evenly spaced days, the same days every epoch
    # (null: all); the select part, which ranks runs, is always scored whole
    eval_max_days: int | None = setting(None, check=optional(positive_int))
    # validate (valid and select) every N epochs and always at the last epoch; the others report NaN metrics
    eval_every: int = setting(1, check=positive_int)
    seed: int = setting(0, check=nonneg_int)
    # torch.compile: false (eager), true (its default mode) or a mode name, e.g. "reduce-overhead" (CUDA graphs
    # of the fixed-shape GPU step); a pack's stack of members compiles its vmapped step with it (docs/training.md)
    compile: bool | str = setting(False, check=lambda c, v, k: v if isinstance(v, bool) else _compile_mode(c, v, k))
    # "mse": an epoch whose mean train loss exceeds this many times the training target's variance (what a
    # constant prediction scores) ends the run "diverged"; null: no bound (docs/training.md, "Divergence")
    max_loss_ratio: float | None = setting(100.0, check=optional(_above_one))
    # "ic": the loss is scale-free and bounded, so a blow-up (say lr 1e3) shows in the weights instead: an epoch
    # that leaves their RMS above this many times its value at initialisation ends the run "diverged"; null: none
    max_weight_growth: float | None = setting(100.0, check=optional(_above_one))

    def compile_mode(self) -> str | None:
        """The torch.compile mode `compile` asks for (None: eager)."""
        return None if self.compile is False else "default" if self.compile is True else str(self.compile)

    def validate(self) -> "TrainConfig":
        """Check (and normalise, e.g. "1e-3" -> 0.001) every field; CliError naming the first bad key."""
        c = Checker("train config")
        for f in fields(self):
            setattr(self, f.name, f.metadata["check"](c, getattr(self, f.name), repr(f.name)))
        return self

    def eval_batch(self, device_type: str) -> int:
        """Rows per validation forward pass on a device of this type ("cpu", "cuda", ...)."""
        if self.eval_batch_size != "auto":
            return int(self.eval_batch_size)
        return EVAL_BATCH.get(device_type, EVAL_BATCH["cuda"])

    @classmethod
    def from_dict(cls, values: dict) -> "TrainConfig":
        """Build from a plain dict of field values; an unknown key is a CliError naming it."""
        known = [f.name for f in fields(cls)]
        for key in values:
            if key not in known:
                raise CliError(f"train config: unknown key {key!r} (known: {', '.join(sorted(known))})")
        return cls(**values).validate()


#: the fields a sweep may turn into grid axes (a list of values in its `training:` section)
SWEEPABLE: tuple[str, ...] = tuple(f.name for f in fields(TrainConfig) if f.metadata["sweep"])
