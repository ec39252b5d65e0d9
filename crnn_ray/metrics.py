"""Cross-sectional evaluation of a signal against a forward-return label over a [days x stocks] panel.

Everything is computed on [days x stocks] arrays with masks -- no per-day Python loop: sorting rows ranks all
days at once, with ties averaged -- in cache-sized blocks of days that run on a few threads. Definitions
follow Qlib and alphalens (docs/metrics.md gives every formula and where our numbers differ from theirs).

A pair (d, s) is valid when both signal and label are finite. A day with fewer than `min_stocks` valid pairs
is skipped: NaN in `Evaluation.daily`, counted in `summary["n_days_skipped"]`.
"""

from __future__ import annotations

import math
import os
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import pandas as pd

from crnn_ray.config import auto_or, choice, int_at_least, positive_int, positive_number, setting
from crnn_ray.io import CliError

__all__ = [
    "Evaluation",
    "average_ranks",
    "zscore_by_day",
    "scaled_ranks",
    "daily_ic",
    "daily_rank_ic",
    "quantile_buckets",
    "evaluate",
    "break_even_bps",
    "Costs",
    "BOOKS",
    "liquidity_split",
    "Neutral",
    "neutralize_by_day",
    "neutral_label",
    "trailing_beta",
    "hac_lags",
    "newey_west_tstat",
    "nonoverlap_tstat",
    "align_frames",
    "evaluate_frames",
]


# ----------------------------------------------------------------------------------------------------------
# building blocks
# ----------------------------------------------------------------------------------------------------------


#: elements per block of days: a block's float64 temporaries (~2 MB) stay in cache across the ~30 numpy
#: passes over it, instead of streaming (and page-faulting) full-panel temporaries through memory
_BLOCK_ELEMENTS = 1 << 18


def _as_panel(a: Any, name: str) -> np.ndarray:
    arr = np.asarray(a)
    if arr.ndim != 2:
        raise CliError(f"{name}: expected a [days x stocks] array, got shape {arr.shape}")
    if not (np.issubdtype(arr.dtype, np.floating) or np.issubdtype(arr.dtype, np.integer)):
        raise CliError(f"{name}: expected a numeric array, got dtype {arr.dtype}")
    return arr


def _check_shapes(signal: np.ndarray, label: np.ndarray) -> None:
    if signal.shape != label.shape:
        raise CliError(f"signal shape {signal.shape} != label shape {label.shape}")


def _check_min_stocks(min_stocks: int) -> int:
    if int(min_stocks) != min_stocks or min_stocks < 2:
        raise CliError(f"min_stocks must be an integer >= 2 (a correlation needs two stocks), got {min_stocks}")
    return int(min_stocks)


