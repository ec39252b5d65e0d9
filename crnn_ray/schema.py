"""The registries every layer shares: validation metrics, losses, trial statuses (no torch, no Ray).

One place names each metric a trial reports, how it is computed (the `crnn_ray.metrics.evaluate` summary key
behind it), which way is better, and what it may be used for; the training loop, the early-stopping and
scheduler choices, the trial table, the leaderboard and the scorer's member selection all derive from
`METRICS`. Adding a metric is one line here.
"""

from __future__ import annotations

from dataclasses import dataclass


@dataclass(frozen=True)
class Metric:
    """A validation metric of one training epoch."""

    name: str                  # the key in epoch reports, trials.parquet and checkpoints ("valid_ic")
    summary_key: str           # the `crnn_ray.metrics.evaluate(...).summary` key it is read from
    label: str                 # short column title (leaderboard, report)
    fmt: str = "+.4f"          # how tables print it
    higher_is_better: bool = True
    stop: bool = True          # may drive early stopping and the Tune scheduler
    select: bool = True        # may rank trials and pick ensemble members
    leaderboard: bool = True   # has mean / std columns in the leaderboard


METRICS: dict[str, Metric] = {m.name: m for m in (
    Metric("valid_ic", "ic", "valid IC"),
    Metric("valid_rank_ic", "rank_ic", "RankIC"),
    Metric("valid_icir", "icir", "ICIR", "+.3f"),
    Metric("valid_pnl_long_short", "pnl_long_short", "pnl L/S"),
    Metric("valid_pnl_long", "pnl_long", "pnl long", leaderboard=False),
)}

#: every validation metric, in report order
VALID_METRICS: tuple[str, ...] = tuple(METRICS)
#: what early stopping and the scheduler may watch
STOPPING_METRICS: tuple[str, ...] = tuple(m.name for m in METRICS.values() if m.stop)
#: what may rank trials and select ensemble members
SELECT_METRICS: tuple[str, ...] = tuple(m.name for m in METRICS.values() if m.select)
#: metrics with `<name>_mean` / `<name>_std` leaderboard columns
LEADERBOARD_METRICS: tuple[str, ...] = tuple(m.name for m in METRICS.values() if m.leaderboard)

#: training losses: "mse" on the (ranked) label; "ic": negative mean per-day Pearson IC over whole-day batches
LOSSES: tuple[str, ...] = ("mse", "ic")

#: trial statuses whose checkpoints are ranked and may be selected ("pruned": stopped by the ASHA scheduler)
RANKED: tuple[str, ...] = ("ok", "pruned")
