"""Baselines a net must beat, on the same rows as the nets: a ridge regression and a short-term reversal.

A net that does not beat a linear model on today's features does not earn its cost (GPU time, fragility);
one that does not beat 5-day reversal has learnt a well-known effect. Both are cheap, deterministic and use
only data at or before the scored day.

    ridge     least squares with an L2 penalty on the last day's normalised features (the nets' inputs at
              day t), fitted on the training part's samples against the nets' training target (the
              per-date ranked label when rank_label); intercept unpenalised.
    reversal  minus the sum of `ret1` over the last 5 days (past losers up), from the raw panel feature;
              absent when the panel has no `ret1` column.

`baseline_signals` returns [D, S] grids (NaN where a row is not a sample), ready for `metrics.evaluate`.
Plain numpy: no torch, no Ray.
"""

from __future__ import annotations

import numpy as np

from crnn_ray.data import normalize_features, sample_index
from crnn_ray.data import rank_label as _rank_label  # the name rank_label is baseline_signals' flag

__all__ = ["BASELINES", "RIDGE_ALPHA", "REVERSAL_DAYS", "baseline_signals", "fit_ridge"]

BASELINES = ("ridge", "reversal")
#: ridge penalty per training sample (the features are per-date robust z-scores, so about unit scale)
RIDGE_ALPHA = 1e-2
REVERSAL_DAYS = 5


def fit_ridge(x: np.ndarray, y: np.ndarray, alpha: float = RIDGE_ALPHA) -> tuple[np.ndarray, float]:
    """(coefficients, intercept) of ridge regression y ~ x with penalty alpha * n on the coefficients only."""
    x = np.asarray(x, dtype=np.float64)
    y = np.asarray(y, dtype=np.float64)
    x_mean, y_mean = x.mean(axis=0), y.mean()
    xc = x - x_mean
    gram = xc.T @ xc + alpha * len(x) * np.eye(x.shape[1])
    beta = np.linalg.solve(gram, xc.T @ (y - y_mean))
    return beta, float(y_mean - x_mean @ beta)


def baseline_signals(panel, train: tuple[int, int], label: str, lookback: int, *, clip: float = 5.0,
                     rank_label: bool = True, days: tuple[int, int] | None = None) -> dict[str, np.ndarray]:
    """{baseline name: signal [D, S]} over the panel's days (only `days` = (lo, hi) filled when given).

    A cell is filled where the nets could score it too: the day has `lookback` days of history, the row is
    present with all features finite (the panel mask). The ridge is fitted on the training part's samples
    (rows with a finite label in `train`).
    """
    n_days = panel.X.shape[0]
    lo, hi = (0, n_days - 1) if days is None else (int(days[0]), int(days[1]))
    scorable = np.zeros(panel.mask.shape, dtype=bool)
    first = max(lo, int(lookback) - 1)
    if first <= hi:
        scorable[first:hi + 1] = panel.mask[first:hi + 1]
    out: dict[str, np.ndarray] = {}

    raw_label = panel.label(label)
    X = normalize_features(panel.X, panel.mask, clip=clip)
    rows = sample_index(panel.mask, raw_label, lookback, *train)
    if len(rows) > X.shape[2]:
        target = (_rank_label(raw_label) if rank_label else raw_label)[rows[:, 0], rows[:, 1]]
        beta, intercept = fit_ridge(X[rows[:, 0], rows[:, 1]], target)
        ridge = np.full(panel.mask.shape, np.nan)
        ridge[scorable] = X[scorable] @ beta + intercept
        out["ridge"] = ridge

    if "ret1" in panel.features:
        ret1 = panel.X[:, :, panel.features.index("ret1")].astype(np.float64)
        past = np.full_like(ret1, np.nan)
        csum = np.cumsum(np.nan_to_num(ret1, nan=0.0), axis=0)
        k = REVERSAL_DAYS
        past[k - 1:] = csum[k - 1:] - np.vstack([np.zeros((1, ret1.shape[1])), csum[:-k]])
        reversal = np.where(scorable & np.isfinite(ret1), -past, np.nan)
        out["reversal"] = reversal
    return out
