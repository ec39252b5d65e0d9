"""Which trained models join the ensemble, and the look-ahead rule that keeps their scores honest.

Members are ranked on a VALIDATION metric from the sweep's trials.parquet: picking on a test metric would
leak the test period into the ensemble, so it is refused. Diverged or failed trials never join. A member's
checkpoint tells which dates it has seen (train and valid windows plus the label embargo); scoring such a
date produces an in-sample signal, so it is refused unless the caller asks for it explicitly.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

from crnn_ray.io import CliError
from crnn_ray.schema import RANKED, SELECT_METRICS
from crnn_ray.score.config import DEFAULT_SELECT_BY
from crnn_ray.train import load_checkpoint

__all__ = ["Member", "read_trials", "select_members", "load_members", "check_look_ahead", "forbidden_window", "Unit",
           "select_units"]


@dataclass
class Member:
    """One ensemble member: its trial row, its checkpoint and (once loaded) its meta and weights."""

    name: str                 # column name in the signal files, e.g. "convgru/m01@seed0"
    trial_id: str
    variant_id: str
    spec: str
    seed: int
    checkpoint: Path
    valid_ic: float           # the member's validation IC (the ic_weighted weights)
    select_value: float       # the value of the selection metric
    meta: dict[str, Any] = field(default_factory=dict)
    state_dict: dict[str, Any] | None = None

    @property
    def lookback(self) -> int:
        return int(self.meta["lookback"])

    @property
    def features(self) -> list[str]:
        return list(self.meta["features"])

    def info(self) -> dict[str, Any]:
        """JSON-safe description for metrics.json and the report."""
        return {
            "trial_id": self.trial_id, "variant_id": self.variant_id, "spec": self.spec, "seed": self.seed,
            "checkpoint": str(self.checkpoint), "valid_ic": self.valid_ic, "select_value": self.select_value,
            "lookback": self.meta.get("lookback"), "label": self.meta.get("label"),
            "splits": self.meta.get("splits"), "best_epoch": self.meta.get("best_epoch"),
        }


def read_trials(exp_dir: str | Path, window: int | None = None) -> pd.DataFrame:
    """trials.parquet of an experiment directory; CliError naming the file when absent or unreadable.
    `window`: a walk-forward window's trials only."""
    exp_dir = Path(exp_dir)
    if not exp_dir.is_dir():
        raise CliError(f"{exp_dir}: experiment directory not found")
    path = exp_dir / "trials.parquet"
    if not path.is_file():
        raise CliError(f"{path}: missing (is {exp_dir} a finished sweep experiment?)")
    try:
        trials = pd.read_parquet(path)
    except Exception as exc:  # corrupt file: one line naming it
        raise CliError(f"{path}: cannot read ({type(exc).__name__})") from None
    for col in ("trial_id", "variant_id", "spec", "seed", "status", "checkpoint", "valid_ic"):
        if col not in trials.columns:
            raise CliError(f"{path}: missing column {col!r}")
    if window is not None:
        if "window" not in trials.columns:
            raise CliError(f"{path}: no column 'window' (not a walk-forward experiment)")
        trials = trials[trials["window"] == int(window)]
        if trials.empty:
            raise CliError(f"{path}: no trial of window w{int(window):02d}")
    return trials


def _check_metric(select_by: str, trials: pd.DataFrame, path: Path) -> None:
    if not select_by.startswith(("valid_", "select_")):
        kind = "a test metric" if select_by.startswith("test") else "not a validation metric"
        raise CliError(
            f"--select-by {select_by}: {kind}; members are chosen on validation metrics only "
            f"(choosing on test leaks the test period): use one of {', '.join(SELECT_METRICS)}"
        )
    if select_by not in trials.columns:
        raise CliError(f"{path}: no column {select_by!r} for --select-by (has {', '.join(SELECT_METRICS)})")
    if not pd.api.types.is_numeric_dtype(trials[select_by]):
        raise CliError(f"{path}: column {select_by!r} is not numeric")


def _member_name(variant_id: str, seed: int, trial_id: str, taken: set[str]) -> str:
    name = f"{variant_id}@seed{seed}"
    if name in taken or name in ("date", "symbol", "signal"):
        name = f"{name}#{trial_id}"
    return name


