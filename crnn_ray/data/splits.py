"""Train / valid / (select) / test as inclusive day-index ranges, separated by an embargo.

The label at day t looks H days ahead, so the last training labels overlap the first validation days unless
at least H days are left out between parts: the embargo defaults to the horizon and may not be smaller.

`valid` chooses each run's epoch (early stopping); an optional `select` part after it ranks runs and picks
ensemble members. A figure measured on the split that chose the epoch is biased upwards (it is the max over
epochs); `select` did not choose anything, so its figures are honest estimates for the ranking.

Walk-forward: one split scores a single stretch of history, so a figure may reflect one regime. Walk-forward
windows slide train/valid/select forward by `step` days; their test parts tile the out-of-sample period with no
gap or overlap, and inside every window the parts are separated by the embargo, so no label a window trained
or chose on reaches a day it (or any later window) is scored on.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import numpy as np
import pandas as pd

from crnn_ray.io import CliError

PARTS = ("train", "valid", "test")


@dataclass(frozen=True)
class Splits:
    train: tuple[int, int]
    valid: tuple[int, int]
    test: tuple[int, int]
    embargo: int
    select: tuple[int, int] | None = None   # between valid and test; None: no selection part

    @property
    def parts(self) -> tuple[str, ...]:
        """The parts present, in time order."""
        return ("train", "valid", "select", "test") if self.select is not None else PARTS

    @property
    def selection_end(self) -> int:
        """Last day any model choice looked at (select's end, else valid's)."""
        return (self.select or self.valid)[1]

    def dates(self, panel_dates) -> dict:
        """The parts as ISO dates (what checkpoints and reports record)."""
        d = np.asarray(panel_dates).astype("datetime64[D]")
        out: dict[str, Any] = {p: [str(d[getattr(self, p)[0]]), str(d[getattr(self, p)[1]])] for p in self.parts}
        out["embargo"] = int(self.embargo)
        return out


def _to_day(value: Any, key: str) -> np.datetime64 | None:
    if value is None:
        return None
    try:
        ts = pd.Timestamp(value)
    except (ValueError, TypeError):
        raise CliError(f"splits.{key}: unparsable date {value!r}")
    if pd.isna(ts):
        return None
    return np.datetime64(ts.date(), "D")


def _fraction_parts(n_days: int, fractions: Any, embargo: int) -> list[tuple[int, int]]:
    if not isinstance(fractions, (list, tuple)) or len(fractions) != 3:
        raise CliError(f"splits.fractions: expected 3 numbers [train, valid, test], got {fractions!r}")
    try:
        fr = np.array([float(f) for f in fractions])
    except (TypeError, ValueError):
        raise CliError(f"splits.fractions: not numbers: {fractions!r}")
    if not np.isfinite(fr).all() or (fr <= 0).any():
        raise CliError(f"splits.fractions: every part needs a positive fraction, got {fractions!r}")
    if fr.sum() > 1.0 + 1e-9:
        raise CliError(f"splits.fractions: sum {fr.sum():g} > 1")
    usable = n_days - 2 * embargo
    sizes = np.floor(fr * usable + 1e-9).astype(int)
    if fr.sum() > 1 - 1e-9:  # fractions that add up to 1 cover the panel: the test part takes the rest
        sizes[2] = usable - sizes[0] - sizes[1]
    for name, size in zip(PARTS, sizes):
        if size <= 0:
            raise CliError(f"splits.fractions: part {name!r} is empty ({n_days} days, embargo {embargo})")
    parts, start = [], 0
    for size in sizes:
        parts.append((start, start + int(size) - 1))
        start += int(size) + embargo
    return parts


def _date_parts(dates: np.ndarray, spec: dict, names: list[str]) -> list[tuple[int, int]]:
    parts = []
    for name in names:
        if name not in spec:
            raise CliError(f"splits.{name}: missing (give train, valid and test date ranges, or fractions)")
        rng = spec[name]
        if not isinstance(rng, (list, tuple)) or len(rng) != 2:
            raise CliError(f"splits.{name}: expected [first_date, last_date], got {rng!r}")
        d0, d1 = _to_day(rng[0], name), _to_day(rng[1], name)
        if d0 is not None and d1 is not None and d0 > d1:
            raise CliError(f"splits.{name}: reversed range {rng[0]} > {rng[1]}")
        lo = 0 if d0 is None else int(np.searchsorted(dates, d0, side="left"))
        hi = len(dates) - 1 if d1 is None else int(np.searchsorted(dates, d1, side="right")) - 1
        if hi < lo:
            raise CliError(f"splits.{name}: no panel dates in [{rng[0]}, {rng[1]}] "
                           f"(panel has {dates[0]} .. {dates[-1]})")
        parts.append((lo, hi))
    return parts


def _carve_select(valid: tuple[int, int], share: Any, embargo: int) -> tuple[tuple, tuple]:
    """Split the valid part into (valid, select): select takes `share` of it, after an embargo gap."""
    if isinstance(share, bool) or not isinstance(share, (int, float)) or not 0 < share < 1:
        raise CliError(f"splits.select: expected a share of the valid part in (0, 1) or [first_date, last_date], "
                       f"got {share!r}")
    lo, hi = valid
    usable = hi - lo + 1 - embargo
    n_select = int(np.floor(usable * float(share) + 1e-9))
    n_valid = usable - n_select
    if n_select < 1 or n_valid < 1:
        raise CliError(f"splits.select: a share of {share:g} of the {hi - lo + 1}-day valid part leaves an empty "
                       f"part (embargo {embargo})")
    return (lo, lo + n_valid - 1), (lo + n_valid + embargo, hi)


def make_splits(dates, spec: dict, horizon: int) -> Splits:
    """Splits from {"fractions": [a, b, c]} or {"train": [d0, d1], "valid": ..., "test": ...} (+ "embargo").

    "select": a share in (0, 1) cuts a selection part off the end of the valid part (an embargo between them);
    with date ranges it may also be [d0, d1], a part between valid and test.
    """
    dates = np.asarray(dates).astype("datetime64[D]")
    if len(dates) == 0:
        raise CliError("splits: the panel has no dates")
    if not isinstance(spec, dict):
        raise CliError(f"splits: expected a mapping, got {type(spec).__name__}")
    unknown = set(spec) - {"fractions", "embargo", "select", *PARTS}
    if unknown:
        raise CliError(f"splits.{min(unknown)}: unknown key "
                       "(allowed: fractions, train, valid, select, test, embargo)")
    embargo = spec.get("embargo")
    embargo = int(horizon) if embargo is None else embargo
    if not isinstance(embargo, (int, np.integer)) or isinstance(embargo, bool):
        raise CliError(f"splits.embargo: expected an integer number of days, got {embargo!r}")
    if embargo < horizon:
        raise CliError(f"splits.embargo: {embargo} is smaller than the label horizon {horizon} "
                       f"(training labels would overlap the next part)")
    select = spec.get("select")
    if "fractions" in spec:
        if any(p in spec for p in PARTS):
            raise CliError("splits.fractions: give either fractions or date ranges, not both")
        if isinstance(select, (list, tuple)):
            raise CliError("splits.select: with fractions, give the selection part as a share of the valid part")
        parts = _fraction_parts(len(dates), spec["fractions"], int(embargo))
        names = list(PARTS)
    else:
        names = ["train", "valid", "select", "test"] if isinstance(select, (list, tuple)) else list(PARTS)
        parts = _date_parts(dates, spec, names)
        for (prev_name, prev), (name, cur) in zip(zip(names, parts), zip(names[1:], parts[1:])):
            if cur[0] <= prev[1]:
                raise CliError(f"splits.{name}: overlaps or precedes {prev_name} "
                               f"({dates[cur[0]]} <= {dates[prev[1]]})")
            gap = cur[0] - prev[1] - 1
            if gap < embargo:
                raise CliError(f"splits.{name}: starts {gap} trading day(s) after {prev_name} ends; "
                               f"embargo needs {embargo}")
    by_name = dict(zip(names, parts))
    if select is not None and not isinstance(select, (list, tuple)):
        by_name["valid"], by_name["select"] = _carve_select(by_name["valid"], select, int(embargo))
    return Splits(train=by_name["train"], valid=by_name["valid"], test=by_name["test"], embargo=int(embargo),
                  select=by_name.get("select"))


WALK_FORWARD_KEYS = ("train", "valid", "select", "step", "embargo", "first_test", "windows")


def _is_int(value: Any) -> bool:
    return isinstance(value, (int, np.integer)) and not isinstance(value, bool)


def _positive_int(spec: dict, key: str, what: str) -> int:
    if key not in spec:
        raise CliError(f"walk_forward.{key}: missing ({what})")
    value = spec[key]
    if not _is_int(value) or value <= 0:
        raise CliError(f"walk_forward.{key}: expected {what}, got {value!r}")
    return int(value)


def _first_test_index(dates: np.ndarray, value: Any) -> int:
    """A date: the first panel day on or after it; a fraction f: day floor(f * n)."""
    n = len(dates)
    if isinstance(value, (bool, float, int, np.integer, np.floating)):
        if isinstance(value, bool) or not 0 < value < 1:
            raise CliError(f"walk_forward.first_test: expected an ISO date or a fraction of the panel in (0, 1), "
                           f"got {value!r}")
        return int(np.floor(float(value) * n + 1e-9))
    try:
        ts = pd.Timestamp(value)
    except (ValueError, TypeError):
        raise CliError(f"walk_forward.first_test: unparsable date {value!r}")
    if pd.isna(ts):
        raise CliError(f"walk_forward.first_test: unparsable date {value!r}")
    day = np.datetime64(ts.date(), "D")
    idx = int(np.searchsorted(dates, day, side="left"))
    if idx >= n:
        raise CliError(f"walk_forward.first_test: {day} is after the panel's last date {dates[-1]}")
    return idx


def walk_forward_splits(dates, spec: dict, horizon: int) -> list[Splits]:
    """Walk-forward windows, each a Splits; their test parts tile [first_test, panel end] in `step`-day pieces.

    spec: train (days, or "expanding"), valid (days), select (share of valid, default 0.5; 0: none), step
    (days between windows = test length), embargo (>= horizon, default horizon), first_test (ISO date, fraction
    of the panel, or None: the earliest day window 0 fits), windows (N or "all").
    """
    dates = np.asarray(dates).astype("datetime64[D]")
    n = len(dates)
    if n == 0:
        raise CliError("walk_forward: the panel has no dates")
    if not isinstance(spec, dict):
        raise CliError(f"walk_forward: expected a mapping, got {type(spec).__name__}")
    unknown = set(spec) - set(WALK_FORWARD_KEYS)
    if unknown:
        raise CliError(f"walk_forward.{min(map(str, unknown))}: unknown key "
                       f"(allowed: {', '.join(WALK_FORWARD_KEYS)})")

    train = spec.get("train")
    expanding = train == "expanding"
    if not expanding:
        train = _positive_int(spec, "train", 'a positive number of trading days or "expanding"')
    valid = _positive_int(spec, "valid", "a positive number of trading days")
    step = _positive_int(spec, "step", "a positive number of trading days between windows")

    embargo = spec.get("embargo")
    embargo = int(horizon) if embargo is None else embargo
    if not _is_int(embargo):
        raise CliError(f"walk_forward.embargo: expected an integer number of days, got {embargo!r}")
    embargo = int(embargo)
    if embargo < horizon:
        raise CliError(f"walk_forward.embargo: {embargo} is smaller than the label horizon {horizon} "
                       f"(training labels would overlap the next part)")

    select = spec.get("select", 0.5)
    if isinstance(select, bool) or not isinstance(select, (int, float, np.integer, np.floating)) \
            or not 0 <= select < 1:
        raise CliError(f"walk_forward.select: expected a share of the valid part in [0, 1), got {select!r}")

    windows = spec.get("windows", "all")
    if windows != "all" and (not _is_int(windows) or windows <= 0):
        raise CliError(f'walk_forward.windows: expected a positive number of windows or "all", got {windows!r}')

    # days window 0 needs before its first test day (expanding: at least one training day)
    need = (1 if expanding else train) + embargo + valid + embargo
    given = spec.get("first_test") is not None
    if given:
        first = _first_test_index(dates, spec["first_test"])
    else:
        first = (valid if expanding else train) + valid + 2 * embargo
    key = "first_test" if given else "train"
    recipe = f"train {'1 (expanding)' if expanding else train} + embargo {embargo} + valid {valid} + embargo {embargo}"
    if first >= n:
        raise CliError(f"walk_forward.{key}: window 0 needs {need} trading days before its first test day "
                       f"({recipe}) but the panel has only {n} ({dates[0]} .. {dates[-1]}), leaving none to test")
    if first < need:
        raise CliError(f"walk_forward.{key}: window 0 needs {need} trading days before its first test day "
                       f"({recipe}) but the panel has {first} before {dates[first]}")

    fit = (n - first + step - 1) // step
    if windows == "all":
        count = fit
    elif windows > fit:
        raise CliError(f"walk_forward.windows: {windows} requested but only {fit} fit "
                       f"(first test day {dates[first]}, step {step}, panel ends {dates[-1]})")
    else:
        count = int(windows)

    out = []
    for w in range(count):
        t0 = first + w * step
        test = (t0, min(t0 + step - 1, n - 1))
        v0 = t0 - embargo - valid
        valid_part = (v0, t0 - embargo - 1)
        train_part = (0 if expanding else v0 - embargo - train, v0 - embargo - 1)
        select_part = None
        if select > 0:
            try:
                valid_part, select_part = _carve_select(valid_part, float(select), embargo)
            except CliError as exc:
                raise CliError(str(exc).replace("splits.select", "walk_forward.select", 1))
        out.append(Splits(train=train_part, valid=valid_part, test=test, embargo=embargo, select=select_part))
    return out


def window_key(w: int) -> str:
    """Window w's name in run ids and reports ("w00", "w01", ...; zero-padded so they sort)."""
    return f"w{int(w):02d}"


def describe_windows(windows: list[Splits], dates) -> list[str]:
    """One line per window (dates and trading-day counts of each part), for `sweep --check`."""
    d = np.asarray(dates).astype("datetime64[D]")
    lines = []
    for w, s in enumerate(windows):
        parts = [f"{p} {d[getattr(s, p)[0]]}..{d[getattr(s, p)[1]]} ({getattr(s, p)[1] - getattr(s, p)[0] + 1} d)"
                 for p in s.parts]
        lines.append(f"{window_key(w)}  " + "  ".join(parts))
    return lines
