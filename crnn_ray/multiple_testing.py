"""The multiple-testing layer: how sure can we be that a variant beats its base, having tried many.

A sweep ranks variants x seeds x windows and reports the winner; a plain paired t on the winner ignores the
others tried, so with 20 variants at 5 % at least one pure-noise variant "beats" its base most of the time.
This module answers that question on daily series (IC / RankIC or pnl per day):

    paired_test          one variant against its base: mean daily difference and its Newey-West (HAC) t
    holm                 Holm's step-down family-wise adjustment of p-values (any dependence, conservative)
    romano_wolf          Romano-Wolf step-down adjusted p-values from a block bootstrap of the daily differences
                         (uses their joint dependence, so less conservative than Holm when variants correlate)
    ablation_table       each variant against a named base with raw, Holm and Romano-Wolf p-values
    pbo_cscv             probability of backtest overfitting of "pick the in-sample best" (Bailey et al., CSCV)
    deflated_sharpe      the Sharpe ratio's significance after N trials (Bailey & Lopez de Prado)

Sharpe ratios here are per period (not annualised). Plain numpy / scipy: no Ray, no torch. docs/multiple_testing.md
says what each answers and assumes.
"""

from __future__ import annotations

import math
from itertools import combinations
from typing import Any

import numpy as np
import pandas as pd
from scipy import stats

from crnn_ray.metrics import hac_lags, newey_west_tstat

__all__ = ["ALTERNATIVES", "EULER_GAMMA", "ablation_table", "block_bootstrap_indices", "default_block",
           "deflated_sharpe", "deflated_sharpe_of_best", "expected_max_sharpe", "hac_tstats", "holm",
           "paired_difference", "paired_test", "pbo_cscv", "probabilistic_sharpe", "romano_wolf", "t_pvalue"]

ALTERNATIVES = ("two-sided", "greater")
EULER_GAMMA = 0.5772156649015329
#: resampled cells (draws x days x series) per chunk in romano_wolf: about 32 MB of float64 at a time
_BOOT_CELLS = 4_000_000


def _alternative(alternative: str) -> str:
    if alternative not in ALTERNATIVES:
        raise ValueError(f"alternative must be one of {ALTERNATIVES}, got {alternative!r}")
    return alternative


def paired_difference(a: Any, b: Any) -> pd.Series | np.ndarray:
    """a - b on the days both are finite. Two pandas Series are aligned on their index (dates) and a Series
    comes back; arrays must have the same length (same days) and an array comes back."""
    if isinstance(a, pd.Series) and isinstance(b, pd.Series):
        diff = a.astype(np.float64) - b.astype(np.float64).reindex(a.index)
        return diff[np.isfinite(diff)]
    a, b = np.asarray(a, dtype=np.float64).ravel(), np.asarray(b, dtype=np.float64).ravel()
    if a.shape != b.shape:
        raise ValueError(f"paired_difference: {a.size} days against {b.size} (pass Series to align by date)")
    diff = a - b
    return diff[np.isfinite(diff)]


def t_pvalue(t: float, n: int, alternative: str = "two-sided") -> float:
    """p-value of a t statistic on n observations (Student t, n - 1 degrees of freedom: newey_west_tstat's
    small-sample scaling); "greater" tests mean > 0. NaN when t is NaN or n < 2."""
    _alternative(alternative)
    t = float(t)
    if not math.isfinite(t) or n < 2:
        return math.nan
    if alternative == "greater":
        return float(stats.t.sf(t, n - 1))
    return float(2.0 * stats.t.sf(abs(t), n - 1))


def paired_test(a: Any, b: Any, *, lags: int | None = None, horizon: int = 1,
                alternative: str = "two-sided") -> dict:
    """a against b on the same days: {"diff": mean daily a - b, "tstat_hac", "p_value", "lags", "n_days"}.

    lags: Newey-West lags (default metrics.hac_lags(n_days, horizon): at least H - 1 for H-day labels)."""
    diff = np.asarray(paired_difference(a, b), dtype=np.float64)
    n = int(diff.size)
    lags = hac_lags(n, horizon) if lags is None else int(lags)
    t = newey_west_tstat(diff, lags)
    return {"diff": float(diff.mean()) if n else math.nan, "tstat_hac": t,
            "p_value": t_pvalue(t, n, alternative), "lags": lags, "n_days": n}


