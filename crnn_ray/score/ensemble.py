"""Combine member predictions into one signal, date by date.

Members differ in scale and offset (an MSE model and an IC-loss model do not even share units), so each
member's predictions are first standardised within each date -- the cross-section is what a daily portfolio
trades -- and only then combined. This runs on the whole scored table after the map step, so every date is
complete no matter how the rows were batched.

    mean         signal = mean_k z_k
    ic_weighted  signal = sum_k w_k z_k,  w_k = max(valid_ic_k, 0) / sum_j max(valid_ic_j, 0)
    rank_mean    signal = mean_k r_k,     r_k = per-date average rank scaled to [-0.5, 0.5]
"""

from __future__ import annotations

import math

import numpy as np
import pandas as pd

from crnn_ray.io import CliError

__all__ = ["METHODS", "member_weights", "zscore_by_date", "rank_by_date", "combine", "member_correlation"]

METHODS = ("mean", "ic_weighted", "rank_mean")


def member_weights(method: str, valid_ics: list[float]) -> tuple[np.ndarray, str | None]:
    """Weights per member and a note when ic_weighted had to fall back to equal weights."""
    k = len(valid_ics)
    if method not in METHODS:
        raise CliError(f"--method {method!r}: unknown (choose from {', '.join(METHODS)})")
    if method != "ic_weighted":
        return np.full(k, 1.0 / k), None
    ic = np.array([v if v is not None and math.isfinite(v) else 0.0 for v in valid_ics], dtype=np.float64)
    clipped = np.clip(ic, 0.0, None)
    if clipped.sum() <= 0:
        return np.full(k, 1.0 / k), "every member's valid IC is <= 0: ic_weighted falls back to equal weights"
    return clipped / clipped.sum(), None


def _date_codes(dates: np.ndarray) -> np.ndarray:
    return pd.factorize(pd.Series(dates), sort=True)[0]


def zscore_by_date(dates: np.ndarray, values: np.ndarray) -> np.ndarray:
    """(x - mean) / std within each date (ddof=0); a date whose values are all equal (or single) gets 0."""
    values = np.asarray(values, dtype=np.float64)
    codes = _date_codes(dates)
    centred = values - pd.DataFrame(values).groupby(codes).transform("mean").to_numpy()
    std = np.sqrt(pd.DataFrame(centred * centred).groupby(codes).transform("mean").to_numpy())
    with np.errstate(invalid="ignore", divide="ignore"):
        z = np.where(std > 1e-12, centred / np.where(std > 1e-12, std, 1.0), 0.0)
    return z


def rank_by_date(dates: np.ndarray, values: np.ndarray) -> np.ndarray:
    """Average rank within each date scaled to [-0.5, 0.5] ((rank-1)/(n-1) - 0.5; a single stock gets 0)."""
    values = np.asarray(values, dtype=np.float64)
    groups = pd.DataFrame(values).groupby(_date_codes(dates))
    ranks = groups.rank(method="average").to_numpy()
    n = groups.transform("count").to_numpy().astype(np.float64)
    with np.errstate(invalid="ignore", divide="ignore"):
        return np.where(n > 1, (ranks - 1.0) / np.maximum(n - 1.0, 1.0) - 0.5, 0.0)


def combine(dates: np.ndarray, preds: np.ndarray, method: str, weights: np.ndarray) -> np.ndarray:
    """Ensemble signal [N] from raw member predictions [N, K] of rows whose date is `dates` [N]."""
    preds = np.asarray(preds, dtype=np.float64)
    if preds.ndim != 2 or preds.shape[0] != len(dates):
        raise ValueError(f"preds must be [N, K] with N = len(dates), got {preds.shape}")
    if method == "rank_mean":
        return rank_by_date(dates, preds) @ np.asarray(weights, dtype=np.float64)
    return zscore_by_date(dates, preds) @ np.asarray(weights, dtype=np.float64)


def member_correlation(dates: np.ndarray, columns: dict[str, np.ndarray]) -> pd.DataFrame:
    """Mean over dates of the cross-sectional Pearson correlation between every pair of columns.

    The cross-section is what the ensemble mixes, so this (not a pooled correlation that daily level shifts
    would inflate) says how much members really diversify each other.
    """
    names = list(columns)
    z = zscore_by_date(dates, np.column_stack([columns[n] for n in names]))
    codes = _date_codes(dates)
    k = len(names)
    out = np.eye(k)
    live = pd.DataFrame(np.abs(z) > 0).groupby(codes).transform("any").to_numpy()  # constant days excluded
    for i in range(k):
        for j in range(i + 1, k):
            prod = pd.Series(z[:, i] * z[:, j]).groupby(codes).mean()
            ok = pd.Series(live[:, i] & live[:, j]).groupby(codes).all()
            out[i, j] = out[j, i] = float(prod[ok].mean()) if ok.any() else math.nan
    return pd.DataFrame(out, index=names, columns=names)
