"""Benchmark: vectorised `crnn_ray.metrics.evaluate` vs the groupby(date).apply(scipy) shape of alphalens / Qlib.

Both sides compute, per day, Pearson IC, Spearman RankIC and the mean label of each signal quantile bucket
(hence the top-minus-bottom long-short); the script prints the largest absolute difference between them, both
wall times and the ratio, measured in one run on the same panel (NaNs and heavy ties included).

    .venv/bin/python bench/metrics_bench.py                      # 2,500 days x 5,000 stocks (12.5M rows)
    .venv/bin/python bench/metrics_bench.py --days 250 --stocks 1000
"""

from __future__ import annotations

import argparse
import os
import sys
import time

import numpy as np
import pandas as pd
import scipy.stats as st

from crnn_ray.metrics import scan_threads, evaluate, evaluate_frames


def make_panel(days: int, stocks: int, seed: int) -> tuple[np.ndarray, np.ndarray]:
    """A weak signal with ties (rounded to 2 decimals), 10% missing signals and 10% missing labels."""
    rng = np.random.default_rng(seed)
    signal = rng.standard_normal((days, stocks)).astype(np.float32)
    label = (0.05 * signal + rng.standard_normal((days, stocks), dtype=np.float32)) * 0.02
    signal = np.round(signal, 2).astype(np.float64)
    label = np.round(label, 4).astype(np.float64)
    signal[rng.random((days, stocks)) < 0.10] = np.nan
    label[rng.random((days, stocks)) < 0.10] = np.nan
    return signal, label


def to_long(signal: np.ndarray, label: np.ndarray) -> pd.DataFrame:
    days, stocks = signal.shape
    return pd.DataFrame(
        {
            "date": np.repeat(pd.bdate_range("2010-01-04", periods=days).to_numpy(), stocks),
            "symbol": np.tile(np.arange(stocks, dtype=np.int32), days),
            "signal": signal.ravel(),
            "label": label.ravel(),
        }
    )