def select_members(exp_dir: str | Path, top_k: int, select_by: str = DEFAULT_SELECT_BY,
                   window: int | None = None) -> list[Member]:
    """Top-k eligible trials by `select_by` (descending; ties broken by trial_id, so the choice is stable);
    `window`: among one walk-forward window's trials (ranked on that window's selection part)."""
    exp_dir = Path(exp_dir)
    trials = read_trials(exp_dir, window)
    path = exp_dir / "trials.parquet"
    if int(top_k) != top_k or top_k < 1:
        raise CliError(f"--top-k must be a positive integer, got {top_k}")
    if select_by.startswith("select_") and (select_by not in trials.columns or trials[select_by].isna().all()):
        twin = "valid_" + select_by[len("select_"):]
        print(f"note: {path} has no {select_by} (the sweep had no selection split): selecting on {twin}, "
              "the split that also chose each member's epoch (optimistic)")
        select_by = twin
    _check_metric(select_by, trials, path)
    values = pd.to_numeric(trials[select_by], errors="coerce")
    eligible = trials[trials["status"].isin(RANKED) & np.isfinite(values) & trials["checkpoint"].notna()]
    print_excluded(trials.drop(eligible.index), values, select_by)
    if eligible.empty:
        statuses = ", ".join(f"{k}={v}" for k, v in trials["status"].value_counts().sort_index().items())
        raise CliError(f"{path}: no eligible trial (status in {list(RANKED)} with a finite {select_by} and a "
                       f"checkpoint); statuses: {statuses or 'none'}")
    order = eligible.assign(select_value_=values[eligible.index], trial_key_=eligible["trial_id"].astype(str))
    order = order.sort_values(["select_value_", "trial_key_"], ascending=[False, True], kind="mergesort")
    order = order.head(int(top_k))
    members: list[Member] = []
    taken: set[str] = set()
    for row in order.itertuples(index=False):
        ckpt = Path(str(row.checkpoint))
        if not ckpt.is_absolute():
            ckpt = exp_dir / ckpt
        name = _member_name(str(row.variant_id), int(row.seed), str(row.trial_id), taken)
        taken.add(name)
        valid_ic = float(row.valid_ic) if row.valid_ic is not None and math.isfinite(float(row.valid_ic)) \
            else math.nan
        members.append(Member(name=name, trial_id=str(row.trial_id), variant_id=str(row.variant_id),
                              spec=str(row.spec), seed=int(row.seed), checkpoint=ckpt, valid_ic=valid_ic,
                              select_value=float(row.select_value_)))
    return members


def print_excluded(excluded: pd.DataFrame, values: pd.Series, select_by: str) -> None:
    """One line per trial that may not join, and why: `excluded t001 convgru/m01@seed0: diverged (reason)`."""
    for row in excluded.sort_values("trial_id", key=lambda c: c.astype(str), kind="mergesort").itertuples():
        reason = str(getattr(row, "reason", "") or "")
        reason = "" if reason in ("nan", "None") else reason
        if row.status not in RANKED:
            why = f"{row.status}{f' ({reason})' if reason else ''}"
        elif not np.isfinite(values[row.Index]):
            why = f"{row.status} but no finite {select_by}"
        else:
            why = f"{row.status} but no checkpoint"
        print(f"excluded {row.trial_id} {row.variant_id}@seed{row.seed}: {why}", flush=True)


def load_members(members: list[Member]) -> list[Member]:
    """Load every member's meta and best weights (weights_only=True); CliError names the bad checkpoint."""
    for m in members:
        meta, state = load_checkpoint(m.checkpoint)
        if meta.get("status") in ("diverged", "failed"):  # trials.parquet said ok: the files disagree
            raise CliError(f"{m.checkpoint}/meta.json: status {meta.get('status')!r} (member {m.name})")
        for key in ("features", "lookback", "splits", "label"):
            if not meta.get(key):
                raise CliError(f"{m.checkpoint}/meta.json: empty key {key!r} (member {m.name})")
        for key in ("train", "valid"):
            if key not in meta["splits"]:
                raise CliError(f"{m.checkpoint}/meta.json: splits lacks {key!r} (member {m.name})")
        m.meta, m.state_dict = meta, state
    return members


