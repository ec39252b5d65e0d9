"""The registries every layer shares: validation metrics, losses, trial statuses (no torch, no Ray).

One place names each metric a trial reports, how it is computed (the `crnn_ray.metrics.evaluate` summary key
behind it), which way is better, and what it may be used for; the training loop, the early-stopping and
scheduler choices, the trial table, the leaderboard and the scorer's member selection all derive from
`METRICS`. Adding a metric is one line in `_MEASURES`.

Every measure is taken on two parts of the data (crnn_ray/data/splits.py): `valid_*` on the split that
chooses each run's epoch (early stopping; optimistic, since it is the max over epochs), `select_*` on the
selection split after it, at that same epoch (honest: it chose nothing). Ranking and member selection use
`select_*` by default.
"""

from __future__ import annotations

from dataclasses import dataclass


@dataclass(frozen=True)
class Metric:
    """A metric of one training epoch, measured on one part of the data."""

    name: str                  # the key in epoch reports, trials.parquet and checkpoints ("valid_ic")
    summary_key: str           # the `crnn_ray.metrics.evaluate(...).summary` key it is read from
    part: str                  # "valid" (chooses the epoch) or "select" (ranks runs, picks members)
    label: str                 # short column title (leaderboard, report)
    fmt: str = "+.4f"          # how tables print it
    higher_is_better: bool = True
    stop: bool = True          # may drive early stopping and the Tune scheduler
    select: bool = True        # may rank trials and pick ensemble members
    leaderboard: bool = True   # has mean / std columns in the leaderboard


#: (evaluate summary key, label, format, has leaderboard columns)
_MEASURES = (
    ("ic", "IC", "+.4f", True),
    ("rank_ic", "RankIC", "+.4f", True),
    ("icir", "ICIR", "+.3f", True),
    ("pnl_long_short", "pnl L/S", "+.4f", True),
    ("pnl_long", "pnl long", "+.4f", False),
)
#: the data parts a run is measured on, and their column-title prefixes
PARTS = {"valid": "valid", "select": "select"}

METRICS: dict[str, Metric] = {
    f"{part}_{key}": Metric(f"{part}_{key}", key, part, f"{prefix} {label}", fmt, stop=(part == "valid"),
                            leaderboard=board)
    for part, prefix in PARTS.items() for key, label, fmt, board in _MEASURES
}

#: every metric, in report order (valid_* then select_*)
VALID_METRICS: tuple[str, ...] = tuple(METRICS)
#: what early stopping and the scheduler may watch (the valid part: it chooses the epoch)
STOPPING_METRICS: tuple[str, ...] = tuple(m.name for m in METRICS.values() if m.stop)
#: what may rank trials and select ensemble members
SELECT_METRICS: tuple[str, ...] = tuple(m.name for m in METRICS.values() if m.select)
#: metrics with `<name>_mean` / `<name>_std` leaderboard columns
LEADERBOARD_METRICS: tuple[str, ...] = tuple(m.name for m in METRICS.values() if m.leaderboard)
#: the honest default for ranking variants and choosing members: rank first (Pearson rewards volatility tilts,
#: docs/metrics.md), on the selection part (the valid part chose each run's epoch)
DEFAULT_RANK_METRIC = "select_rank_ic"


def selection_twin(name: str) -> str:
    """select_<x> for valid_<x> (what a ranking on `name` would honestly use), else `name` itself."""
    metric = METRICS.get(name)
    return f"select_{metric.summary_key}" if metric is not None and metric.part == "valid" else name


#: training losses: "mse" on the (ranked) label; "ic": negative mean per-day Pearson IC over whole-day batches
LOSSES: tuple[str, ...] = ("mse", "ic")

#: trial statuses whose checkpoints are ranked and may be selected ("pruned": stopped by the ASHA scheduler)
RANKED: tuple[str, ...] = ("ok", "pruned")