def hac_tstats(x: np.ndarray, lags: int) -> np.ndarray:
    """Newey-West t of each column's mean for x [..., T, K] (finite), vectorised over leading axes and columns;
    the same formula as metrics.newey_west_tstat (Bartlett weights, var(mean) = S / (T - 1)); NaN where S <= 0."""
    x = np.asarray(x, dtype=np.float64)
    n = x.shape[-2]
    lags = min(max(int(lags), 0), n - 1)
    mean = x.mean(axis=-2)
    e = x - mean[..., None, :]
    s = np.einsum("...tk,...tk->...k", e, e) / n
    for j in range(1, lags + 1):
        s += 2.0 * (1.0 - j / (lags + 1.0)) * np.einsum("...tk,...tk->...k", e[..., j:, :], e[..., :-j, :]) / n
    with np.errstate(divide="ignore", invalid="ignore"):
        return np.where(s > 0, mean / np.sqrt(s / (n - 1)), np.nan)


def holm(pvalues: Any) -> np.ndarray:
    """Holm step-down adjusted p-values (controls the family-wise error rate under any dependence).

    The i-th smallest of m p-values becomes max_{j <= i} min(1, (m - j + 1) p_(j)). NaN p-values stay NaN
    and do not count in m."""
    p = np.asarray(pvalues, dtype=np.float64).ravel()
    out = np.full(p.shape, np.nan)
    ok = np.flatnonzero(np.isfinite(p))
    m = ok.size
    if not m:
        return out
    order = ok[np.argsort(p[ok], kind="stable")]
    adjusted = np.maximum.accumulate(np.minimum(1.0, (m - np.arange(m)) * p[order]))
    out[order] = adjusted
    return out