def forbidden_window(member: Member, dates: np.ndarray) -> tuple[int, int, np.datetime64, np.datetime64]:
    """Day-index range [0, hi] of `dates` a member may not score out-of-sample: everything up to the end of
    the data that trained or chose it (its selection part, else its valid part), widened by the embargo.

    The embargo is counted in trading days of `dates`: a date just after the selection window has a forward
    label that overlaps the labels used to pick the member. Dates before training started are refused too:
    a backcast of the same history is not an out-of-sample track record.
    """
    splits = member.meta["splits"]
    embargo = int(splits.get("embargo", member.meta.get("horizon", 0)) or 0)
    first = np.datetime64(str(splits["train"][0]), "D")
    last = np.datetime64(str((splits.get("select") or splits["valid"])[1]), "D")
    hi = int(np.searchsorted(dates, last, side="right")) - 1 + embargo
    return 0, hi, first, last


def check_look_ahead(members: list[Member], dates: np.ndarray, day_lo: int, day_hi: int) -> None:
    """CliError naming the first member whose seen window (+embargo) overlaps the scored days [day_lo, day_hi]."""
    overlaps = in_sample_overlaps(members, dates, day_lo, day_hi)
    for m in members:
        if m.name in overlaps:
            a, b = overlaps[m.name]
            _, _, first, last = forbidden_window(m, dates)
            embargo = int(m.meta["splits"].get("embargo", 0) or 0)
            parts = ", ".join(f"{p} {m.meta['splits'][p][0]}..{m.meta['splits'][p][1]}"
                              for p in ("train", "valid", "select") if m.meta["splits"].get(p))
            raise CliError(
                f"look-ahead: scoring dates {a}..{b} overlap member {m.name} (trial {m.trial_id}): dates up to "
                f"{last} +embargo {embargo} days trained or chose it ({parts}), and earlier dates are backcasts; "
                f"score later dates or pass --allow-in-sample"
            )


def in_sample_overlaps(members: list[Member], dates: np.ndarray, day_lo: int, day_hi: int) -> dict[str, list]:
    """{member name: [first, last] overlapping scored date} for the members whose window overlaps."""
    out = {}
    for m in members:
        lo, hi, _, _ = forbidden_window(m, dates)
        a, b = max(lo, day_lo), min(hi, day_hi)
        if a <= b:
            out[m.name] = [str(dates[a]), str(dates[b])]
    return out


# ------------------------------------------------------------------------------------------------ units
@dataclass
class Unit:
    """What the ensemble selects and combines: one trial, or (seed averaging) the seeds of one (variant,
    hyperparameters), whose per-date z-scores are averaged and re-standardised before they are combined."""

    name: str                 # e.g. "convgru/m01" (seed average) or the member's name (one trial)
    members: list[Member]     # its trials, in selection order
    select_value: float       # mean of its trials' selection metric
    valid_ic: float           # mean of its trials' valid IC (the ic_weighted weights)

    def info(self) -> dict[str, Any]:
        return {"members": [m.name for m in self.members], "select_value": self.select_value,
                "valid_ic": self.valid_ic}


def select_units(exp_dir: str | Path, select_by: str = DEFAULT_SELECT_BY,
                 seed_average: bool = True, window: int | None = None) -> tuple[list[Unit], list[Member]]:
    """(every unit ranked by select_by, every eligible trial ranked): without seed averaging one unit per trial
    (so units[:k] are exactly select_members(exp_dir, k)); with it, one per (variant_id, hparams), its
    figure the mean of its seeds' (ties: the smaller first trial_id)."""
    ranked = select_members(exp_dir, 10 ** 9, select_by, window)
    if not seed_average:
        return [Unit(m.name, [m], m.select_value, m.valid_ic) for m in ranked], ranked
    trials = read_trials(exp_dir, window)
    hp = dict(zip(trials["trial_id"].astype(str),
                  trials["hparams"].astype(str) if "hparams" in trials.columns else [""] * len(trials)))
    groups: dict[tuple[str, str], list[Member]] = {}
    for m in ranked:
        groups.setdefault((m.variant_id, hp.get(m.trial_id, "")), []).append(m)
    variants = [v for v, _ in groups]
    units = []
    for (variant, _), ms in groups.items():
        name = variant if variants.count(variant) == 1 else f"{variant}#{min(m.trial_id for m in ms)}"
        ics = [m.valid_ic for m in ms if math.isfinite(m.valid_ic)]
        units.append(Unit(name, ms, float(np.mean([m.select_value for m in ms])),
                          float(np.mean(ics)) if ics else math.nan))
    units.sort(key=lambda u: (-u.select_value, min(m.trial_id for m in u.members)))
    return units, ranked