def _day_blocks(n_days: int, n_stocks: int):
    step = max(1, _BLOCK_ELEMENTS // max(n_stocks, 1))
    if n_days == 0:
        yield 0, 0
    for lo in range(0, n_days, step):
        yield lo, min(lo + step, n_days)


_KEEP_SIGN = np.int64(0x7FFF_FFFF_FFFF_FFFF)
_FLAT_INDEX: dict[int, np.ndarray] = {}  # read-only 0..size-1 per block size, built once (blocks share a size)


def _flat_index(size: int) -> np.ndarray:
    index = _FLAT_INDEX.get(size)
    if index is None:
        index = np.arange(size, dtype=np.int64)
        index.flags.writeable = False
        if len(_FLAT_INDEX) < 8:
            _FLAT_INDEX[size] = index
    return index


_INF_BITS = np.float64(np.inf).view(np.int64)


def _row_counts(mask: np.ndarray) -> np.ndarray:
    """True entries per row of a boolean [rows x cols] array, as int64.

    Summing the bytes into a narrow integer is ~3-5x faster than np.count_nonzero(axis=1) (which sums into
    intp); int16 holds any count below 2**15, int32 any other.
    """
    narrow = np.int16 if mask.shape[1] < 2**15 else np.int32
    return mask.view(np.uint8).sum(axis=1, dtype=narrow).astype(np.int64)


def _bit_mask(valid: np.ndarray) -> np.ndarray:
    """int64 all-ones where `valid`, 0 elsewhere: `x.view(int64) & mask` zero-fills a float array in one SIMD
    pass, where np.where(valid, x, 0.0) (a branch per element) is ~7x slower."""
    mask = valid.view(np.int8).astype(np.int64)
    np.negative(mask, out=mask)
    return mask


def _sorted_keys(x: np.ndarray, valid: np.ndarray, filled: np.ndarray | None = None) -> tuple[np.ndarray, ...]:
    """Sort each row once as int64 keys: the value's order-preserving bits on top, its flat index in the low bits.

    One plain np.sort (SIMD in numpy 2) then gives both the sorted values and where they came from -- about 4x
    cheaper than argsort + take_along_axis, and the flat index makes the scatter back a 1-D fancy assignment.
    Invalid entries sort last (as NaN); -0.0 is made +0.0 (they tie). The index overwrites the value's lowest
    `bits` bits: `exact` says that no value had any of them set (true for float32 data), else equal keys may
    hide distinct values and the caller checks. Returns (sorted keys, scratch, bits, exact).
    `filled` (overwritten), if given, is x + 0.0 where valid and +inf or NaN elsewhere (all above the valid values).
    `scratch` is an int64 array of x's shape used on the way, free for the caller (one allocation fewer).
    """
    bits = max(1, (x.size - 1).bit_length())
    low = np.int64((1 << bits) - 1)
    if filled is None:
        filled = np.where(valid, x, np.nan)
        filled += 0.0  # -0.0 -> +0.0
    keys = filled.view(np.int64)
    exact = not (np.bitwise_or.reduce(keys, axis=None) & low)
    flip = np.right_shift(keys, 63)  # negatives: flip all bits but the sign (IEEE bits -> signed integer order)
    flip &= _KEEP_SIGN & ~low
    keys ^= flip
    if not exact:
        keys &= ~low
    keys |= _flat_index(x.size).reshape(x.shape)
    keys.sort(axis=1)
    return keys, flip, bits, exact


def _ranks_zero_filled(x: np.ndarray, valid: np.ndarray, n_valid: np.ndarray | None = None,
                       filled: np.ndarray | None = None) -> np.ndarray:
    """Average ranks 1..n of x[valid] per row, 0.0 where not valid (`n_valid`: valid entries per row, and
    `filled`: see _sorted_keys, if the caller has them).

    Sort each row once (invalid entries pushed to the end), find the runs of equal values, and give every
    member of a run the mean of the run's first and last position: scipy.stats.rankdata's "average" rule for
    all rows at once. Ranks are half-integers, so sums of their products are exact in float64.
    """
    n_rows, n_cols = x.shape
    if n_cols == 0 or n_rows == 0:
        return np.zeros((n_rows, n_cols), dtype=np.float64)
    if n_valid is None:
        n_valid = _row_counts(valid)
    keys, scratch, bits, exact = _sorted_keys(x, valid, filled)
    index = np.bitwise_and(keys, np.int64((1 << bits) - 1), out=scratch)  # flat index of each sorted entry
    keys >>= bits
    # runs of equal values; every row starts a run, so no run crosses rows (the invalid tail is one run)
    run_start = np.empty((n_rows, n_cols), dtype=bool)
    run_start[:, 0] = True
    np.not_equal(keys[:, 1:], keys[:, :-1], out=run_start[:, 1:])
    ranks = keys.view(np.float64).ravel()  # the keys' buffer (ours, see _sorted_keys) receives the ranks
    del keys
    if not exact:
        # a run of equal truncated keys must hold equal values (in the valid part); rows where it does not
        # (distinct values whose keys agree above the index bits: within ~2**-34 relative for a block) are
        # ranked again with argsort
        ordered = x.take(index)
        clash = np.not_equal(ordered[:, 1:], ordered[:, :-1])
        clash &= ~run_start[:, 1:]
        clash &= valid.take(index[:, 1:])
        bad = np.flatnonzero(clash.any(axis=1))
        if bad.size:
            filled = np.where(valid[bad], x[bad], np.nan)
            order = np.argsort(filled, axis=1)
            index[bad] = order + (bad * n_cols)[:, None]
            ordered = np.take_along_axis(filled, order, axis=1)
            run_start[bad, 1:] = (ordered[:, 1:] != ordered[:, :-1]) & ~np.isnan(ordered[:, :-1])  # one NaN tail
    starts = np.flatnonzero(run_start)
    lengths = np.diff(starts, append=n_rows * n_cols)
    run_rank = (starts % n_cols) + (lengths + 1) * 0.5  # 1-based mean rank of the run's members
    # the invalid tail of a row (the run starting at its n_valid-th position) ranks 0
    has_tail = np.flatnonzero(n_valid < n_cols)
    run_rank[np.searchsorted(starts, has_tail * n_cols + n_valid[has_tail])] = 0.0
    ranks[index.ravel()] = np.repeat(run_rank, lengths)
    return ranks.reshape(n_rows, n_cols)


def average_ranks(x: np.ndarray) -> np.ndarray:
    """Per-row (per-day) ranks 1..n with ties given their average rank; NaN stays NaN and is not counted."""
    x = _as_panel(x, "x").astype(np.float64, copy=False)
    ranks = _ranks_zero_filled(x, ~np.isnan(x))
    ranks[np.isnan(x)] = np.nan
    return ranks


def zscore_by_day(x: Any) -> np.ndarray:
    """Per-day (row) z-score over the non-NaN entries, (x - mean) / std with ddof=0; 0.0 where x is NaN.

    The cross-section is what a daily portfolio trades, so signals and planted terms are standardised within
    each day. A day whose values are all equal (or single) gets 0 (the centre): no spread, no information.
    The sums run over whole zero-filled rows, the arithmetic of np.nanmean / np.nanstd (synthetic panels
    stay bit-identical), and each row's result does not depend on the other rows.
    """
    x = _as_panel(x, "x").astype(np.float64, copy=False)
    absent = np.isnan(x)
    n = _row_counts(~absent)[:, None]
    centred = np.where(absent, 0.0, x)
    with np.errstate(invalid="ignore", divide="ignore"):
        centred -= centred.sum(axis=1, keepdims=True) / n
        centred[absent] = 0.0
        std = np.sqrt((centred * centred).sum(axis=1, keepdims=True) / n)
        return np.where(std > 1e-12, centred / std, 0.0)


def scaled_ranks(x: Any) -> np.ndarray:
    """Per-day average ranks scaled to [-0.5, 0.5], (rank - 1) / (n - 1) - 0.5 over the day's n non-NaN
    entries; 0 on a day with one entry, NaN stays NaN.

    Ranks drop the day's level, scale and fat tails (a training target, the rank_mean ensemble); ties share
    their average rank, so the result is exact (ranks are half-integers).
    """
    ranks = average_ranks(x)
    absent = np.isnan(ranks)
    n = _row_counts(~absent)[:, None].astype(np.float64)
    with np.errstate(invalid="ignore", divide="ignore"):
        scaled = np.where(n > 1, (ranks - 1.0) / np.maximum(n - 1.0, 1.0) - 0.5, 0.0)
    scaled[absent] = np.nan
    return scaled


def _rank_pearson(rx: np.ndarray, ry: np.ndarray, n: np.ndarray) -> tuple[np.ndarray, ...]:
    """Row-wise Pearson of zero-filled average ranks over the same n valid entries (means are (n+1)/2).

    Returns (r, constant_x, constant_y): a row whose ranks are all tied had a constant input.
    """
    centre = n * ((n + 1) * 0.5) ** 2
    sxy = np.einsum("ij,ij->i", rx, ry) - centre
    sxx = np.einsum("ij,ij->i", rx, rx) - centre
    syy = np.einsum("ij,ij->i", ry, ry) - centre
    const_x, const_y = sxx < 0.125, syy < 0.125  # exact arithmetic: 0 when tied, >= 0.25 otherwise
    with np.errstate(invalid="ignore", divide="ignore"):
        r = np.clip(sxy / np.sqrt(sxx * syy), -1.0, 1.0)
    r[const_x | const_y] = np.nan
    return r, const_x, const_y


def _value_pearson(x0: np.ndarray, y0: np.ndarray, mask: np.ndarray, n: np.ndarray) -> tuple[np.ndarray, ...]:
    """Row-wise Pearson over the valid entries of zero-filled x0, y0 (two-pass, centred: accurate at any
    level), and the sum of y. `mask`: _bit_mask of the valid entries. x0 is overwritten (one temporary fewer)."""
    safe_n = np.maximum(n, 1)[:, None]
    sum_y = y0.sum(axis=1)
    dx = x0
    dx -= x0.sum(axis=1, keepdims=True) / safe_n
    dy = y0 - sum_y[:, None] / safe_n
    dx.view(np.int64)[...] &= mask
    dy.view(np.int64)[...] &= mask
    sxy = np.einsum("ij,ij->i", dx, dy)
    sxx = np.einsum("ij,ij->i", dx, dx)
    syy = np.einsum("ij,ij->i", dy, dy)
    with np.errstate(invalid="ignore", divide="ignore"):
        r = np.clip(sxy / np.sqrt(sxx * syy), -1.0, 1.0)
    return r, sum_y


def _moment_pearson(rx: np.ndarray, ry: np.ndarray, ranked_x: np.ndarray, ranked_y: np.ndarray) -> np.ndarray:
    """Row-wise Pearson of two zero-filled rank arrays over the entries ranked (> 0) in both (`ranked_x`,
    `ranked_y`: where rx, ry are > 0; combining these bools is far cheaper than testing the floats).

    Ranks are half-integers, so every sum below is exact in any order; a product with an unranked (0) entry is
    0, so sum(rx * ry) needs no mask.
    """
    both = ranked_x & ranked_y
    n = _row_counts(both)
    both = both.astype(np.float64)
    x, y = rx * both, ry * both
    sx, sy = x.sum(axis=1), y.sum(axis=1)
    with np.errstate(invalid="ignore", divide="ignore"):
        sxy = np.einsum("ij,ij->i", rx, ry) - sx * sy / n
        sxx = np.einsum("ij,ij->i", x, rx) - sx * sx / n
        syy = np.einsum("ij,ij->i", y, ry) - sy * sy / n
        r = np.clip(sxy / np.sqrt(sxx * syy), -1.0, 1.0)
    r[(n < 2) | (sxx < 1e-6) | (syy < 1e-6)] = np.nan
    return r


def quantile_buckets(ranks: np.ndarray, n: np.ndarray, quantiles: int) -> np.ndarray:
    """Bucket 1..Q of each ranked entry (0 where the rank is NaN or 0), equal-sized as pandas.qcut makes them.

    For a day with n distinct values, the stock at 0-based sorted position i lands in bucket
    max(1, ceil(i * Q / (n - 1))) -- exactly what `pd.qcut(x, Q, labels=False) + 1` (alphalens'
    quantize_factor) gives. Tied stocks share their average position, so they always share a bucket.
    Positions are half-integers and the quotient is at least 1/(2(n-1)) from any non-hit integer, so the
    float ceil below is exact.
    """
    ranks = np.nan_to_num(np.asarray(ranks, dtype=np.float64), nan=0.0)
    return _buckets(ranks, ranks >= 1.0, n, quantiles)


def _buckets(ranks: np.ndarray, has_rank: np.ndarray, n: np.ndarray, quantiles: int) -> np.ndarray:
    """quantile_buckets on zero-filled ranks whose mask is known (no NaN to clean: two passes fewer)."""
    bucket = _bucket_floats(ranks, n, quantiles)
    bucket *= has_rank
    return bucket.astype(np.int64)


def _bucket_floats(ranks: np.ndarray, n: np.ndarray, quantiles: int) -> np.ndarray:
    """The bucket 1..Q of every rank as a float, unranked entries included (the caller zeroes them)."""
    denom = np.maximum(np.asarray(n, dtype=np.float64) - 1.0, 1.0)[:, None]
    bucket = ranks - 1.0
    bucket *= float(quantiles) / denom
    np.ceil(bucket, out=bucket)
    np.clip(bucket, 1, quantiles, out=bucket)
    return bucket


def _bucket_sums(values: np.ndarray, bucket: np.ndarray, quantiles: int) -> tuple[np.ndarray, ...]:
    """Per-day sum of `values` in each bucket 1..Q and the bucket sizes, both [D, Q], and the buckets as a
    narrow integer array (for cheap comparisons). `bucket` (float buckets, 0 = none) is overwritten.

    The sums take one weighted bincount. For a few buckets the sizes are counted bucket by bucket on int8
    buckets (Q passes over one byte per entry): ~3x cheaper than a second bincount.
    """
    n_days = values.shape[0]
    width = quantiles + 1
    small = bucket.astype(np.int8 if quantiles < 128 else np.int64)
    bucket += (np.arange(n_days) * float(width))[:, None]  # float offsets: exact, and no int64 temporary
    index = bucket.astype(np.intp).ravel()
    sums = np.bincount(index, weights=values.ravel(), minlength=n_days * width).reshape(n_days, width)[:, 1:]
    if quantiles <= 16:
        counts = np.stack([_row_counts(small == q) for q in range(1, width)], axis=1).reshape(n_days, quantiles)
    else:
        counts = np.bincount(index, minlength=n_days * width).reshape(n_days, width)[:, 1:]
    return sums, counts, small


def _block_stats(sig: np.ndarray, lab: np.ndarray, min_stocks: int, quantiles: int, portfolios: bool,
                 horizon: int = 1, ret: np.ndarray | None = None) -> dict:
    """All statistics of one block of days that need no other day (fully vectorised over the block).

    `ret` (realised pnl only): the 1-day returns of the block's days and of the `horizon - 1` days after it,
    over which the block's last books are still held."""
    # C order: row sums are pairwise only along a contiguous axis, so any layout (a cropped grid is often
    # F-ordered) gives the same bits
    sig = np.ascontiguousarray(sig, dtype=np.float64)
    lab = np.ascontiguousarray(lab, dtype=np.float64)
    valid = np.isfinite(sig)
    valid &= np.isfinite(lab)
    n_pairs = _row_counts(valid)
    use_day = n_pairs >= min_stocks
    valid &= use_day[:, None]  # skipped days take no part in anything below
    n = np.where(use_day, n_pairs, 0)

    # zero-filled values serve the IC and the bucket sums; plus +inf where invalid they are ready to sort
    mask = _bit_mask(valid)
    sig0 = (sig.view(np.int64) & mask).view(np.float64)
    lab0 = (lab.view(np.int64) & mask).view(np.float64)
    last = (np.invert(mask) & _INF_BITS).view(np.float64)  # 0.0 or inf; adding it turns -0.0 into +0.0 (they tie)
    sig_filled = sig0 + last
    ic, sum_lab = _value_pearson(sig0, lab0, mask, n)  # overwrites sig0, which nothing else needs
    del sig0
    rank_sig = _ranks_zero_filled(sig, valid, n, sig_filled)
    del sig_filled
    rank_lab = _ranks_zero_filled(lab, valid, n, np.add(lab0, last, out=last))
    del last
    rank_ic, const_sig, const_lab = _rank_pearson(rank_sig, rank_lab, n)
    del rank_lab
    ic[const_sig | const_lab] = np.nan  # constant input: correlation undefined (scipy gives NaN too)
    ic[~use_day] = np.nan
    rank_ic[~use_day] = np.nan
    stats = {"n": n_pairs, "use_day": use_day, "ic": ic, "rank_ic": rank_ic}
    if not portfolios:
        return stats

    bucket = _bucket_floats(rank_sig, n, quantiles)
    bucket.view(np.int64)[...] &= mask  # 0: not ranked
    q_sums, q_counts, bucket = _bucket_sums(lab0, bucket, quantiles)
    del lab0
    book = use_day & (q_counts[:, -1] > 0) & (q_counts[:, 0] > 0)
    n_top, n_bottom = q_counts[:, -1] * book, q_counts[:, 0] * book
    with np.errstate(divide="ignore"):
        inv_top, inv_bottom = np.where(book, 1.0 / n_top, 0.0), np.where(book, 1.0 / n_bottom, 0.0)
    top, bottom = bucket == quantiles, bucket == 1
    if not book.all():  # days without a book hold no legs
        top &= book[:, None]
        bottom &= book[:, None]
    books = {"top": top, "bottom": bottom,
             "n_top": n_top, "n_bottom": n_bottom, "inv_top": inv_top, "inv_bottom": inv_bottom,
             "rank_sig": rank_sig, "valid": valid}
    # days whose book of `horizon` days earlier lies in this block; the first ones are left to _scan
    lag = min(horizon, rank_sig.shape[0])
    stats.update(q_sums=q_sums, q_counts=q_counts, sum_lab=sum_lab, book=book, books=books,
                 lagged=_lagged_stats({k: v[lag:] for k, v in books.items()},
                                      {k: v[:v.shape[0] - lag] for k, v in books.items()}))
    if ret is not None:
        with np.errstate(divide="ignore"):
            inv_n = np.where(book, 1.0 / np.maximum(n, 1), 0.0)
        for name, c in _book_returns(top, bottom, inv_top, inv_bottom, valid & book[:, None], inv_n, ret,
                                     horizon).items():
            stats[f"c_{name}"] = c
    return stats


def _book_returns(top: np.ndarray, bottom: np.ndarray, inv_top: np.ndarray, inv_bottom: np.ndarray,
                  universe: np.ndarray, inv_n: np.ndarray, ret: np.ndarray, horizon: int) -> tuple[np.ndarray, ...]:
    """{book: c[d, k] = w_d . r[d + k]}, k = 0..H-1: what each day's books earn on each day held.

    w_d: +1/n_top on the top bucket and -1/n_bottom on the bottom one ("ls"), +1/n_top on the top bucket and
    -1/n_d on every valid pair of the day ("long": vs the cross-sectional mean), or +1/n_top on the top bucket
    alone ("long_only"); zero on days without a book. A missing return counts 0; days past the end of `ret`
    earn 0 (never realised). Row-wise dot products over the block (no per-day loop).
    """
    n_days = top.shape[0]
    r0 = np.ascontiguousarray(ret, dtype=np.float64)
    r0 = np.where(np.isfinite(r0), r0, 0.0)
    w_top = top * inv_top[:, None]
    weights = {"ls": w_top - bottom * inv_bottom[:, None], "long": w_top - universe * inv_n[:, None],
               "long_only": w_top}
    out = {name: np.zeros((n_days, horizon)) for name in weights}
    for k in range(horizon):
        m = min(n_days, r0.shape[0] - k)
        if m <= 0:
            break
        for name, w in weights.items():
            out[name][:m, k] = np.einsum("ij,ij->i", w[:m], r0[k:k + m])
    return out


def _lagged_stats(now: dict, before: dict) -> dict:
    """Turnover and rank autocorrelation of each day's books (`now`) against those of `horizon` days earlier.

    The books hold equal weights (+1/n_top on the top bucket, -1/n_bottom on the bottom one), so the traded
    notional sum_i |w_i - w'_i| follows from how many names each pair of legs shares: four boolean passes
    instead of building and differencing float weight arrays.
    """
    top, bottom, prev_top, prev_bottom = now["top"], now["bottom"], before["top"], before["bottom"]
    tt = _row_counts(top & prev_top)  # names kept in the top leg
    tb = _row_counts(top & prev_bottom)  # names moved from the bottom leg to the top one
    bt = _row_counts(bottom & prev_top)
    bb = _row_counts(bottom & prev_bottom)
    a, c, pa, pc = now["n_top"], now["n_bottom"], before["n_top"], before["n_bottom"]
    ia, ic, pia, pic = now["inv_top"], now["inv_bottom"], before["inv_top"], before["inv_bottom"]
    # buys: raising a long or covering a short; sells: cutting a long or opening / raising a short (a sell tax
    # is levied on both)
    up, down = np.maximum(ia - pia, 0.0), np.maximum(pia - ia, 0.0)
    bought_long = tt * up + (a - tt) * ia
    sold_long = tt * down + (pa - tt) * pia
    bought = (tt * up + (a - tt - tb) * ia + tb * (ia + pic) + bb * np.maximum(pic - ic, 0.0)
              + (pc - tb - bb) * pic)
    sold = (tt * down + (pa - tt - bt) * pia + bt * (ic + pia) + bb * np.maximum(ic - pic, 0.0)
            + (c - bt - bb) * ic)
    return {
        "traded": bought + sold,
        "traded_long": bought_long + sold_long,
        "bought": bought, "sold": sold, "bought_long": bought_long, "sold_long": sold_long,
        "new_top": a - tt,
        "new_bottom": c - bb,
        "autocorr": _moment_pearson(now["rank_sig"], before["rank_sig"], now["valid"], before["valid"]),
    }


def scan_threads() -> int:
    """Worker threads for the block scan: the CPUs this process may use, capped by OMP_NUM_THREADS if set
    (a Ray worker's CPU quota sets it), so a trial never uses more cores than it was granted."""
    try:
        cpus = len(os.sched_getaffinity(0))
    except AttributeError:  # not Linux
        cpus = os.cpu_count() or 1
    omp = os.environ.get("OMP_NUM_THREADS", "")
    if omp.isdigit() and int(omp) > 0:
        cpus = min(cpus, int(omp))
    return max(1, min(cpus, 8))


def _scan(signal: np.ndarray, label: np.ndarray, min_stocks: int, quantiles: int, horizon: int,
          portfolios: bool = True, returns: np.ndarray | None = None) -> dict[str, np.ndarray]:
    """Every per-day statistic, block of days by block of days.

    Blocks are independent (numpy releases the GIL, so they run on a few threads); the books of the last
    `horizon` days are then carried from block to block, in order, for the turnover figures.
    """
    n_days, n_stocks = signal.shape
    blocks = list(_day_blocks(n_days, n_stocks))
    work = lambda span: _block_stats(signal[span[0]:span[1]], label[span[0]:span[1]],  # noqa: E731
                                     min_stocks, quantiles, portfolios, horizon,
                                     None if returns is None else returns[span[0]:span[1] + horizon - 1])
    threads = min(scan_threads(), len(blocks))
    pool = ThreadPoolExecutor(max_workers=threads) if threads > 1 else None
    results = pool.map(work, blocks) if pool else map(work, blocks)

    out: dict[str, list[np.ndarray]] = {}
    # books of the previous `horizon` days (zeros before the first day: the first books are opened from cash)
    prev = {"top": np.zeros((horizon, n_stocks), dtype=bool), "bottom": np.zeros((horizon, n_stocks), dtype=bool),
            "rank_sig": np.zeros((horizon, n_stocks)), "valid": np.zeros((horizon, n_stocks), dtype=bool),
            "n_top": np.zeros(horizon, dtype=np.int64), "n_bottom": np.zeros(horizon, dtype=np.int64),
            "inv_top": np.zeros(horizon), "inv_bottom": np.zeros(horizon)}
    heads_now: list[dict] = []  # each block's first days, and the carried books they look back into
    heads_before: list[dict] = []
    tails: list[dict] = []  # what the worker computed for the block's other days
    try:
        for stats in results:
            if portfolios:
                books = stats.pop("books")
                tails.append(stats.pop("lagged"))
                size = books["top"].shape[0]
                lag = min(horizon, size)
                heads_now.append({k: v[:lag].copy() for k, v in books.items()})
                heads_before.append({k: v[:lag] for k, v in prev.items()})
                prev = {k: (books[k][size - horizon:].copy() if size >= horizon
                            else np.concatenate([prev[k][size:], books[k]])) for k in prev}
            for key, value in stats.items():
                out.setdefault(key, []).append(value)
    finally:
        if pool:
            pool.shutdown()
    if portfolios:
        # the blocks' first days, all in one vectorised call once the workers are done: run per block in this
        # thread, these small numpy calls held the GIL against the workers
        stack = lambda heads: {k: np.concatenate([h[k] for h in heads]) for k in heads[0]}  # noqa: E731
        head = _lagged_stats(stack(heads_now), stack(heads_before))
        bounds = np.cumsum([h["top"].shape[0] for h in heads_now])[:-1]
        for key, value in head.items():
            out[key] = [part for pair in zip(np.split(value, bounds), (t[key] for t in tails)) for part in pair]
    return {key: np.concatenate(parts) for key, parts in out.items()}


def daily_ic(signal: Any, label: Any, min_stocks: int = 10) -> np.ndarray:
    """Pearson correlation of signal and label across stocks, one value per day (NaN on skipped days)."""
    signal, label = _as_panel(signal, "signal"), _as_panel(label, "label")
    _check_shapes(signal, label)
    return _scan(signal, label, _check_min_stocks(min_stocks), 2, 1, portfolios=False)["ic"]


def daily_rank_ic(signal: Any, label: Any, min_stocks: int = 10) -> np.ndarray:
    """Spearman correlation per day: Pearson of the average ranks over the valid pairs of that day."""
    signal, label = _as_panel(signal, "signal"), _as_panel(label, "label")
    _check_shapes(signal, label)
    return _scan(signal, label, _check_min_stocks(min_stocks), 2, 1, portfolios=False)["rank_ic"]


def _std(x: np.ndarray) -> float:
    x = x[np.isfinite(x)]
    return float(np.std(x, ddof=1)) if x.size >= 2 else math.nan


def _mean(x: np.ndarray) -> float:
    x = x[np.isfinite(x)]
    return float(np.mean(x)) if x.size else math.nan


def _ratio(num: float, den: float) -> float:
    return num / den if (math.isfinite(num) and math.isfinite(den) and den > 0) else math.nan


def _perf(pnl: np.ndarray, periods_per_year: float) -> dict[str, float]:
    """Total, annualised mean, annualised vol, Sharpe and max drawdown of a daily (summed, not compounded) pnl."""
    mean, std = _mean(pnl), _std(pnl)
    cum = np.cumsum(np.nan_to_num(pnl, nan=0.0))
    drawdown = cum - np.maximum.accumulate(np.maximum(cum, 0.0)) if cum.size else cum
    has = np.isfinite(pnl).any()
    return {
        "total": float(np.nansum(pnl)) if has else math.nan,
        "ann_return": mean * periods_per_year,
        "ann_vol": std * math.sqrt(periods_per_year) if math.isfinite(std) else math.nan,
        "sharpe": _ratio(mean, std) * math.sqrt(periods_per_year),
        "max_drawdown": float(drawdown.min()) if has else math.nan,
    }


def _perf_offsets(pnl_h: np.ndarray, periods_per_year: float, horizon: int) -> dict[str, float]:
    """_perf of the non-overlapping strategies: H-day book returns `pnl_h` of every H-th formation day, one
    strategy per offset 0..H-1 (full capital, rebalanced every H days), annualised with P/H periods a year;
    each figure is the mean over the offsets where it is defined."""
    per = [_perf(pnl_h[o::horizon], periods_per_year / horizon) for o in range(horizon)]
    return {key: _mean(np.array([p[key] for p in per])) for key in per[0]}


def hac_lags(n: int, horizon: int = 1) -> int:
    """Newey-West lags for a series of n days of H-day-label figures: max(2H, floor(4 (n / 100)^(2/9))).

    The second term is Newey & West's (1994) plug-in rule of thumb for the Bartlett kernel. Overlapping H-day
    labels make the daily IC an MA(H-1) process whose Bartlett-weighted autocovariances are cut short at H - 1
    lags (weights 1 - j/H leave out much of lags 1..H-1: quickstart IC t 5.40 at 4 lags vs 4.49 Hansen-Hodrick
    vs 4.00 non-overlapping), so at least 2H lags are kept; H = 1 keeps the rule of thumb (>= 2 from n = 5).
    """
    n, horizon = max(int(n), 0), max(int(horizon), 1)
    floor = 2 * horizon if horizon > 1 else 0
    return max(floor, math.floor(4.0 * (n / 100.0) ** (2.0 / 9.0))) if n else floor


def nonoverlap_tstat(x: Any, horizon: int) -> float:
    """The t-statistic of mean(x) from non-overlapping days only: for each offset o = 0..H-1 the plain t of
    x[o], x[o+H], x[o+2H], ... (NaN days dropped; H-day labels of days H apart share no return, so these are
    independent draws), averaged over the offsets with two values or more. H = 1: the plain t.

    No kernel, no lag choice: the check beside the Newey-West t (n / H values each, so noisier)."""
    x = np.asarray(x, dtype=np.float64).ravel()
    horizon = max(int(horizon), 1)
    ts = []
    for o in range(horizon):
        part = x[o::horizon]
        part = part[np.isfinite(part)]
        if part.size >= 2:
            sd = float(part.std(ddof=1))
            if sd > 0:
                ts.append(float(part.mean()) / sd * math.sqrt(part.size))
    return float(np.mean(ts)) if ts else math.nan


def newey_west_tstat(x: Any, lags: int) -> float:
    """t-statistic of mean(x) with a Newey-West (Bartlett kernel) standard error; NaN entries are dropped.

    With e = x - mean(x) over the n finite values, gamma_j = sum_t e_t e_{t-j} / n and weights
    1 - j / (lags + 1): S = gamma_0 + 2 sum_{j=1..lags} w_j gamma_j, var(mean) = S / (n - 1) (the small-sample
    factor n / (n - 1), so that lags = 0 gives the plain t = mean / (std_ddof1 / sqrt(n))). Lags are capped at
    n - 1. NaN when n < 2 or S <= 0.
    """
    x = np.asarray(x, dtype=np.float64).ravel()
    x = x[np.isfinite(x)]
    n = x.size
    if n < 2:
        return math.nan
    lags = min(max(int(lags), 0), n - 1)
    mean = float(x.mean())
    e = x - mean
    s = float(e @ e) / n
    for j in range(1, lags + 1):  # lags, not days: a handful of dot products
        s += 2.0 * (1.0 - j / (lags + 1.0)) * float(e[j:] @ e[:-j]) / n
    if not s > 0:
        return math.nan
    return mean / math.sqrt(s / (n - 1))


def _shift(x: np.ndarray, by: int) -> np.ndarray:
    """x moved `by` days later (NaN in front)."""
    if by <= 0:
        return x
    out = np.full_like(x, np.nan)
    if by < x.size:
        out[by:] = x[:x.size - by]
    return out


def _realised(day: dict, returns: np.ndarray, horizon: int, costs: Costs) -> dict[str, np.ndarray]:
    """Daily pnl of the overlapping-books strategy: the portfolio of day t is W_t = (1/H) sum_{k<H} w_{t-k}
    (the books formed on days t-H+1..t), its pnl W_t . r[t] (missing returns count 0), its traded notional
    |W_t - W_{t-1}| = |w_t - w_{t-H}| / H (drift ignored), split into buys and sells for the costs. NaN on
    days that hold and trade nothing, and on days whose returns are all missing (the outcome is unknown, e.g.
    the data's last day)."""
    n_days = returns.shape[0]
    book = day["book"]
    pnl = {}
    for name in BOOKS:
        c = day[f"c_{name}"]
        total = np.zeros(n_days)
        for k in range(min(horizon, n_days)):  # the book of day t - k, in its (k+1)-th day
            total[k:] += c[:n_days - k, k]
        pnl[name] = total / horizon
    booked = np.cumsum(book.astype(np.int64))
    live = booked - np.concatenate([np.zeros(horizon, dtype=np.int64), booked[:-horizon]])[:n_days]
    turnover = day["traded"] / horizon  # the book formed today replaces the one formed H days ago
    has_return = np.isfinite(returns).any(axis=1)
    realised = ((live > 0) | (turnover > 0)) & has_return
    out = {"turnover_port": np.where(realised, turnover, np.nan),
           "turnover_port_long": np.where(realised, day["traded_long"] / horizon, np.nan)}
    cost = {"ls": costs.of(day["bought"], day["sold"]) / horizon,
            "long": costs.of(day["bought_long"], day["sold_long"]) / horizon}
    cost["long_only"] = cost["long"]  # the top leg is the only one traded in both
    for name in BOOKS:
        out[f"pnl_{name}"] = np.where(realised, pnl[name], np.nan)
        out[f"pnl_{name}_net"] = out[f"pnl_{name}"] - np.where(realised, cost[name], np.nan)
    return out


# ----------------------------------------------------------------------------------------------------------
# neutral returns
# ----------------------------------------------------------------------------------------------------------

#: the cost the scorer and the evaluate command assume unless told (bps per unit traded, each side): a liquid
#: large-cap book's commission + half spread; a desk sets its market's (docs/metrics.md, "Costs")
DEFAULT_COST_BPS = 10.0
#: the signal smoothings (days) the scorer's turnover control chooses among on the selection split
SMOOTH_DAYS = (1, 2, 3, 5, 10)
#: what IC, RankIC, quantiles and pnl are measured on (EvaluationConfig.returns_basis)
RETURNS_BASES = ("neutral", "total")
#: days of a trailing beta, and the fewest of them with a return a beta needs
BETA_DAYS, BETA_MIN_DAYS = 60, 20
#: the beta of a name without BETA_MIN_DAYS of history: the market's own
BETA_FILL = 1.0
#: the fewest names per regressor a day needs for its group dummies (then its beta) to join the fit
NAMES_PER_REGRESSOR = 5


@dataclass
class Neutral:
    """What labels and returns are residualised against, per date (docs/metrics.md, "Neutral returns"):
    always the equal-weight market (the day's mean), plus a trailing beta [D, S] and a group code [D, S]
    (a sector; NaN: unknown) when given."""

    beta: np.ndarray | None = None
    group: np.ndarray | None = None

    def describe(self) -> str:
        parts = ["equal-weight market"] + (["trailing beta"] if self.beta is not None else []) + (
            ["group"] if self.group is not None else [])
        return "neutral (" + " + ".join(parts) + ")"


def trailing_beta(returns: Any, lag: int = 0, days: int = BETA_DAYS, min_days: int = BETA_MIN_DAYS) -> np.ndarray:
    """[D, S] beta of each name to the equal-weight market, from the 1-day returns known at each decision day.

    `returns[d]` is the return from close d+lag to d+lag+1 (a panel's y1), known at close d+lag+1, so day t
    uses rows t-lag-days .. t-lag-1: OLS slope of the name's returns on the day's mean return over the rows
    where the name has one (>= min_days; NaN otherwise). Running sums over days: no per-day loop."""
    r = _as_panel(returns, "returns").astype(np.float64)
    n_days = r.shape[0]
    have = np.isfinite(r)
    count = have.sum(axis=1)
    with np.errstate(invalid="ignore", divide="ignore"):
        market = np.where(count > 0, np.where(have, r, 0.0).sum(axis=1) / count, np.nan)
    use = have & np.isfinite(market)[:, None]
    m = np.where(use, market[:, None], 0.0)
    x = np.where(use, r, 0.0)

    def window(a: np.ndarray) -> np.ndarray:  # sum over rows t-lag-days .. t-lag-1 for each t
        c = np.concatenate([np.zeros((1,) + a.shape[1:]), np.cumsum(a, axis=0)])
        t = np.arange(n_days)
        hi = np.clip(t - lag, 0, n_days)
        lo = np.clip(t - lag - days, 0, n_days)
        return c[hi] - c[lo]

    n = window(use.astype(np.float64))
    sx, sm, sxm, smm = window(x), window(m), window(x * m), window(m * m)
    with np.errstate(invalid="ignore", divide="ignore"):
        cov = sxm - sx * sm / n
        var = smm - sm * sm / n
        beta = cov / var
    beta[(n < min_days) | ~(var > 0)] = np.nan
    return beta


def neutralize_by_day(y: Any, beta: Any = None, group: Any = None) -> np.ndarray:
    """Residual of y per day (row) from an equal-weight OLS on the day's finite entries: on a constant, one
    dummy per group when `group` is given (NaN group: a group of its own), and `beta` when given (a NaN beta
    reads as BETA_FILL). A day with fewer than NAMES_PER_REGRESSOR names per regressor leaves the groups out
    (then the beta): on a thin cross-section a dozen dummies would absorb much of any signal's own spread.
    NaN stays NaN. Blocks of days, one small least-squares solve per day (pinv: collinear columns are fine)."""
    y = _as_panel(y, "y").astype(np.float64)
    valid = np.isfinite(y)
    n_days, n_stocks = y.shape
    b = None
    if beta is not None:
        b = _as_panel(beta, "beta").astype(np.float64)
        if b.shape != y.shape:
            raise CliError(f"beta shape {b.shape} != {y.shape}")
        b = np.where(np.isfinite(b), b, BETA_FILL)
    codes, n_groups = None, 0
    if group is not None:
        g = _as_panel(group, "group").astype(np.float64)
        if g.shape != y.shape:
            raise CliError(f"group shape {g.shape} != {y.shape}")
        known = np.isfinite(g)
        values, inverse = np.unique(g[known], return_inverse=True)
        codes = np.full(y.shape, len(values), dtype=np.int64)
        codes[known] = inverse
        n_groups = len(values) + 1
    k = 1 + n_groups + (b is not None)  # constant, group dummies, beta
    n_valid = _row_counts(valid)
    present = np.zeros(n_days, dtype=np.int64)  # groups with a name on the day
    if codes is not None:
        hit = np.zeros((n_days, n_groups), dtype=bool)
        d_idx, s_idx = np.nonzero(valid)
        hit[d_idx, codes[d_idx, s_idx]] = True
        present = hit.sum(axis=1)
    use_beta = n_valid >= NAMES_PER_REGRESSOR * 2 if b is not None else np.zeros(n_days, dtype=bool)
    use_group = n_valid >= NAMES_PER_REGRESSOR * (present + use_beta)
    out = np.full(y.shape, np.nan)
    step = max(1, (1 << 20) // max(1, n_stocks * k))
    for lo in range(0, n_days, step):
        hi = min(n_days, lo + step)
        ok = valid[lo:hi]
        X = np.zeros((hi - lo, n_stocks, k))
        X[..., 0] = 1.0
        if codes is not None:
            np.put_along_axis(X, 1 + codes[lo:hi, :, None], 1.0, axis=2)
            X[~use_group[lo:hi], :, 1:1 + n_groups] = 0.0
        if b is not None:
            X[..., -1] = b[lo:hi] * use_beta[lo:hi, None]
        X *= ok[..., None]
        y0 = np.where(ok, y[lo:hi], 0.0)
        xtx = np.einsum("dsk,dsl->dkl", X, X)
        xty = np.einsum("dsk,ds->dk", X, y0)
        coef = np.einsum("dkl,dl->dk", np.linalg.pinv(xtx, hermitian=True), xty)
        fit = np.einsum("dsk,dk->ds", X, coef)
        out[lo:hi] = np.where(ok, y[lo:hi] - fit, np.nan)
    return out


def neutral_label(signal: Any, label: Any, neutral: Neutral) -> np.ndarray:
    """The label residualised per date over the day's valid pairs (finite signal and label): what `evaluate`
    scores with `neutral` (NaN off the pairs)."""
    signal = np.asarray(signal, dtype=np.float64)
    label = np.asarray(label, dtype=np.float64)
    pairs = np.isfinite(signal) & np.isfinite(label)
    return neutralize_by_day(np.where(pairs, label, np.nan), neutral.beta, neutral.group)


# ----------------------------------------------------------------------------------------------------------
# evaluation
# ----------------------------------------------------------------------------------------------------------


@dataclass
class Evaluation:
    """Result of `evaluate`: JSON-safe summary, one row per day, mean label by signal quantile."""

    summary: dict[str, Any]
    daily: pd.DataFrame
    quantile_returns: np.ndarray
    params: dict[str, Any] = field(default_factory=dict)
    #: IC / RankIC on the more and the less liquid half of each day's names (`evaluate(liquidity=...)`); kept
    #: out of `summary` so the summary of a grid is the same with or without a liquidity column
    liquidity_split: dict[str, Any] = field(default_factory=lambda: dict(NO_LIQUIDITY))

    def to_dict(self) -> dict[str, Any]:
        """The summary, the quantile returns, the parameters and the liquidity split: what
        `python -m crnn_ray.evaluate` writes."""
        return {
            "summary": dict(self.summary),
            "quantile_returns": {str(q + 1): float(v) for q, v in enumerate(self.quantile_returns)},
            "params": dict(self.params),
            "liquidity_split": dict(self.liquidity_split),
        }


#: the liquidity split of an evaluation without a liquidity measure
NO_LIQUIDITY: dict[str, Any] = {"available": False, "note": "n/a (no liquidity column)"}


#: the books every evaluation forms: long-short, long against the day's cross-section, long-only (the top
#: bucket alone, a book of its own where shorting is scarce)
BOOKS = ("ls", "long", "long_only")


@dataclass(frozen=True)
class Costs:
    """Trading costs in bps of traded notional, per side: `buy` on buys (raising a long, covering a short),
    `sell` on sells (cutting a long, opening or raising a short), so a sell tax -- levied on short sales too
    in most markets that have one -- is `sell` minus `buy`. A plain number is both sides."""

    buy: float = 0.0
    sell: float = 0.0

    @classmethod
    def of_setting(cls, value: Any) -> Costs:
        """A number (both sides), {"buy": b, "sell": s}, "buy=5,sell=25" or a Costs; CliError otherwise."""
        if isinstance(value, Costs):
            costs = value
        elif isinstance(value, dict) or (isinstance(value, str) and "=" in value):
            pairs = value if isinstance(value, dict) else dict(
                part.split("=", 1) for part in value.replace(" ", "").split(",") if part)
            unknown = sorted(set(map(str, pairs)) - {"buy", "sell"})
            if unknown or not pairs:
                raise CliError(f"cost_bps: expected a number or {{buy: .., sell: ..}}, got {value!r}")
            try:
                costs = cls(float(pairs.get("buy", 0.0)), float(pairs.get("sell", 0.0)))
            except (TypeError, ValueError):
                raise CliError(f"cost_bps: expected numbers for buy and sell, got {value!r}") from None
        else:
            try:
                flat = float(value)
            except (TypeError, ValueError):
                raise CliError(f"cost_bps: expected a number >= 0 or {{buy: .., sell: ..}}, got {value!r}") from None
            costs = cls(flat, flat)
        if not all(math.isfinite(x) and x >= 0 for x in (costs.buy, costs.sell)):
            raise CliError(f"cost_bps: expected finite costs >= 0 on each side, got buy {costs.buy:g}, sell {costs.sell:g}")
        return costs

    @property
    def mean(self) -> float:
        """The cost of one unit traded when buys and sells balance (they do for a book that rolls over)."""
        return 0.5 * (self.buy + self.sell)

    def of(self, bought: np.ndarray, sold: np.ndarray) -> np.ndarray:
        """The cost, as a return, of trading `bought` and `sold` notional."""
        return 1e-4 * (self.buy * np.asarray(bought, dtype=np.float64) + self.sell * np.asarray(sold, dtype=np.float64))

    def setting(self) -> float | dict:
        """The JSON form: a number when both sides are equal, else {"buy": .., "sell": ..}."""
        return float(self.buy) if self.buy == self.sell else {"buy": float(self.buy), "sell": float(self.sell)}

    def describe(self) -> str:
        if self.buy == self.sell:
            return f"{self.buy:g} bps per unit traded"
        return f"{self.buy:g} bps on buys, {self.sell:g} bps on sells (a {self.sell - self.buy:g} bps sell tax)"


def cost_setting(c, value: Any, key: str) -> Any:
    """EvaluationConfig's check of `cost_bps`: a number, {buy, sell} or "buy=5,sell=25"; its JSON form."""
    try:
        return Costs.of_setting(value).setting()
    except CliError as exc:
        raise c.fail(key, str(exc).removeprefix("cost_bps: ")) from None


def break_even_bps(pnl: np.ndarray, turnover: np.ndarray) -> float:
    """The cost, in bps per unit of traded notional, at which the summed net pnl is zero:
    1e4 * mean(pnl) / mean(turnover) over the days where both are finite.

    Net pnl is pnl - cost * turnover day by day, so this is the cost the strategy can pay before its net
    pnl (and net Sharpe) reaches zero. NaN when the mean turnover is 0 (nothing traded: costs cannot turn it)
    or the mean gross pnl is <= 0 (no cost makes a losing strategy break even).
    """
    pnl, turnover = np.asarray(pnl, dtype=np.float64), np.asarray(turnover, dtype=np.float64)
    both = np.isfinite(pnl) & np.isfinite(turnover)
    if not both.any():
        return math.nan
    mean_pnl, mean_turnover = float(pnl[both].mean()), float(turnover[both].mean())
    if not (mean_turnover > 0 and mean_pnl > 0):
        return math.nan
    return 1e4 * mean_pnl / mean_turnover


def liquidity_split(signal: Any, label: Any, liquidity: Any, *, min_stocks: int = 10, horizon: int = 1,
                    days: np.ndarray | None = None) -> dict[str, Any]:
    """Mean daily IC and RankIC on the more liquid and the less liquid half of each day's names.

    A diagnostic: a signal whose IC lives in the illiquid half is worth less than its headline IC, since that
    half costs more to trade. Each day, over the valid pairs (finite signal, label and liquidity), names whose
    liquidity rank is above the day's median rank form the liquid half, those below it the illiquid half (a
    name exactly at the median, odd counts or ties, sits in neither); each half is then scored like the whole
    (a half with fewer than `min_stocks` pairs is skipped that day). `days` (bool [D]) restricts the split to
    the days the whole evaluation used. `ic_diff` is the mean over days of IC(liquid) - IC(illiquid), with its
    Newey-West t (hac_lags(n, horizon)).
    """
    signal, label = _as_panel(signal, "signal"), _as_panel(label, "label")
    liquidity = _as_panel(liquidity, "liquidity")
    if liquidity.shape != signal.shape:
        raise CliError(f"liquidity shape {liquidity.shape} != signal shape {signal.shape}")
    sig = signal.astype(np.float64, copy=False)
    lab = label.astype(np.float64, copy=False)
    liq = liquidity.astype(np.float64, copy=False)
    valid = np.isfinite(sig) & np.isfinite(lab) & np.isfinite(liq)
    if days is not None:
        valid &= np.asarray(days, dtype=bool)[:, None]
    ranks = average_ranks(np.where(valid, liq, np.nan))
    middle = ((_row_counts(valid) + 1) * 0.5)[:, None]
    out: dict[str, Any] = {"available": True}
    daily = {}
    with np.errstate(invalid="ignore"):
        halves = {"liquid": valid & (ranks > middle), "illiquid": valid & (ranks < middle)}
    for name, half in halves.items():
        day = _scan(np.where(half, sig, np.nan), lab, _check_min_stocks(min_stocks), 2, 1, portfolios=False)
        daily[name] = day["ic"]
        out[f"ic_{name}"] = _mean(day["ic"])
        out[f"rank_ic_{name}"] = _mean(day["rank_ic"])
        out[f"mean_stocks_{name}"] = _mean(np.where(day["use_day"], day["n"], np.nan))
    diff = daily["liquid"] - daily["illiquid"]
    n = int(np.isfinite(diff).sum())
    out["ic_diff"] = _mean(diff)
    out["ic_diff_tstat_hac"] = newey_west_tstat(diff, hac_lags(n, horizon))
    out["ic_diff_tstat_nonoverlap"] = nonoverlap_tstat(diff, horizon)
    out["n_days"] = n
    return {k: (v if isinstance(v, (bool, int, str)) else float(v)) for k, v in out.items()}


def evaluate(
    signal: Any,
    label: Any,
    *,
    quantiles: int = 5,
    cost_bps: float | dict | Costs = 0.0,
    min_stocks: int = 10,
    horizon: int = 1,
    periods_per_year: float = 252,
    dates: Any = None,
    returns: Any = None,
    liquidity: Any = None,
    neutral: Neutral | None = None,
) -> Evaluation:
    """IC / RankIC / quantile returns / long-short and long-only pnl / turnover / drawdown of a signal.

    `label` is an H-day forward return (`horizon` = H). Every day opens a book held H days; `ls` / `long`
    attribute to day d its H-day return divided by H (booked on the formation day). The Sharpe, volatility,
    drawdown, cumulative curves and net figures come from a daily pnl series (`summary["pnl_method"]`):
    "daily" (H = 1: the label is the 1-day return), "realised" (H > 1 with `returns`, the [D, S] 1-day forward
    returns aligned with the label: the daily pnl of the H overlapping books) or "non_overlapping" (H > 1
    without returns: every H-th formation day's book, annualised by sqrt(P / H), averaged over the H offsets).
    pnl is summed, not compounded. t-statistics come plain and Newey-West (`*_tstat_hac`). Costs: `cost_bps` per
    unit of traded notional makes the `*_net` figures; `break_even_bps` is the cost that would zero the net pnl.
    `liquidity` ([D, S], e.g. a trailing median traded value, aligned like the label) adds
    `Evaluation.liquidity_split` (IC on the more vs the less liquid half of each day). `neutral` (a Neutral):
    the label (over each day's valid pairs) and the 1-day returns (over each day's known ones) are residualised
    per date against the equal-weight market, a trailing beta and a group first, so that IC, RankIC,
    quantiles and pnl measure what the market, beta and sector exposures do not explain
    (`summary["returns_basis"]` says which). See docs/metrics.md.
    """
    signal, label = _as_panel(signal, "signal"), _as_panel(label, "label")
    _check_shapes(signal, label)
    min_stocks = _check_min_stocks(min_stocks)
    if int(quantiles) != quantiles or quantiles < 2:
        raise CliError(f"quantiles must be an integer >= 2, got {quantiles}")
    if int(horizon) != horizon or horizon < 1:
        raise CliError(f"horizon must be an integer >= 1, got {horizon}")
    costs = Costs.of_setting(cost_bps)
    if not (math.isfinite(periods_per_year) and periods_per_year > 0):
        raise CliError(f"periods_per_year must be > 0, got {periods_per_year}")
    quantiles, horizon = int(quantiles), int(horizon)
    if returns is not None:
        returns = _as_panel(returns, "returns")
        if returns.shape != signal.shape:
            raise CliError(f"returns shape {returns.shape} != signal shape {signal.shape}")
    basis = "total"
    if neutral is not None:  # residual returns: the label over the day's valid pairs, the returns over all known
        label = neutral_label(signal, label, neutral)
        if returns is not None:
            returns = neutralize_by_day(returns, neutral.beta, neutral.group)
        basis = neutral.describe()
    method = "daily" if horizon == 1 else ("realised" if returns is not None else "non_overlapping")
    n_days_total = signal.shape[0]
    if dates is None:
        dates = np.arange(n_days_total)
    else:
        dates = np.asarray(dates)
        if dates.shape != (n_days_total,):
            raise CliError(f"dates: expected {n_days_total} dates (one per row of signal), got {dates.shape}")

    day = _scan(signal, label, min_stocks, quantiles, horizon, returns=returns if method == "realised" else None)
    n, use_day, ic, rank_ic, book = day["n"], day["use_day"], day["ic"], day["rank_ic"], day["book"]
    n_used = np.where(use_day, n, 0)

    # mean label of each signal quantile bucket (1 = lowest signal) per day, and its mean over days
    q_counts = day["q_counts"]
    with np.errstate(invalid="ignore", divide="ignore"):
        q_means = np.where(q_counts > 0, day["q_sums"] / q_counts, np.nan)
        cs_mean = np.where(use_day, day["sum_lab"] / np.maximum(n_used, 1), np.nan)
    q_mean_over_days = np.array([_mean(q_means[:, q]) for q in range(quantiles)])  # Q values, not days

    # books: long-short = +1 spread equally over the top bucket, -1 over the bottom one; long = the top bucket
    # against the day's cross-section; long-only = the top bucket alone (its own return: a book of its own
    # where shorting is scarce)
    ls = np.where(book, (q_means[:, -1] - q_means[:, 0]) / horizon, np.nan)
    long = np.where(book, (q_means[:, -1] - cs_mean) / horizon, np.nan)
    long_only = np.where(book, q_means[:, -1] / horizon, np.nan)
    # one H-th of the capital is re-formed each day, replacing the book formed H days earlier
    turnover = np.where(book, day["traded"] / horizon, np.nan)
    turnover_long = np.where(book, day["traded_long"] / horizon, np.nan)
    cost_ls = np.where(book, costs.of(day["bought"], day["sold"]) / horizon, np.nan)
    cost_long = np.where(book, costs.of(day["bought_long"], day["sold_long"]) / horizon, np.nan)
    ls_net, long_net, long_only_net = ls - cost_ls, long - cost_long, long_only - cost_long
    # alphalens quantile_turnover: share of today's top (bottom) names not in the bucket `horizon` days ago
    with np.errstate(invalid="ignore", divide="ignore"):
        turnover_top = np.where(book, day["new_top"] / q_counts[:, -1], np.nan)
        turnover_bottom = np.where(book, day["new_bottom"] / q_counts[:, 0], np.nan)
    turnover_top[:horizon] = np.nan
    turnover_bottom[:horizon] = np.nan
    # alphalens factor_rank_autocorrelation: rank correlation of the signal with itself `horizon` days ago
    signal_autocorr = day["autocorr"]

    # the daily pnl series the Sharpe / vol / drawdown / curves come from (docs/metrics.md, "Which daily pnl")
    booked = {"ls": ls, "long": long, "long_only": long_only, "ls_net": ls_net, "long_net": long_net,
              "long_only_net": long_only_net}
    perf_booked = {name: _perf(x, periods_per_year) for name, x in booked.items()}
    if method == "realised":
        series = _realised(day, returns, horizon, costs)
        perf = {name: _perf(series[f"pnl_{name}"], periods_per_year) for name in booked}
    else:
        # daily: the booked series is the daily one; non_overlapping: each book's H-day return is realised on
        # the last day it is held (the curve is the mean over the H offsets' curves)
        series = {f"pnl_{name}": _shift(x, horizon - 1) for name, x in booked.items()}
        series["turnover_port"], series["turnover_port_long"] = turnover, turnover_long
        perf = dict(perf_booked)
        if method == "non_overlapping":
            perf = {name: {**_perf_offsets(x * horizon, periods_per_year, horizon),
                           "total": perf_booked[name]["total"]} for name, x in booked.items()}
    perf_ls, perf_long, perf_ls_net, perf_long_net = (perf[k] for k in ("ls", "long", "ls_net", "long_net"))
    cum = {name: np.cumsum(np.nan_to_num(series[f"pnl_{name}"], nan=0.0)) for name in booked}
    cum_ls = cum["ls"]
    # the cost that zeroes the summed net pnl: the net figures' own gross series and traded notional
    if method == "realised":
        gross_turnover = {"ls": (series["pnl_ls"], series["turnover_port"]),
                          "long": (series["pnl_long"], series["turnover_port_long"]),
                          "long_only": (series["pnl_long_only"], series["turnover_port_long"])}
    else:  # daily / non_overlapping: the net totals are sums of the booked ls_d - cost * turnover_d
        gross_turnover = {"ls": (ls, turnover), "long": (long, turnover_long), "long_only": (long_only, turnover_long)}
    # t-statistics: plain (independent days), Newey-West with lags >= 2H (overlapping labels) and from
    # non-overlapping days only
    lags = hac_lags(int(use_day.sum()), horizon)
    ls_days = ls if method == "non_overlapping" else series["pnl_ls"]  # the mean daily long-short pnl's series
    ls_days_mean, ls_days_std = _mean(ls_days), _std(ls_days)
    n_ls_days = int(np.isfinite(ls_days).sum())

    ic_mean, ic_std, n_ic = _mean(ic), _std(ic), int(np.isfinite(ic).sum())
    ric_mean, ric_std, n_ric = _mean(rank_ic), _std(rank_ic), int(np.isfinite(rank_ic).sum())
    summary: dict[str, Any] = {
        "ic": ic_mean,
        "ic_std": ic_std,
        "icir": _ratio(ic_mean, ic_std),
        "ic_tstat": _ratio(ic_mean, ic_std) * math.sqrt(n_ic),
        "ic_positive": _mean(np.where(np.isfinite(ic), ic > 0, np.nan)),
        "rank_ic": ric_mean,
        "rank_ic_std": ric_std,
        "rank_icir": _ratio(ric_mean, ric_std),
        "rank_ic_tstat": _ratio(ric_mean, ric_std) * math.sqrt(n_ric),
        "ic_tstat_hac": newey_west_tstat(ic, lags),
        "rank_ic_tstat_hac": newey_west_tstat(rank_ic, lags),
        "ic_tstat_nonoverlap": nonoverlap_tstat(ic, horizon),
        "rank_ic_tstat_nonoverlap": nonoverlap_tstat(rank_ic, horizon),
        "ls_tstat": _ratio(ls_days_mean, ls_days_std) * math.sqrt(n_ls_days),
        "ls_tstat_hac": newey_west_tstat(ls_days, lags),
        "ls_tstat_nonoverlap": nonoverlap_tstat(ls, horizon),
        "ls_net_tstat_hac": newey_west_tstat(ls_net if method == "non_overlapping" else series["pnl_ls_net"], lags),
        "hac_lags": lags,
        "pnl_method": method,
        "returns_basis": basis,
        "n_days": int(use_day.sum()),
        "n_days_skipped": int(n_days_total - use_day.sum()),
        "n_days_ic": n_ic,
        "n_days_book": int(book.sum()),
        "mean_stocks": _mean(np.where(use_day, n, np.nan)),
        "pnl_long_short": perf_ls["total"],
        "pnl_long": perf_long["total"],
        "pnl_long_short_net": perf_ls_net["total"],
        "pnl_long_net": perf_long_net["total"],
        "ls_mean": _mean(ls),
        "long_mean": _mean(long),
        "ann_return": perf_ls["ann_return"],
        "ann_vol": perf_ls["ann_vol"],
        "sharpe": perf_ls["sharpe"],
        "max_drawdown": perf_ls["max_drawdown"],
        "sharpe_booked": perf_booked["ls"]["sharpe"],
        "ann_vol_booked": perf_booked["ls"]["ann_vol"],
        "n_days_pnl": int(np.isfinite(series["pnl_ls"]).sum()),
        "ann_return_net": perf_ls_net["ann_return"],
        "sharpe_net": perf_ls_net["sharpe"],
        "max_drawdown_net": perf_ls_net["max_drawdown"],
        "ann_return_long": perf_long["ann_return"],
        "sharpe_long": perf_long["sharpe"],
        "max_drawdown_long": perf_long["max_drawdown"],
        "ann_return_long_net": perf_long_net["ann_return"],
        "sharpe_long_net": perf_long_net["sharpe"],
        "pnl_long_only": perf["long_only"]["total"],
        "pnl_long_only_net": perf["long_only_net"]["total"],
        "long_only_mean": _mean(long_only),
        "ann_return_long_only": perf["long_only"]["ann_return"],
        "ann_vol_long_only": perf["long_only"]["ann_vol"],
        "sharpe_long_only": perf["long_only"]["sharpe"],
        "max_drawdown_long_only": perf["long_only"]["max_drawdown"],
        "ann_return_long_only_net": perf["long_only_net"]["ann_return"],
        "sharpe_long_only_net": perf["long_only_net"]["sharpe"],
        "max_drawdown_long_only_net": perf["long_only_net"]["max_drawdown"],
        "long_only_net_tstat_hac": newey_west_tstat(
            long_only_net if method == "non_overlapping" else series["pnl_long_only_net"], lags),
        "turnover": _mean(turnover),
        "turnover_long": _mean(turnover_long),
        "turnover_top": _mean(turnover_top),
        "turnover_bottom": _mean(turnover_bottom),
        "signal_autocorr": _mean(signal_autocorr),
        "quantile_spread": float(q_mean_over_days[-1] - q_mean_over_days[0]),
        "cost_bps": costs.mean,
        "cost_bps_buy": costs.buy,
        "cost_bps_sell": costs.sell,
        "break_even_bps": break_even_bps(*gross_turnover["ls"]),
        "break_even_bps_long": break_even_bps(*gross_turnover["long"]),
        "break_even_bps_long_only": break_even_bps(*gross_turnover["long_only"]),
    }
    summary = {k: (v if isinstance(v, (int, str)) else float(v)) for k, v in summary.items()}

    daily = pd.DataFrame(
        {
            "date": dates,
            "n": n.astype(np.int64),  # valid pairs, also on skipped days
            "ic": ic,
            "rank_ic": rank_ic,
            "ls": ls,
            "long": long,
            "turnover": turnover,
            "ls_net": ls_net,
            "long_net": long_net,
            "turnover_long": turnover_long,
            "long_only": long_only,
            "long_only_net": long_only_net,
            "cum_ls": cum_ls,
            "cum_long": cum["long"],
            "cum_ls_net": cum["ls_net"],
            "cum_long_net": cum["long_net"],
            "cum_long_only": cum["long_only"],
            "cum_long_only_net": cum["long_only_net"],
            "drawdown": cum_ls - np.maximum.accumulate(np.maximum(cum_ls, 0.0)),
            **{f"q{q + 1}": q_means[:, q] for q in range(quantiles)},
            **{k: series[k] for k in ("pnl_ls", "pnl_long", "pnl_ls_net", "pnl_long_net", "pnl_long_only",
                                      "pnl_long_only_net", "turnover_port", "turnover_port_long")},
        }
    )
    params = {
        "quantiles": quantiles,
        "cost_bps": costs.setting(),
        "min_stocks": min_stocks,
        "horizon": horizon,
        "periods_per_year": float(periods_per_year),
    }
    split = dict(NO_LIQUIDITY)
    if liquidity is not None:
        split = liquidity_split(signal, label, liquidity, min_stocks=min_stocks, horizon=horizon, days=use_day)
    return Evaluation(summary=summary, daily=daily, quantile_returns=q_mean_over_days, params=params,
                      liquidity_split=split)


# ----------------------------------------------------------------------------------------------------------
# long tables
# ----------------------------------------------------------------------------------------------------------


def _check_table(df: pd.DataFrame, value_col: str, name: str, *, require_variation: bool,
                 keys: bool = True) -> tuple[Any, ...]:
    """Validate one long table; return its days (datetime64[D]), symbols and float values. CliError names the fault.

    Text symbols come back coded once, as a pd.Categorical (a Categorical column, e.g. Parquet dictionaries,
    as it is): the join then works on integer codes, never on a Python string per row. `keys=False`: the
    value column only (another column of a table whose keys were checked), (None, None, values)."""
    for col in ("date", "symbol", value_col) if keys else (value_col,):
        if col not in df.columns:
            raise CliError(f"{name}: missing column {col!r} (has {', '.join(map(str, df.columns[:12]))})")
    values = df[value_col]
    if pd.api.types.is_bool_dtype(values) or not pd.api.types.is_numeric_dtype(values):
        raise CliError(f"{name}: column {value_col!r} must be numeric, got dtype {values.dtype}")
    values = values.to_numpy(dtype=np.float64, na_value=np.nan)
    n_inf = int(np.isinf(values).sum())
    if n_inf:
        raise CliError(f"{name}: column {value_col!r} has {n_inf} infinite value(s); use NaN for missing")
    if require_variation:  # fmin/fmax skip NaN without a filtered copy (infinities are refused above)
        lo, hi = np.fmin.reduce(values, initial=np.nan), np.fmax.reduce(values, initial=np.nan)
        if not np.isfinite(lo) or lo == hi:
            raise CliError(f"{name}: column {value_col!r} is constant (or all missing) over all rows")
    if not keys:
        return None, None, values
    dates = df["date"]
    if pd.api.types.is_datetime64_any_dtype(dates):
        parsed = dates
    elif pd.api.types.is_integer_dtype(dates):  # vendor-style 20240102
        parsed = pd.to_datetime(dates.astype("int64").astype(str), format="%Y%m%d", errors="coerce")
        if parsed.isna().any():
            bad = parsed.isna()
            raise CliError(
                f"{name}: column 'date' holds integers that are not YYYYMMDD dates, e.g. {dates[bad].iloc[0]}"
            )
    else:
        try:
            parsed = pd.to_datetime(dates, errors="coerce")
        except (ValueError, TypeError, OverflowError) as exc:
            raise CliError(f"{name}: column 'date' has unparsable dates ({str(exc).splitlines()[0][:120]})") from None
        bad = parsed.isna() & dates.notna()
        if bad.any():
            raise CliError(
                f"{name}: column 'date' has {int(bad.sum())} unparsable date(s), e.g. {dates[bad].iloc[0]!r} "
                f"(row {int(np.flatnonzero(bad.to_numpy())[0])})"
            )
    if parsed.isna().any():
        raise CliError(f"{name}: column 'date' has {int(parsed.isna().sum())} missing date(s)")
    parsed = parsed.dt.tz_localize(None) if getattr(parsed.dt, "tz", None) is not None else parsed
    symbols = df["symbol"]
    if isinstance(symbols.dtype, pd.CategoricalDtype):
        coded = symbols.array
    elif pd.api.types.is_numeric_dtype(symbols.dtype):  # integer symbols: _codes' lookup table, no hashing
        coded = None
    else:  # one hash pass (Arrow's for Arrow strings); a missing symbol becomes code -1
        codes, uniques = pd.factorize(symbols)
        coded = pd.Categorical.from_codes(codes, uniques, validate=False)
    n_missing = int(symbols.isna().sum()) if coded is None else int((coded.codes < 0).sum())
    if n_missing:
        raise CliError(f"{name}: column 'symbol' has {n_missing} missing symbol(s)")
    stamps = np.asarray(parsed.to_numpy())
    # to days: an integer floor division (numpy's own datetime cast, the same floor, is ~3x slower)
    per_day = np.timedelta64(1, "D") // np.timedelta64(1, np.datetime_data(stamps.dtype)[0])
    days = (stamps.view(np.int64) // per_day).view("datetime64[D]")
    return days, symbols.to_numpy() if coded is None else coded, values


def _codes(keys: Any) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Code one key column once: (each row's code, the codes that occur (ascending), their keys).

    Dates and integer symbols: the offset from the smallest (int32: one subtraction, no hashing, half-width
    temporaries -- fresh 100 MB arrays cost more in page faults than in arithmetic); text symbols: the codes
    of the pd.Categorical _check_table made, whose few categories are the keys; other keys are factorized.
    Each table's keys are coded once and the codes reused for the distinct keys and for the grid position.
    """
    if isinstance(keys, pd.Categorical):
        own, domain = keys.codes, np.asarray(keys.categories, dtype=object)
    elif keys.dtype.kind in "iuM" and len(keys):
        as_int = keys.view(np.int64) if keys.dtype.kind == "M" else keys
        lo, hi = int(as_int.min()), int(as_int.max())
        if hi - lo > min(4 * len(keys) + 4096, 2**31 - 2):  # too sparse for a table over the range
            own, uniques = pd.factorize(keys)
            return own, np.arange(len(uniques)), np.asarray(uniques)
        own = np.empty(len(keys), dtype=np.int32)
        np.subtract(as_int, lo, out=own, casting="unsafe")  # in [0, hi - lo]: fits int32 (checked above)
        seen = np.zeros(hi - lo + 1, dtype=bool)
        seen[own] = True
        used = np.flatnonzero(seen)
        values = used.astype(np.int64) + lo
        return own, used, values.view(keys.dtype) if keys.dtype.kind == "M" else values.astype(keys.dtype)
    else:
        own, uniques = pd.factorize(keys)
        return own, np.arange(len(uniques)), np.asarray(uniques)
    seen = np.zeros(len(domain), dtype=bool)
    seen[own] = True
    used = np.flatnonzero(seen)
    return own, used, domain[used]


def _positions(coded: tuple[np.ndarray, ...], common: np.ndarray) -> tuple[np.ndarray, bool]:
    """Each row's index in `common` (sorted, distinct), -1 where its key is absent, and whether every key is
    in `common` (then no row needs the -1 test): the few distinct keys are looked up once, and one int32
    gather through their codes places every row."""
    own, used, keys = coded
    lut = np.full(int(used[-1]) + 1 if len(used) else 0, -1, dtype=np.int32)
    hit = np.zeros(len(keys), dtype=bool)
    if len(common) and len(keys):
        pos = np.minimum(np.searchsorted(common, keys), len(common) - 1)
        hit = np.asarray(common[pos] == keys, dtype=bool)
        lut[used[hit]] = pos[hit]
    return lut[own], bool(hit.all())


def _check_unique(day_code: np.ndarray, sym_code: np.ndarray, days: np.ndarray, symbols: np.ndarray,
                  name: str) -> None:
    key = day_code.astype(np.int64) * (int(sym_code.max(initial=0)) + 1) + sym_code
    ordered = np.sort(key)
    repeated = ordered[1:] == ordered[:-1]
    if repeated.any():
        first = np.flatnonzero(key == ordered[1:][repeated][0])[0]
        raise CliError(
            f"{name}: {int(repeated.sum())} duplicate (date, symbol) key(s), e.g. ({days[first]}, {symbols[first]})"
        )


def _scatter_table(days: np.ndarray, symbols: Any, day_codes: tuple, sym_codes: tuple, columns: list[np.ndarray],
                   common_days: np.ndarray, common_syms: np.ndarray, name: str) -> tuple[np.ndarray, ...]:
    """Where one table has a row on the flat [len(common_days) * len(common_syms)] grid, then each of its value
    `columns` on that grid (the label and the returns of one table share the keys and the positions).

    One flat index per row: a 1-D scatter is ~50x cheaper than a 2-D fancy one here. Presence is a boolean
    scatter; a cell written twice (a duplicate key inside the grid) shows as fewer cells than rows, and only
    then are the counts made for the message (rows outside the grid are checked by sorting them).
    """
    day, all_days = _positions(day_codes, common_days)
    sym, all_syms = _positions(sym_codes, common_syms)
    inside = (day >= 0) & (sym >= 0) if not (all_days and all_syms) else None  # None: every row inside
    partial = inside is not None and not inside.all()
    n_cells = len(common_days) * len(common_syms)
    index_type = np.int32 if n_cells < 2**31 else np.int64
    flat = day.astype(index_type, copy=False) * index_type(len(common_syms))
    flat += sym
    if partial:
        outside = ~inside
        _check_unique(day_codes[0][outside], sym_codes[0][outside], days[outside], symbols[outside], name)
        flat, columns = flat[inside], [values[inside] for values in columns]
    present = np.zeros(n_cells, dtype=bool)
    present[flat] = True
    if int(np.count_nonzero(present)) != len(flat):
        counts = np.bincount(flat, minlength=n_cells)
        first = int(np.flatnonzero(flat == int(np.argmax(counts > 1)))[0])
        rows = np.flatnonzero(inside)[first] if partial else first
        raise CliError(
            f"{name}: {int((counts[counts > 1] - 1).sum())} duplicate (date, symbol) key(s), "
            f"e.g. ({days[rows]}, {symbols[rows]})"
        )
    grids = []
    for values in columns:
        grid = np.full(n_cells, np.nan)
        grid[flat] = values
        grids.append(grid)
    return (present, *grids)


def align_frames(
    signals_df: pd.DataFrame,
    labels_df: pd.DataFrame,
    label_col: str,
    signal_col: str = "signal",
    *,
    signals_name: str = "signals",
    labels_name: str = "labels",
    returns_col: str | None = None,
) -> tuple[np.ndarray, ...]:
    """Inner-join two long tables on (date, symbol) into signal[D,S], label[D,S], dates[D], symbols[S]
    (and returns[D,S] after them when `returns_col`, a 1-day forward return column of the labels table, is given).

    Keys are coded and values scattered straight into the grids (no DataFrame merge): only the dates and
    symbols with at least one (date, symbol) row in both tables are kept. The returns grid holds every labels
    row's return on those dates and symbols, with or without a signal or a label there (a held name's return
    counts whether or not it is scored that day).
    """
    sig_days, sig_syms, sig_vals = _check_table(signals_df, signal_col, signals_name, require_variation=False)
    lab_days, lab_syms, lab_vals = _check_table(labels_df, label_col, labels_name, require_variation=True)
    ret_vals = None
    if returns_col is not None:
        ret_vals = _check_table(labels_df, returns_col, labels_name, require_variation=False, keys=False)[2]

    def numeric(syms: Any) -> bool:
        return pd.api.types.is_numeric_dtype(syms.categories.dtype if isinstance(syms, pd.Categorical) else syms.dtype)

    if numeric(sig_syms) != numeric(lab_syms):  # e.g. 600000 vs "600000"
        sig_syms, lab_syms = (np.asarray(s, dtype=object).astype(str) if isinstance(s, pd.Categorical)
                              else s.astype(str) for s in (sig_syms, lab_syms))

    sig_day_codes, lab_day_codes = _codes(sig_days), _codes(lab_days)
    sig_sym_codes, lab_sym_codes = _codes(sig_syms), _codes(lab_syms)
    common_days = np.intersect1d(sig_day_codes[2], lab_day_codes[2])
    common_syms = np.intersect1d(sig_sym_codes[2], lab_sym_codes[2])
    has_signal, signal = _scatter_table(sig_days, sig_syms, sig_day_codes, sig_sym_codes, [sig_vals], common_days,
                                        common_syms, signals_name)
    has_label, label, *returns_flat = _scatter_table(
        lab_days, lab_syms, lab_day_codes, lab_sym_codes, [lab_vals] + ([] if ret_vals is None else [ret_vals]),
        common_days, common_syms, labels_name)
    shape = (len(common_days), len(common_syms))
    pair = (has_signal & has_label).reshape(shape)
    keep_days, keep_syms = pair.any(axis=1), pair.any(axis=0)
    if not keep_days.any():
        raise CliError(
            f"no overlapping (date, symbol) rows between {signals_name} ({len(sig_vals)} rows) "
            f"and {labels_name} ({len(lab_vals)} rows)"
        )
    signal, label = signal.reshape(shape), label.reshape(shape)
    # the returns: the labels table's rows and keys, the returns column's values
    returns = returns_flat[0].reshape(shape) if returns_flat else None
    unpaired = ~pair
    if unpaired.any():  # a signal without a label row (or vice versa) is not a pair
        signal[unpaired] = np.nan
        label[unpaired] = np.nan
    if not (keep_days.all() and keep_syms.all()):
        signal, label = signal[keep_days][:, keep_syms], label[keep_days][:, keep_syms]
        returns = None if returns is None else returns[keep_days][:, keep_syms]
    out = (signal, label, common_days[keep_days], np.asarray(common_syms[keep_syms], dtype=object))
    return out if returns is None else (*out, returns)


def evaluate_frames(
    signals_df: pd.DataFrame, labels_df: pd.DataFrame, label_col: str, signal_col: str = "signal", **kw: Any
) -> Evaluation:
    """`evaluate` on long tables aligned on (date, symbol); `Evaluation.daily["date"]` holds the real dates.

    `returns_col` (keyword): a 1-day forward return column of `labels_df`, passed to evaluate as `returns`;
    `liquidity_col`: a liquidity column of `labels_df` (e.g. traded_value_med), passed as `liquidity`;
    `returns_basis` "neutral" (default "total") residualises against the market and, when named, the
    `beta_col` and `group_col` columns of `labels_df` (Neutral)."""
    names = {k: kw.pop(k) for k in ("signals_name", "labels_name", "returns_col") if k in kw}
    extra = {k: kw.pop(f"{k}_col", None) for k in ("liquidity", "beta", "group")}
    basis = kw.pop("returns_basis", "total")
    grids = align_frames(signals_df, labels_df, label_col, signal_col, **names)
    # the same join, with each extra column where the returns would be
    columns = {k: None if col is None else align_frames(signals_df, labels_df, label_col, signal_col,
                                                         **{**names, "returns_col": col})[4]
               for k, col in extra.items()}
    neutral = Neutral(beta=columns["beta"], group=columns["group"]) if basis == "neutral" else None
    return evaluate(grids[0], grids[1], dates=grids[2], returns=grids[4] if len(grids) > 4 else None,
                    liquidity=columns["liquidity"], neutral=neutral, **kw)


@dataclass
class EvaluationConfig:
    """The evaluation's settings: `python -m crnn_ray.evaluate`'s flags and the scorer's `evaluation:` section
    (one field each: the flag, the YAML key and the default cannot disagree)."""

    quantiles: int = setting(5, check=int_at_least(2), flag=True, help="number of signal quantile buckets")
    cost_bps: float | dict = setting(DEFAULT_COST_BPS, check=cost_setting, flag=True,
                                     help="cost per unit of traded notional, bps: a number (both sides) or per side, "
                                          "buy=5,sell=25 (YAML {buy: 5, sell: 25}; a sell tax is sell - buy)")
    min_stocks: int = setting(10, check=int_at_least(2), flag=True, help="skip days with fewer valid pairs")
    periods_per_year: float = setting(252, check=positive_number, flag=True, help="annualisation")
    rolling_ic_days: int = setting(20, check=positive_int)  # the report's rolling mean of the daily IC
    # the scorer's turnover control: "auto" chooses the signal smoothing (mean of the last N days' per-date
    # z-scores) among SMOOTH_DAYS by net Sharpe on each window's selection split, never on test; N fixes it
    smooth_days: int | str = setting("auto", check=auto_or(positive_int))
    returns_basis: str = setting("neutral", check=choice(*RETURNS_BASES), flag=True,
                                 help="neutral: IC, RankIC, quantiles and pnl on returns residualised per date "
                                      "against the equal-weight market, trailing beta and group (docs/metrics.md); "
                                      "total: on the raw returns")

