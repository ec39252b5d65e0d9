"""Long-table forms of the scorer's grid functions, for tests that state a property on rows (date, values).

The scorer itself works on dense [days x stocks] grids only (crnn_ray/score/ensemble.py); these place rows on
a grid first, so a test can compare the grid code with a per-date reference written on long rows.
"""

from __future__ import annotations

import numpy as np
import pandas as pd

from crnn_ray.score.ensemble import correlation, ensemble_signal, standardise


def _rows_to_grid(dates: np.ndarray, values: np.ndarray) -> tuple[np.ndarray, tuple[np.ndarray, np.ndarray]]:
    """Rows (dates [N], values [N, K]) on a [dates x max rows per date x K] grid (NaN padding), and each
    row's cell."""
    values = np.asarray(values, dtype=np.float64)
    day = pd.factorize(pd.Series(dates), sort=True)[0]
    order = np.argsort(day, kind="stable")
    counts = np.bincount(day)
    slot = np.empty(len(day), dtype=np.int64)
    slot[order] = np.arange(len(day)) - np.repeat(np.cumsum(counts) - counts, counts)
    grid = np.full((len(counts), int(counts.max(initial=0)), values.shape[1]), np.nan)
    grid[day, slot] = values
    return grid, (day, slot)


def zscore_by_date(dates: np.ndarray, values: np.ndarray) -> np.ndarray:
    """(x - mean) / std within each date (ddof=0) of rows [N, K]; a date whose values are all equal (or
    single) gets 0."""
    grid, cells = _rows_to_grid(dates, values)
    return standardise(grid, "mean")[cells]


def rank_by_date(dates: np.ndarray, values: np.ndarray) -> np.ndarray:
    """Average rank within each date of rows [N, K], scaled to [-0.5, 0.5]; a single stock gets 0."""
    grid, cells = _rows_to_grid(dates, values)
    return standardise(grid, "rank_mean")[cells]


def combine(dates: np.ndarray, preds: np.ndarray, method: str, weights: np.ndarray) -> np.ndarray:
    """Ensemble signal [N] from raw member predictions [N, K] of rows whose date is `dates` [N]."""
    preds = np.asarray(preds, dtype=np.float64)
    if preds.ndim != 2 or preds.shape[0] != len(dates):
        raise ValueError(f"preds must be [N, K] with N = len(dates), got {preds.shape}")
    grid, cells = _rows_to_grid(dates, preds)
    return ensemble_signal(grid, method, weights)[cells]


def member_correlation(dates: np.ndarray, columns: dict[str, np.ndarray]) -> pd.DataFrame:
    """`correlation` of long columns (rows whose date is `dates`)."""
    names = list(columns)
    grid, _ = _rows_to_grid(dates, np.column_stack([columns[n] for n in names]))
    return correlation({n: grid[..., k] for k, n in enumerate(names)})