def block_bootstrap_indices(n: int, n_boot: int, block: float, rng: np.random.Generator,
                            method: str = "stationary") -> np.ndarray:
    """[n_boot, n] day indices of block-bootstrap resamples of an n-day series (blocks wrap around the end).

    "stationary" (Politis & Romano 1994): blocks of geometric length with mean `block`, each starting at a
    uniform day; "circular": blocks of exactly round(block) days. Blocks keep the series' short-range
    dependence (overlapping H-day labels, volatility clusters) that an iid resample would destroy."""
    if n < 1 or n_boot < 1 or not block >= 1:
        raise ValueError(f"block_bootstrap_indices: need n, n_boot >= 1 and block >= 1 (got {n}, {n_boot}, {block})")
    t = np.arange(n)
    if method == "stationary":
        starts = rng.random((n_boot, n)) < 1.0 / float(block)
        starts[:, 0] = True
        origin = rng.integers(0, n, size=(n_boot, n))
        last = np.maximum.accumulate(np.where(starts, t, 0), axis=1)  # the day each position's block began
        return (np.take_along_axis(origin, last, axis=1) + t - last) % n
    if method == "circular":
        length = max(1, int(round(block)))
        n_blocks = -(-n // length)
        origin = rng.integers(0, n, size=(n_boot, n_blocks))
        return ((origin[:, :, None] + np.arange(length)) % n).reshape(n_boot, n_blocks * length)[:, :n]
    raise ValueError(f"method must be 'stationary' or 'circular', got {method!r}")


def default_block(n: int, lags: int) -> int:
    """Mean block length: max(lags + 1, ceil(n^(1/3))) — longer than the dependence the HAC t allows for,
    and growing with the sample like the usual n^(1/3) rate."""
    return max(int(lags) + 1, math.ceil(n ** (1.0 / 3.0)))


def romano_wolf(diffs: Any, *, lags: int | None = None, horizon: int = 1, n_boot: int = 1000,
                block: float | None = None, method: str = "stationary", seed: int = 0,
                alternative: str = "two-sided") -> dict:
    """Romano-Wolf step-down adjusted p-values for K daily difference series [T, K] (variant - base per day).

    The statistics are the columns' HAC t (lags: default hac_lags(T, horizon)). The days are resampled
    together (block bootstrap, `method`, mean block length `block`, default default_block), so the columns'
    correlation is kept; each draw's t* is studentised around the observed mean. Ordered by observed t
    (|t| when two-sided), the j-th hypothesis gets p_j = (1 + #{max over the not-yet-rejected t* >= t_(j)}) /
    (1 + n_boot), made monotone (Romano & Wolf 2005, 2016). Controls the family-wise error rate asymptotically.
    Rows with a non-finite value are dropped (the common days). Returns {"tstat", "p_adjusted", "n_days",
    "lags", "block", "n_boot"} (arrays in column order)."""
    alternative = _alternative(alternative)
    x = np.asarray(diffs, dtype=np.float64)
    if x.ndim == 1:
        x = x[:, None]
    x = x[np.isfinite(x).all(axis=1)]
    n, k = x.shape
    if n < 3 or k < 1:
        raise ValueError(f"romano_wolf: need at least 3 common finite days and 1 series (got {n} x {k})")
    lags = hac_lags(n, horizon) if lags is None else int(lags)
    block = default_block(n, lags) if block is None else float(block)
    t_obs = np.array([newey_west_tstat(x[:, j], lags) for j in range(k)])
    stat = np.abs(t_obs) if alternative == "two-sided" else t_obs
    stat = np.where(np.isfinite(stat), stat, -np.inf)
    order = np.argsort(-stat, kind="stable")
    rng = np.random.default_rng(seed)
    mean = x.mean(axis=0)
    exceed = np.zeros(k)
    chunk = max(1, _BOOT_CELLS // (n * k))
    for lo in range(0, n_boot, chunk):
        idx = block_bootstrap_indices(n, min(chunk, n_boot - lo), block, rng, method)
        xb = x[idx]                                      # [B, T, K]
        tb = hac_tstats(xb - mean, lags)                 # centred: t* under the null of each column
        tb = np.nan_to_num(np.abs(tb) if alternative == "two-sided" else tb, nan=-np.inf)
        # max over the hypotheses ranked j..K, for every j: a reversed running max over the ordered columns
        tail_max = np.maximum.accumulate(tb[:, order][:, ::-1], axis=1)[:, ::-1]
        exceed += (tail_max >= stat[order]).sum(axis=0)
    p_ordered = np.maximum.accumulate((1.0 + exceed) / (1.0 + n_boot))
    p_ordered[~np.isfinite(stat[order])] = np.nan
    p = np.empty(k)
    p[order] = p_ordered
    return {"tstat": t_obs, "p_adjusted": p, "n_days": n, "lags": lags, "block": block, "n_boot": int(n_boot)}


def ablation_table(daily: pd.DataFrame, base: str, *, horizon: int = 1, lags: int | None = None,
                   alpha: float = 0.05, n_boot: int = 1000, block: float | None = None, seed: int = 0,
                   alternative: str = "greater") -> pd.DataFrame:
    """Every column of `daily` (days x lines, e.g. each variant's daily RankIC pooled over windows and seeds)
    against the column `base`, on the days where all are finite: one row per variant with "diff" (mean daily
    difference), "tstat_hac", "p_value" (uncorrected), "p_holm", "p_romano_wolf", "beats_base" (Romano-Wolf
    p <= alpha, with a positive difference), "n_days", "lags". alternative "greater": does it beat the base."""
    if base not in daily.columns:
        raise ValueError(f"ablation_table: base {base!r} not among the columns ({', '.join(map(str, daily.columns))})")
    variants = [c for c in daily.columns if c != base]
    if not variants:
        raise ValueError("ablation_table: no variant besides the base")
    common = daily[np.isfinite(daily.to_numpy(np.float64)).all(axis=1)]
    diffs = common[variants].to_numpy(np.float64) - common[[base]].to_numpy(np.float64)
    rw = romano_wolf(diffs, lags=lags, horizon=horizon, n_boot=n_boot, block=block, seed=seed,
                     alternative=alternative)
    n = rw["n_days"]
    p_raw = np.array([t_pvalue(t, n, alternative) for t in rw["tstat"]])
    table = pd.DataFrame({"variant": variants, "base": base, "diff": diffs.mean(axis=0), "tstat_hac": rw["tstat"],
                          "p_value": p_raw, "p_holm": holm(p_raw), "p_romano_wolf": rw["p_adjusted"],
                          "n_days": n, "lags": rw["lags"]})
    table["beats_base"] = (table["p_romano_wolf"] <= alpha) & (table["diff"] > 0)
    return table


def _column_metric(total: np.ndarray, squares: np.ndarray, n: int, metric: str) -> np.ndarray:
    mean = total / n
    if metric == "mean":
        return mean
    var = np.clip((squares - n * mean * mean) / (n - 1), 0.0, None)
    with np.errstate(divide="ignore", invalid="ignore"):
        return np.where(var > 0, mean / np.sqrt(var), np.nan)


def pbo_cscv(perf: Any, n_splits: int = 16, metric: str = "mean") -> dict:
    """Probability of backtest overfitting of "pick the in-sample best of N" (Bailey, Borwein, Lopez de Prado
    & Zhu 2017, combinatorially symmetric cross-validation) from a T x N matrix of daily performance.

    The days (rows with a non-finite value dropped, then the earliest T mod S) are cut into S = n_splits even
    blocks in time order; for each of the C(S, S/2) ways to take half of them as in-sample (the rest out of
    sample), the line best in sample by `metric` ("mean", or "sharpe": mean / std) gets its out-of-sample
    relative rank w = rank / (N + 1) (rank 1 worst .. N best, ties averaged) and the logit log(w / (1 - w)).
    PBO is the share of logits <= 0: how often the in-sample winner is at or below the out-of-sample median.
    About 0.5 when no line has an edge, near 0 when one truly dominates. Returns {"pbo", "logits",
    "oos_of_best" (the winner's out-of-sample metric per split), "prob_oos_below_zero", "n_combinations",
    "n_splits", "n_days", "n_lines"}."""
    if metric not in ("mean", "sharpe"):
        raise ValueError(f"metric must be 'mean' or 'sharpe', got {metric!r}")
    x = np.asarray(perf, dtype=np.float64)
    if x.ndim != 2 or x.shape[1] < 2:
        raise ValueError(f"pbo_cscv: need a T x N matrix with N >= 2 lines (got shape {x.shape})")
    if n_splits < 2 or n_splits % 2:
        raise ValueError(f"pbo_cscv: n_splits must be an even number >= 2 (got {n_splits})")
    x = x[np.isfinite(x).all(axis=1)]
    per = x.shape[0] // n_splits
    if per < 2:
        raise ValueError(f"pbo_cscv: {x.shape[0]} finite days cannot make {n_splits} blocks of 2 or more days")
    x = x[x.shape[0] - per * n_splits:]
    n_lines = x.shape[1]
    blocks = x.reshape(n_splits, per, n_lines)
    total, squares = blocks.sum(axis=1), (blocks * blocks).sum(axis=1)          # [S, N]
    chosen = np.zeros((math.comb(n_splits, n_splits // 2), n_splits))
    for c, combo in enumerate(combinations(range(n_splits), n_splits // 2)):
        chosen[c, list(combo)] = 1.0
    half = per * n_splits // 2
    m_in = _column_metric(chosen @ total, chosen @ squares, half, metric)        # [C, N]
    m_out = _column_metric((1 - chosen) @ total, (1 - chosen) @ squares, half, metric)
    best = np.argmax(np.nan_to_num(m_in, nan=-np.inf), axis=1)
    oos_best = m_out[np.arange(len(best)), best]
    below = (m_out < oos_best[:, None]).sum(axis=1)
    ties = (m_out == oos_best[:, None]).sum(axis=1)                              # includes the winner itself
    rank = below + (ties + 1) / 2.0
    w = rank / (n_lines + 1.0)
    logits = np.log(w / (1.0 - w))
    return {"pbo": float(np.mean(logits <= 0)), "logits": logits, "oos_of_best": oos_best,
            "prob_oos_below_zero": float(np.mean(oos_best < 0)), "n_combinations": int(len(logits)),
            "n_splits": int(n_splits), "n_days": int(x.shape[0]), "n_lines": int(n_lines)}


def _moments(returns: Any) -> tuple[np.ndarray, float, float, float]:
    x = np.asarray(returns, dtype=np.float64).ravel()
    x = x[np.isfinite(x)]
    if x.size < 3:
        raise ValueError(f"need at least 3 finite returns (got {x.size})")
    sd = x.std(ddof=1)
    sr = float(x.mean() / sd) if sd > 0 else math.nan
    return x, sr, float(stats.skew(x)), float(stats.kurtosis(x, fisher=False))


def probabilistic_sharpe(returns: Any, sr_benchmark: float = 0.0) -> float:
    """P(true Sharpe > sr_benchmark) given the observed per-period Sharpe of `returns` (Bailey & Lopez de Prado
    2012): Phi((SR - SR*) sqrt(T - 1) / sqrt(1 - skew SR + (kurt - 1) / 4 SR^2)), kurt non-excess. With
    SR* = 0 it is the plain test's 1 - p (one-sided), corrected for fat tails and skew."""
    x, sr, skew, kurt = _moments(returns)
    den = 1.0 - skew * sr + (kurt - 1.0) / 4.0 * sr * sr
    if not (math.isfinite(sr) and den > 0):
        return math.nan
    return float(stats.norm.cdf((sr - sr_benchmark) * math.sqrt(x.size - 1) / math.sqrt(den)))


def expected_max_sharpe(n_trials: int, sharpe_var: float) -> float:
    """E[max of N trials' Sharpe] when all have true Sharpe 0 and the trials' Sharpes vary with variance V:
    sqrt(V) ((1 - g) Phi^-1(1 - 1/N) + g Phi^-1(1 - 1/(N e))), g the Euler-Mascheroni constant. 0 for N <= 1."""
    if n_trials <= 1 or not sharpe_var > 0:
        return 0.0
    g = EULER_GAMMA
    return math.sqrt(sharpe_var) * ((1.0 - g) * stats.norm.ppf(1.0 - 1.0 / n_trials)
                                    + g * stats.norm.ppf(1.0 - 1.0 / (n_trials * math.e)))


def deflated_sharpe(returns: Any, *, n_trials: int, sharpe_var: float) -> dict:
    """Deflated Sharpe ratio (Bailey & Lopez de Prado 2014) of the line picked among n_trials: the probabilistic
    Sharpe against SR0 = expected_max_sharpe(n_trials, sharpe_var) instead of 0, i.e. the probability that its
    true Sharpe beats what the best of N skill-less trials would show. sharpe_var: the variance of the N trials'
    per-period Sharpes. Returns {"sharpe", "sr0", "dsr", "psr" (against 0), "skew", "kurtosis", "n", "n_trials"}.
    Correlated trials count for fewer than N: pass an effective number if known (N overstates the bar)."""
    x, sr, skew, kurt = _moments(returns)
    sr0 = expected_max_sharpe(int(n_trials), float(sharpe_var))
    return {"sharpe": sr, "sr0": sr0, "dsr": probabilistic_sharpe(x, sr0), "psr": probabilistic_sharpe(x, 0.0),
            "skew": skew, "kurtosis": kurt, "n": int(x.size), "n_trials": int(n_trials)}


def deflated_sharpe_of_best(perf: Any) -> dict:
    """deflated_sharpe of the line with the highest per-period Sharpe among the N columns of perf [T, N]
    (N trials, their Sharpes' variance measured), plus "best" (its column index)."""
    x = np.asarray(perf, dtype=np.float64)
    if x.ndim != 2 or x.shape[1] < 2:
        raise ValueError(f"deflated_sharpe_of_best: need a T x N matrix with N >= 2 (got shape {x.shape})")
    ok = np.isfinite(x)
    n = ok.sum(axis=0)
    with np.errstate(divide="ignore", invalid="ignore"):
        mean = np.where(ok, x, 0.0).sum(axis=0) / n
        sd = np.sqrt(np.where(ok, (x - mean) ** 2, 0.0).sum(axis=0) / (n - 1))
        sharpes = np.where((n >= 3) & (sd > 0), mean / sd, np.nan)
    ok = np.isfinite(sharpes)
    best = int(np.flatnonzero(ok)[np.argmax(sharpes[ok])])
    out = deflated_sharpe(x[:, best], n_trials=int(ok.sum()), sharpe_var=float(np.var(sharpes[ok], ddof=1)))
    out["best"] = best
    return out
