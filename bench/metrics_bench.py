"""Benchmark: vectorised `crnn_ray.metrics.evaluate` vs the groupby(date).apply(scipy) shape of alphalens / Qlib.

Both sides compute, per day, Pearson IC, Spearman RankIC and the mean label of each signal quantile bucket
(hence the top-minus-bottom long-short); the script prints the largest absolute difference between them, both
wall times and the ratio, measured in one run on the same panel (NaNs and heavy ties included).

End to end (the second part): two Parquet files, signals (date, symbol, signal) and labels (date, symbol,
label) with text symbols, as a researcher brings them; `python -m crnn_ray.evaluate` run as a subprocess
(interpreter start, imports, read, join, metrics, JSON) against pandas read_parquet + merge + the same
groupby-apply scipy reference in this process (its imports free), with our phases timed in-process.

    .venv/bin/python bench/metrics_bench.py                      # 2,500 days x 5,000 stocks (12.5M rows)
    .venv/bin/python bench/metrics_bench.py --days 250 --stocks 1000
    .venv/bin/python bench/metrics_bench.py --quick              # 250 x 1,000 for both parts
    .venv/bin/python bench/metrics_bench.py --e2e-only           # only the two-file end-to-end case
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

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


def reference(long: pd.DataFrame, quantiles: int | None, min_stocks: int) -> pd.DataFrame:
    """The per-day groupby-apply scipy evaluation (IC, RankIC, quantile means, long-short; quantiles None:
    IC and RankIC only)."""
    df = long.dropna(subset=["signal", "label"])
    df = df[df.groupby("date")["signal"].transform("size") >= min_stocks]
    by_day = df.groupby("date")
    ic = by_day.apply(lambda g: st.pearsonr(g["signal"], g["label"])[0], include_groups=False)
    rank_ic = by_day.apply(lambda g: st.spearmanr(g["signal"], g["label"])[0], include_groups=False)
    if quantiles is None:
        return pd.DataFrame({"ic": ic, "rank_ic": rank_ic})

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


def write_files(root: Path, days: int, stocks: int, seed: int) -> tuple[Path, Path]:
    """signals.parquet and labels.parquet with text symbols ("S00042"), date32 dates, one row per cell."""
    import pyarrow as pa
    import pyarrow.parquet as pq

    signal, label = make_panel(days, stocks, seed)
    dates = np.repeat(pd.bdate_range("2010-01-04", periods=days).to_numpy().astype("datetime64[D]"), stocks)
    symbols = np.tile(np.array([f"S{i:05d}" for i in range(stocks)], dtype=object), days)
    keys = {"date": pa.array(dates, pa.date32()), "symbol": pa.array(symbols, pa.string())}
    paths = root / "signals.parquet", root / "labels.parquet"
    pq.write_table(pa.table({**keys, "signal": signal.ravel()}), paths[0])
    pq.write_table(pa.table({**keys, "label": label.ravel()}), paths[1])
    return paths


def end_to_end(days: int, stocks: int, quantiles: int, min_stocks: int, seed: int, tolerance: float) -> bool:
    """`python -m crnn_ray.evaluate` on two Parquet files vs pandas read + merge + groupby-apply scipy."""
    from crnn_ray.evaluate import read_table
    from crnn_ray.metrics import align_frames

    def timed(fn):
        t0 = time.perf_counter()
        return fn(), time.perf_counter() - t0

    with tempfile.TemporaryDirectory(prefix="metrics_bench_") as tmp:
        root = Path(tmp)
        sig_path, lab_path = write_files(root, days, stocks, seed)
        print(f"\nend to end: {days} days x {stocks} text symbols = {days * stocks:,} rows in two Parquet files "
              f"({sig_path.stat().st_size / 1e6:.0f} + {lab_path.stat().st_size / 1e6:.0f} MB)")
        cmd = [sys.executable, "-m", "crnn_ray.evaluate", "--signals", str(sig_path), "--labels", str(lab_path),
               "--label", "label", "--quantiles", str(quantiles), "--min-stocks", str(min_stocks),
               "--json", str(root / "m.json"), "--daily", str(root / "daily.csv")]
        proc, t_cli = timed(lambda: subprocess.run(cmd, capture_output=True, text=True))
        if proc.returncode != 0:
            print(proc.stderr)
            return False
        ours = pd.read_csv(root / "daily.csv", parse_dates=["date"]).set_index("date")
        n_days = json.loads((root / "m.json").read_text())["summary"]["n_days"]

        # our phases in this process (imports already paid here; the subprocess pays them)
        t_import = float(subprocess.run([sys.executable, "-c", "import time; t = time.perf_counter(); "
                                         "import crnn_ray.evaluate; print(time.perf_counter() - t)"],
                                        capture_output=True, text=True).stdout or "nan")
        def phases() -> tuple[float, float, float]:  # its tables and grids are freed on return
            (sig, lab), t_read = timed(lambda: (read_table(sig_path, ["date", "symbol", "signal"]),
                                                read_table(lab_path, ["date", "symbol", "label"])))
            grids, t_align = timed(lambda: align_frames(sig, lab, "label"))
            _, t_metrics = timed(lambda: evaluate(grids[0], grids[1], dates=grids[2], quantiles=quantiles,
                                                  min_stocks=min_stocks))
            return t_read, t_align, t_metrics

        t_read, t_align, t_metrics = phases()

        # the pandas way, in this process: read both, merge on (date, symbol), groupby-apply scipy
        (sig_df, lab_df), t_pread = timed(lambda: (pd.read_parquet(sig_path), pd.read_parquet(lab_path)))
        merged, t_merge = timed(lambda: sig_df.merge(lab_df, on=["date", "symbol"], how="inner"))
        # IC + RankIC only (the cheapest fair baseline: ours computes every metric), then with the quantiles
        ref, t_ref = timed(lambda: reference(merged, None, min_stocks))
        t_base = t_pread + t_merge + t_ref
        _, t_ref_q = timed(lambda: reference(merged, quantiles, min_stocks))
        ref.index = pd.to_datetime(ref.index)
    both = ours.loc[ref.index]
    worst = max(float(np.nanmax(np.abs(both[c].to_numpy() - ref[c].to_numpy()))) for c in ("ic", "rank_ic"))
    print(f"{'':44s} {'wall s':>8s}")
    print(f"{'python -m crnn_ray.evaluate (subprocess)':44s} {t_cli:8.2f}   (interpreter, imports, read, join, "
          f"metrics, JSON + daily CSV)")
    print(f"{'  phases in-process: import':44s} {t_import:8.2f}")
    print(f"{'    read_table x2 (Arrow, dictionary symbols)':44s} {t_read:8.2f}")
    print(f"{'    align_frames (join into [D, S] grids)':44s} {t_align:8.2f}")
    print(f"{'    evaluate (every metric)':44s} {t_metrics:8.2f}")
    print(f"{'pandas read + merge + groupby-apply scipy':44s} {t_base:8.2f}   (read {t_pread:.2f}, merge "
          f"{t_merge:.2f}, IC + RankIC {t_ref:.2f}; imports not counted)")
    print(f"{'  same + quantile buckets (as ours)':44s} {t_base + t_ref_q - t_ref:8.2f}   (IC, RankIC, quantile "
          f"means {t_ref_q:.2f})")
    print(f"end-to-end speed-up vs pandas: {t_base / t_cli:.2f}x (target >= 2x at 2,500 x 5,000; small inputs are "
          f"all interpreter start and imports);  days {n_days} vs {len(ref)}, "
          f"max |IC, RankIC diff| {worst:.2e}")
    return worst <= tolerance and n_days == len(ref)


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--days", type=int, default=2500)
    ap.add_argument("--stocks", type=int, default=5000)
    ap.add_argument("--quantiles", type=int, default=5)
    ap.add_argument("--min-stocks", type=int, default=10)
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--tolerance", type=float, default=1e-9)
    ap.add_argument("--quick", action="store_true", help="250 days x 1,000 stocks (both parts)")
    ap.add_argument("--e2e-only", action="store_true", help="only the two-Parquet-file end-to-end case")
    ap.add_argument("--no-e2e", action="store_true", help="skip the end-to-end case")
    args = ap.parse_args(argv)
    if args.quick:
        args.days, args.stocks = 250, 1000
    if args.e2e_only:
        ok = end_to_end(args.days, args.stocks, args.quantiles, args.min_stocks, args.seed, args.tolerance)
        print("numbers agree" if ok else "MISMATCH in the end-to-end case")
        return 0 if ok else 1

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
    if not args.no_e2e:
        del long, signals_t, labels_t, ev_frames, ref, signal, label
        e2e_ok = end_to_end(args.days, args.stocks, args.quantiles, args.min_stocks, args.seed, args.tolerance)
        print("end to end: numbers agree" if e2e_ok else "end to end: MISMATCH")
        ok = ok and e2e_ok
    return 0 if ok else 1


if __name__ == "__main__":
    sys.exit(main())
