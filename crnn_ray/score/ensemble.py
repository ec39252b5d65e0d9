"""Combine member predictions into one signal, day by day, on [days x stocks] grids.

Members differ in scale and offset (an MSE model and an IC-loss model do not even share units), so each
member's predictions are first standardised within each date -- the cross-section is what a daily portfolio
trades -- and only then combined. This runs on the whole prediction grid after the map step, so every date is
complete no matter how the rows were batched. The per-day z-score and scaled rank are crnn_ray.metrics'.

    mean         signal = mean_k z_k
    ic_weighted  signal = sum_k w_k z_k,  w_k = max(valid_ic_k, 0) / sum_j max(valid_ic_j, 0)
    rank_mean    signal = mean_k r_k,     r_k = per-date average rank scaled to [-0.5, 0.5]

Grids: `preds` [D, S, K] float (NaN where a row is not scored), signals [D, S].
"""

from __future__ import annotations

import math

import numpy as np
import pandas as pd
from scipy.optimize import nnls

from crnn_ray.io import CliError
from crnn_ray.metrics import daily_rank_ic, scaled_ranks, zscore_by_day

__all__ = ["METHODS", "member_weights", "stack_weights", "standardise", "ensemble_signal", "correlation", "unit_standardised",
           "ensemble_units", "greedy_select"]

#: mean: equal weights; ic_weighted: max(selection figure, 0); rank_mean: equal weights on scaled ranks; stack:
#: non-negative least squares of the selection split's label on the units' z-scores (stack_weights)
METHODS = ("mean", "ic_weighted", "rank_mean", "stack")


def member_weights(method: str, select_values: list[float]) -> tuple[np.ndarray, str | None]:
    """Weights per unit and a note when ic_weighted had to fall back to equal weights. ic_weighted weighs by
    max(selection figure, 0): the split that chose nothing (the valid split chose each run's epoch, so its
    figure is a maximum over epochs). `stack` weights come from stack_weights, fitted on the selection split."""
    k = len(select_values)
    if method not in METHODS:
        raise CliError(f"--method {method!r}: unknown (choose from {', '.join(METHODS)})")
    if method != "ic_weighted":
        return np.full(k, 1.0 / k), None
    ic = np.array([v if v is not None and math.isfinite(v) else 0.0 for v in select_values], dtype=np.float64)
    clipped = np.clip(ic, 0.0, None)
    if clipped.sum() <= 0:
        return np.full(k, 1.0 / k), "every unit's selection figure is <= 0: ic_weighted falls back to equal weights"
    return clipped / clipped.sum(), None


def stack_weights(unit_z: np.ndarray, label: np.ndarray, min_stocks: int = 10) -> tuple[np.ndarray, str | None]:
    """Stacking: non-negative weights w (summing to 1) minimising sum over the selection split's rows of
    (label z-score - unit_z @ w)^2, the label standardised per date like the units (scipy's NNLS on the days
    with >= min_stocks rows). Non-negative: a unit is never shorted (a negative weight on a model that earns on
    its own is an overfit of the selection days). Equal weights, with a note, when every weight is 0."""
    k = unit_z.shape[-1]
    rows = np.isfinite(label) & np.isfinite(unit_z).all(axis=-1)
    rows &= (rows.sum(axis=1) >= int(min_stocks))[:, None]
    if rows.sum() < k + 2:
        return np.full(k, 1.0 / k), "stack: too few selection rows to fit: equal weights"
    y = zscore_by_day(np.where(rows, label, np.nan))[rows]
    w, _ = nnls(unit_z[rows].astype(np.float64), y.astype(np.float64))
    if not np.isfinite(w).all() or w.sum() <= 0:
        return np.full(k, 1.0 / k), "stack: every NNLS weight is 0: equal weights"
    return w / w.sum(), None


def standardise(preds: np.ndarray, method: str) -> np.ndarray:
    """[D, S, K] per-day z-scores of each member (rank_mean: scaled ranks); 0 where a row is not scored."""
    per_day = scaled_ranks if method == "rank_mean" else zscore_by_day  # stack: z-scores, like mean
    out = np.stack([per_day(np.ascontiguousarray(preds[..., k], dtype=np.float64))
                    for k in range(preds.shape[-1])], axis=-1)
    return np.nan_to_num(out, nan=0.0, copy=False)


def ensemble_signal(preds: np.ndarray, method: str, weights: np.ndarray) -> np.ndarray:
    """Ensemble signal [D, S] (NaN where not scored) from raw member predictions [D, S, K].

    The weights apply as one [N, K] @ [K] product over the scored rows in (date, symbol) order, the
    arithmetic the scorer has always used: rank_mean signals tie often (equal rank sums), and a last-bit
    change would reorder tied stocks and move the reported figures.
    """
    rows, stocks = np.nonzero(~np.isnan(preds[..., 0]))
    signal = np.full(preds.shape[:2], np.nan)
    signal[rows, stocks] = standardise(preds, method)[rows, stocks] @ np.asarray(weights, dtype=np.float64)
    return signal