def reference(long: pd.DataFrame, quantiles: int, min_stocks: int) -> pd.DataFrame:
    """The per-day groupby-apply scipy evaluation (IC, RankIC, quantile means, long-short)."""
    df = long.dropna(subset=["signal", "label"])
    df = df[df.groupby("date")["signal"].transform("size") >= min_stocks]
    by_day = df.groupby("date")
    ic = by_day.apply(lambda g: st.pearsonr(g["signal"], g["label"])[0], include_groups=False)
    rank_ic = by_day.apply(lambda g: st.spearmanr(g["signal"], g["label"])[0], include_groups=False)

    def bucket(x: pd.Series) -> pd.Series:  # equal-sized buckets, ties kept together (docs/metrics.md)
        pos = x.rank(method="average") - 1.0
        return np.maximum(1, np.ceil(pos * quantiles / (len(x) - 1))).astype(int)

    df = df.assign(q=by_day["signal"].transform(bucket))
    q_means = df.groupby(["date", "q"])["label"].mean().unstack("q")
    out = pd.DataFrame({"ic": ic, "rank_ic": rank_ic})
    for q in range(1, quantiles + 1):
        out[f"q{q}"] = q_means[q]
    out["ls"] = out[f"q{quantiles}"] - out["q1"]
    return out


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--days", type=int, default=2500)
    ap.add_argument("--stocks", type=int, default=5000)
    ap.add_argument("--quantiles", type=int, default=5)
    ap.add_argument("--min-stocks", type=int, default=10)
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--tolerance", type=float, default=1e-9)
    args = ap.parse_args(argv)

    signal, label = make_panel(args.days, args.stocks, args.seed)
    long = to_long(signal, label)
    print(f"panel: {args.days} days x {args.stocks} stocks = {long.shape[0]:,} rows "
          f"({np.mean(np.isfinite(signal) & np.isfinite(label)):.1%} valid pairs, signal rounded -> ties)")

    def timed(fn):
        wall, cpu = time.perf_counter(), time.process_time()
        result = fn()
        return result, time.perf_counter() - wall, time.process_time() - cpu

    kw = dict(quantiles=args.quantiles, min_stocks=args.min_stocks)
    ev, t_ours, c_ours = timed(lambda: evaluate(signal, label, **kw))
    # the realised pnl of 5 overlapping books (the label stands in for the 1-day returns): its extra cost
    _, t_real, c_real = timed(lambda: evaluate(signal, label, horizon=5, returns=label, **kw))
    # what the evaluate CLI gets: a signals table and a labels table, to be joined on (date, symbol)
    signals_t, labels_t = long[["date", "symbol", "signal"]], long[["date", "symbol", "label"]]
    ev_frames, t_frames, c_frames = timed(lambda: evaluate_frames(signals_t, labels_t, "label", **kw))
    ref, t_ref, c_ref = timed(lambda: reference(long, args.quantiles, args.min_stocks))
    _, t_join, c_join = timed(lambda: signals_t.merge(labels_t, on=["date", "symbol"], how="inner"))

    daily = ev.daily.assign(date=pd.bdate_range("2010-01-04", periods=args.days)).set_index("date")
    cols = ["ic", "rank_ic"] + [f"q{q}" for q in range(1, args.quantiles + 1)] + ["ls"]
    ours = daily.loc[ref.index, cols]
    diffs = {c: float(np.nanmax(np.abs(ours[c].to_numpy() - ref[c].to_numpy()))) for c in cols}
    nan_mismatch = int((ours[cols].isna().to_numpy() != ref[cols].isna().to_numpy()).sum())
    frames_diff = float(np.nanmax(np.abs(ev_frames.daily["ic"].to_numpy() - ev.daily["ic"].to_numpy())))
    worst = max(diffs.values())

    print(f"days compared: {len(ref)}  (ours evaluated {ev.summary['n_days']}, skipped {ev.summary['n_days_skipped']})")
    print("max |ours - reference|: " + "  ".join(f"{c} {v:.2e}" for c, v in diffs.items()))
    print(f"NaN pattern mismatches: {nan_mismatch};  evaluate_frames vs evaluate IC: {frames_diff:.2e}")
    print(f"mean IC {ev.summary['ic']:+.5f} (ref {ref['ic'].mean():+.5f})  "
          f"mean RankIC {ev.summary['rank_ic']:+.5f} (ref {ref['rank_ic'].mean():+.5f})")
    print(f"threads for our block scan: {scan_threads()}  (machine load average {os.getloadavg()[0]:.1f} "
          f"on {os.cpu_count()} CPUs: wall times stretch under load, CPU times less so)")
    print(f"{'':34s} {'wall s':>8s} {'CPU s':>8s}")
    print(f"{'ours evaluate(arrays)':34s} {t_ours:8.2f} {c_ours:8.2f}   (full summary: pnl, turnover, drawdown...)")
    print(f"{'ours evaluate(arrays, H=5, returns)':34s} {t_real:8.2f} {c_real:8.2f}   (+ realised pnl of 5 live books)")
    print(f"{'ours evaluate_frames(long tables)':34s} {t_frames:8.2f} {c_frames:8.2f}   (+ validation, alignment)")
    print(f"{'groupby-apply scipy reference':34s} {t_ref:8.2f} {c_ref:8.2f}   (IC, RankIC, quantile means only)")
    print(f"{'  + pandas merge of the two tables':34s} {t_ref + t_join:8.2f} {c_ref + c_join:8.2f}   "
          f"(the join the reference skips: merge alone {t_join:.2f}s)")
    print(f"speed-up, wall: {t_ref / t_ours:.1f}x on arrays, {t_ref / t_frames:.1f}x from long tables;  "
          f"CPU: {c_ref / c_ours:.1f}x, {c_ref / c_frames:.1f}x  (target >= 20x)")
    print(f"from two long tables, both sides joining: wall {(t_ref + t_join) / t_frames:.1f}x, "
          f"CPU {(c_ref + c_join) / c_frames:.1f}x")
    ok = worst <= args.tolerance and nan_mismatch == 0 and frames_diff <= args.tolerance
    print("numbers agree" if ok else f"MISMATCH: worst diff {worst:.3e} > {args.tolerance:g} or NaN mismatch")
    return 0 if ok else 1


if __name__ == "__main__":
    sys.exit(main())