def unit_standardised(preds: np.ndarray, groups: list[list[int]], method: str) -> np.ndarray:
    """[D, S, U]: per unit (a list of member columns of `preds`) the mean of its members' per-date z-scores
    (rank_mean: scaled ranks), re-standardised per date the same way; a one-member unit is its member's z.
    0 where a row is not scored."""
    z = standardise(preds, method)
    per_day = scaled_ranks if method == "rank_mean" else zscore_by_day
    scored = ~np.isnan(preds[..., 0])
    out = []
    for g in groups:
        if len(g) == 1:
            out.append(z[..., g[0]])
        else:
            avg = np.where(scored, z[..., list(g)].mean(axis=-1), np.nan)
            out.append(np.nan_to_num(per_day(avg), nan=0.0))
    return np.stack(out, axis=-1)


def ensemble_units(preds: np.ndarray, groups: list[list[int]], method: str, weights: np.ndarray) -> np.ndarray:
    """Ensemble signal [D, S] of units (seed averages) with one weight per unit. When every unit is one member
    and the groups are the first columns in order, this is `ensemble_signal` exactly (bit for bit)."""
    if all(len(g) == 1 for g in groups) and [g[0] for g in groups] == list(range(len(groups))):
        return ensemble_signal(preds[..., :len(groups)], method, weights)
    rows, stocks = np.nonzero(~np.isnan(preds[..., 0]))
    signal = np.full(preds.shape[:2], np.nan)
    signal[rows, stocks] = unit_standardised(preds, groups, method)[rows, stocks] @ np.asarray(weights, np.float64)
    return signal


def greedy_select(unit_z: np.ndarray, label: np.ndarray, top_k: int, corr_penalty: float,
                  min_stocks: int = 10) -> tuple[list[int], list[dict]]:
    """Greedy forward selection of units on one split (the selection split): (chosen unit indices, trace).

    `unit_z` [D, S, U] holds the units' per-date standardised signals (NaN where not scored), ordered by the
    selection metric, best first; `label` [D, S]. Start from unit 0; at each step every unit not yet in whose
    addition raises the mean daily RankIC of the equal-weight ensemble (mean of the chosen units' z; RankIC
    first, as everywhere: docs/metrics.md) is scored
    ic(chosen + u) - corr_penalty * mean correlation of u with the chosen units (mean daily cross-sectional
    Pearson, `correlation`); the best score joins (ties: the better-ranked unit). Stop at top_k units or when
    no unit raises the IC.
    """
    n_units = unit_z.shape[-1]
    corr = correlation({i: unit_z[..., i] for i in range(n_units)}).to_numpy()

    def ic(idx: list[int]) -> float:
        daily = daily_rank_ic(unit_z[..., idx].mean(axis=-1), label, min_stocks)
        return float(np.nanmean(daily)) if np.isfinite(daily).any() else -math.inf

    chosen = [0]
    current = ic(chosen)
    trace = [{"unit": 0, "ic": current, "corr": None, "score": current}]
    while len(chosen) < min(int(top_k), n_units):
        best = None
        for u in range(n_units):
            if u in chosen:
                continue
            value = ic(chosen + [u])
            if not value > current:
                continue
            c = float(np.nanmean(corr[u, chosen]))
            score = value - float(corr_penalty) * c
            if best is None or score > best[0]:
                best = (score, u, value, c)
        if best is None:
            break
        score, u, value, c = best
        chosen.append(u)
        current = value
        trace.append({"unit": u, "ic": value, "corr": c, "score": score})
    return chosen, trace


def correlation(grids: dict[str, np.ndarray]) -> pd.DataFrame:
    """Mean over dates of the cross-sectional Pearson correlation between every pair of [D, S] grids.

    The cross-section is what the ensemble mixes, so this (not a pooled correlation that daily level shifts
    would inflate) says how much members really diversify each other. A date where a grid is constant is
    left out of that grid's pairs.
    """
    names = list(grids)
    z = np.stack([zscore_by_day(grids[n]) for n in names], axis=-1)  # [D, S, K], 0 where absent
    n = (~np.isnan(grids[names[0]])).sum(axis=1)
    with np.errstate(invalid="ignore", divide="ignore"):
        daily = np.einsum("dsi,dsj->dij", z, z) / n[:, None, None]  # per-date mean of z_i z_j
    live = (z != 0).any(axis=1)
    both = live[:, :, None] & live[:, None, :]
    days = both.sum(axis=0)
    with np.errstate(invalid="ignore", divide="ignore"):
        out = np.where(days > 0, np.where(both, daily, 0.0).sum(axis=0) / days, math.nan)
    np.fill_diagonal(out, 1.0)
    return pd.DataFrame(out, index=names, columns=names)
