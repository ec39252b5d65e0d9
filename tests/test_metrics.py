"""The vectorised metrics against per-day oracles: scipy for IC / RankIC, a pandas loop for the portfolios."""

from __future__ import annotations

import math

import numpy as np
import pandas as pd
import pytest
import scipy.stats as st

from crnn_ray.io import CliError
from crnn_ray.metrics import (
    align_frames,
    average_ranks,
    daily_ic,
    daily_rank_ic,
    evaluate,
    evaluate_frames,
)

TOL = 1e-9


def random_panel(seed: int, days: int = 70, stocks: int = 45, ties: bool = True, nan_frac: float = 0.15):
    """Signal and label with a weak link, coarse rounding (ties), scattered NaNs and one thin day."""
    rng = np.random.default_rng(seed)
    signal = rng.normal(size=(days, stocks))
    label = 0.2 * signal + rng.normal(size=(days, stocks))
    if ties:
        signal = np.round(signal, 1)
        label = np.round(label, 1)
    signal[rng.random(signal.shape) < nan_frac] = np.nan
    label[rng.random(label.shape) < nan_frac] = np.nan
    signal[4, 6:] = np.nan  # day 4: only a few valid pairs -> skipped
    return signal, label


def oracle_ic(signal, label, min_stocks):
    """Per-day scipy pearsonr / spearmanr over the pairs where both are finite."""
    ic, ric, n = [], [], []
    for s_row, l_row in zip(signal, label):
        ok = np.isfinite(s_row) & np.isfinite(l_row)
        n.append(int(ok.sum()))
        x, y = s_row[ok], l_row[ok]
        if ok.sum() < min_stocks or np.ptp(x) == 0 or np.ptp(y) == 0:
            ic.append(np.nan)
            ric.append(np.nan)
            continue
        ic.append(st.pearsonr(x, y)[0])
        ric.append(st.spearmanr(x, y)[0])
    return np.array(ic), np.array(ric), np.array(n)


def pandas_reference(signal, label, quantiles, min_stocks, horizon, cost_bps, ppy=252):
    """A per-day pandas loop of the documented portfolio definitions (docs/metrics.md)."""
    days = signal.shape[0]
    q_means = np.full((days, quantiles), np.nan)
    ls = np.full(days, np.nan)
    long = np.full(days, np.nan)
    books, long_books, tops = [], [], []
    for d in range(days):
        df = pd.DataFrame({"s": signal[d], "y": label[d]}).dropna()
        book = pd.Series(0.0, index=range(signal.shape[1]))
        long_book = book.copy()
        top_names: set = set()
        if len(df) >= min_stocks:
            pos = df["s"].rank(method="average") - 1
            bucket = np.maximum(1, np.ceil(pos * quantiles / (len(df) - 1))).astype(int)
            means = df.groupby(bucket)["y"].mean()
            for q, v in means.items():
                q_means[d, q - 1] = v
            if quantiles in means.index and 1 in means.index:
                ls[d] = (means[quantiles] - means[1]) / horizon
                long[d] = (means[quantiles] - df["y"].mean()) / horizon
                top = df.index[bucket == quantiles]
                bot = df.index[bucket == 1]
                long_book[top] = 1.0 / len(top)
                book[top] = 1.0 / len(top)
                book[bot] = -1.0 / len(bot)
                top_names = set(top)
        books.append(book)
        long_books.append(long_book)
        tops.append(top_names)
    turnover = np.full(days, np.nan)
    turnover_long = np.full(days, np.nan)
    turnover_top = np.full(days, np.nan)
    empty = pd.Series(0.0, index=range(signal.shape[1]))
    for d in range(days):
        if np.isnan(ls[d]):
            continue
        prev = books[d - horizon] if d >= horizon else empty
        prev_long = long_books[d - horizon] if d >= horizon else empty
        turnover[d] = (books[d] - prev).abs().sum() / horizon
        turnover_long[d] = (long_books[d] - prev_long).abs().sum() / horizon
        if d >= horizon:
            turnover_top[d] = len(tops[d] - tops[d - horizon]) / len(tops[d])
    ls_net = ls - cost_bps * 1e-4 * turnover
    cum = pd.Series(ls).fillna(0.0).cumsum()
    drawdown = cum - pd.concat([pd.Series([0.0]), cum]).cummax().iloc[1:].to_numpy()
    s = pd.Series(ls).dropna()
    return {
        "q_means": q_means,
        "quantile_returns": np.nanmean(q_means, axis=0),
        "ls": ls,
        "long": long,
        "turnover": turnover,
        "turnover_long": turnover_long,
        "turnover_top": turnover_top,
        "ls_net": ls_net,
        "cum_ls": cum.to_numpy(),
        "drawdown": drawdown.to_numpy(),
        "pnl_long_short": s.sum(),
        "pnl_long": pd.Series(long).dropna().sum(),
        "pnl_long_short_net": pd.Series(ls_net).dropna().sum(),
        "sharpe": s.mean() / s.std(ddof=1) * math.sqrt(ppy),
        "ann_return": s.mean() * ppy,
        "max_drawdown": drawdown.min(),
    }


@pytest.mark.parametrize("seed", [0, 1, 2])
def test_ic_and_rank_ic_equal_scipy_per_day(seed):
    signal, label = random_panel(seed)
    ic, ric, n = oracle_ic(signal, label, min_stocks=10)
    assert np.isnan(ic[4]) and n[4] < 10  # the thin day is really skipped by the oracle too
    np.testing.assert_allclose(daily_ic(signal, label, min_stocks=10), ic, atol=TOL, rtol=0, equal_nan=True)
    np.testing.assert_allclose(daily_rank_ic(signal, label, min_stocks=10), ric, atol=TOL, rtol=0, equal_nan=True)

    ev = evaluate(signal, label, min_stocks=10)
    np.testing.assert_allclose(ev.daily["ic"], ic, atol=TOL, rtol=0, equal_nan=True)
    np.testing.assert_allclose(ev.daily["rank_ic"], ric, atol=TOL, rtol=0, equal_nan=True)
    np.testing.assert_array_equal(ev.daily["n"], n)
    good = ic[np.isfinite(ic)]
    rgood = ric[np.isfinite(ric)]
    s = ev.summary
    assert s["n_days_skipped"] == int((n < 10).sum()) >= 1
    assert s["n_days"] == signal.shape[0] - s["n_days_skipped"]
    assert s["ic"] == pytest.approx(good.mean(), abs=TOL)
    assert s["icir"] == pytest.approx(good.mean() / good.std(ddof=1), abs=TOL)
    assert s["ic_tstat"] == pytest.approx(good.mean() / (good.std(ddof=1) / math.sqrt(good.size)), abs=1e-8)
    assert s["rank_ic"] == pytest.approx(rgood.mean(), abs=TOL)
    assert s["rank_icir"] == pytest.approx(rgood.mean() / rgood.std(ddof=1), abs=TOL)


def test_average_ranks_match_scipy_rankdata_with_ties_and_nans():
    signal, _ = random_panel(3)
    ranks = average_ranks(signal)
    for row, got in zip(signal, ranks):
        ok = np.isfinite(row)
        np.testing.assert_array_equal(np.isnan(got), ~ok)
        np.testing.assert_allclose(got[ok], st.rankdata(row[ok], method="average"), atol=0, rtol=0)


def _near_ties(rng, shape):
    """Values one ulp apart (and -0.0 beside 0.0): their sort keys collide, so ranking falls back to argsort."""
    base = rng.choice([1.0, -1.0, 0.0, -0.0, 2.5, -2.5, 1e-300], size=shape)
    step = rng.choice([np.inf, -np.inf], size=shape)
    return np.where(rng.random(shape) < 0.5, base, np.nextafter(base, step))


@pytest.mark.parametrize("kind", ["float32", "float64", "near_ties", "wide_range"])
def test_average_ranks_match_scipy_on_every_key_path(kind):
    """float32 data sorts as exact packed keys; other float64 data is checked run by run (and re-ranked)."""
    rng = np.random.default_rng(7)
    shape = (9, 57)
    if kind == "float32":
        x = np.round(rng.normal(size=shape).astype(np.float32), 1).astype(np.float64)
    elif kind == "float64":
        x = np.round(rng.normal(size=shape), 2) + 1e-3 * rng.normal(size=shape).round(1)
    elif kind == "near_ties":
        x = _near_ties(rng, shape)
    else:
        x = rng.normal(size=shape) * 10.0 ** rng.integers(-300, 300, size=shape)
    x[rng.random(shape) < 0.15] = np.nan
    x[0, :5] = np.inf
    x[1, :5] = -np.inf
    x[2, :] = np.nan  # an empty row
    for xx in (x, np.asfortranarray(x)):
        ranks = average_ranks(xx)
        for row, got in zip(xx, ranks):
            ok = ~np.isnan(row)
            np.testing.assert_array_equal(np.isnan(got), ~ok)
            if ok.any():
                np.testing.assert_array_equal(got[ok], st.rankdata(row[ok], method="average"))


@pytest.mark.parametrize("kind", ["float32", "near_ties"])
def test_rank_ic_equals_scipy_on_float32_and_near_tied_panels(kind):
    rng = np.random.default_rng(11)
    signal, label = random_panel(5)
    if kind == "float32":
        signal, label = signal.astype(np.float32).astype(np.float64), label.astype(np.float32).astype(np.float64)
    else:
        signal = np.where(np.isnan(signal), np.nan, _near_ties(rng, signal.shape))
    ic, ric, _ = oracle_ic(signal, label, min_stocks=10)
    ev = evaluate(signal, label, min_stocks=10)
    np.testing.assert_allclose(ev.daily["ic"], ic, atol=TOL, rtol=0, equal_nan=True)
    np.testing.assert_allclose(ev.daily["rank_ic"], ric, atol=TOL, rtol=0, equal_nan=True)


@pytest.mark.parametrize(
    "seed,quantiles,horizon,cost_bps", [(0, 5, 1, 10.0), (1, 10, 5, 25.0), (2, 3, 2, 0.0)]
)
def test_quantiles_pnl_turnover_equal_pandas_reference(seed, quantiles, horizon, cost_bps):
    signal, label = random_panel(seed, days=60, stocks=53)
    ref = pandas_reference(signal, label, quantiles, 10, horizon, cost_bps)
    ev = evaluate(signal, label, quantiles=quantiles, min_stocks=10, horizon=horizon, cost_bps=cost_bps)
    daily = ev.daily
    q_cols = [f"q{q + 1}" for q in range(quantiles)]
    np.testing.assert_allclose(daily[q_cols].to_numpy(), ref["q_means"], atol=TOL, rtol=0, equal_nan=True)
    np.testing.assert_allclose(ev.quantile_returns, ref["quantile_returns"], atol=TOL, rtol=0)
    for col in ("ls", "long", "turnover", "turnover_long", "ls_net", "cum_ls", "drawdown"):
        np.testing.assert_allclose(daily[col], ref[col], atol=TOL, rtol=0, equal_nan=True, err_msg=col)
    s = ev.summary
    for key in ("pnl_long_short", "pnl_long", "pnl_long_short_net", "sharpe", "ann_return", "max_drawdown"):
        assert s[key] == pytest.approx(ref[key], abs=1e-8), key
    assert s["turnover_top"] == pytest.approx(np.nanmean(ref["turnover_top"]), abs=TOL)
    assert s["turnover"] == pytest.approx(np.nanmean(ref["turnover"]), abs=TOL)
    if cost_bps > 0:
        assert s["pnl_long_short_net"] < s["pnl_long_short"]


def test_buckets_without_ties_equal_alphalens_qcut():
    """With distinct values, our equal-sized buckets are pd.qcut(x, Q) + 1 (alphalens quantize_factor)."""
    rng = np.random.default_rng(7)
    signal = rng.normal(size=(30, 37))
    label = rng.normal(size=(30, 37))
    signal[rng.random(signal.shape) < 0.1] = np.nan
    ev = evaluate(signal, label, quantiles=5, min_stocks=10)
    for d in range(30):
        df = pd.DataFrame({"s": signal[d], "y": label[d]}).dropna()
        df["q"] = pd.qcut(df["s"], 5, labels=False) + 1
        expected = df.groupby("q")["y"].mean().to_numpy()
        np.testing.assert_allclose(ev.daily.loc[d, ["q1", "q2", "q3", "q4", "q5"]].to_numpy(float), expected,
                                   atol=TOL, rtol=0)


def test_constant_signal_day_gives_nan_not_a_crash():
    signal, label = random_panel(5, ties=False, nan_frac=0.0)
    signal[10] = 0.5  # the model says the same for everyone
    label[11] = 0.0  # a day where every stock returned the same
    ev = evaluate(signal, label, min_stocks=10)
    for d in (10, 11):
        assert math.isnan(ev.daily.loc[d, "ic"]) and math.isnan(ev.daily.loc[d, "rank_ic"])
    # a constant signal cannot be sorted: everyone lands in the middle bucket and no book is formed
    assert math.isnan(ev.daily.loc[10, "ls"]) and math.isnan(ev.daily.loc[10, "q1"])
    assert ev.daily.loc[10, "q3"] == pytest.approx(np.nanmean(label[10]), abs=TOL)
    # the constant-label day still has a book (zero spread) and counts as evaluated
    assert ev.daily.loc[11, "ls"] == 0.0
    assert ev.summary["n_days_ic"] == ev.summary["n_days"] - 2
    assert math.isfinite(ev.summary["ic"]) and math.isfinite(ev.summary["sharpe"])


def test_all_days_skipped_gives_nan_summary():
    signal, label = random_panel(6, days=5, stocks=8)
    ev = evaluate(signal, label, min_stocks=10)
    assert ev.summary["n_days"] == 0 and ev.summary["n_days_skipped"] == 5
    assert math.isnan(ev.summary["ic"]) and math.isnan(ev.summary["sharpe"])
    assert ev.daily["ic"].isna().all()


def test_perfect_signal_reaches_the_top_numbers():
    rng = np.random.default_rng(8)
    label = rng.normal(size=(40, 50))
    ev = evaluate(label * 3.0 + 1.0, label, quantiles=5)
    assert ev.summary["ic"] == pytest.approx(1.0, abs=1e-12)
    assert ev.summary["rank_ic"] == pytest.approx(1.0, abs=1e-12)
    assert np.all(np.diff(ev.quantile_returns) > 0)
    assert ev.summary["pnl_long_short"] > ev.summary["pnl_long"] > 0
    assert ev.summary["max_drawdown"] == 0.0  # every day earns the positive top-bottom spread


def test_horizon_divides_pnl_and_shifts_turnover():
    signal, label = random_panel(9, ties=False)
    one = evaluate(signal, label, horizon=1)
    five = evaluate(signal, label, horizon=5)
    np.testing.assert_allclose(five.daily["ls"] * 5, one.daily["ls"], atol=TOL, equal_nan=True)
    assert five.summary["pnl_long_short"] == pytest.approx(one.summary["pnl_long_short"] / 5, abs=TOL)
    # the sharpe is scale-free: a horizon only rescales the daily series
    assert five.summary["sharpe"] == pytest.approx(one.summary["sharpe"], abs=1e-9)
    # a signal that never changes trades only to open its books
    _, full_label = random_panel(9, ties=False, nan_frac=0.0)
    frozen = np.tile(signal[0], (signal.shape[0], 1))
    ev = evaluate(frozen, full_label, horizon=3, min_stocks=5)
    assert ev.daily["turnover"].iloc[3:].max() == pytest.approx(0.0, abs=TOL)
    assert ev.daily["turnover"].iloc[0] == pytest.approx(2.0 / 3, abs=TOL)
    assert ev.summary["signal_autocorr"] == pytest.approx(1.0, abs=1e-12)


def test_evaluate_frames_aligns_on_date_and_symbol():
    signal, label = random_panel(10, days=20, stocks=30)
    dates = pd.bdate_range("2023-03-01", periods=20)
    symbols = [f"S{i:02d}" for i in range(30)]
    grid = pd.MultiIndex.from_product([dates, symbols], names=["date", "symbol"]).to_frame(index=False)
    sig_df = grid.assign(signal=signal.ravel()).sample(frac=1.0, random_state=0)  # shuffled rows
    lab_df = grid.assign(y5=label.ravel())
    lab_df = lab_df[lab_df["symbol"] != "S29"]  # a symbol without labels drops out
    lab_df["date"] = lab_df["date"].dt.strftime("%Y-%m-%d")  # dates as text parse the same
    ev = evaluate_frames(sig_df, lab_df, "y5", quantiles=4, min_stocks=8)
    ref = evaluate(signal[:, :29], label[:, :29], quantiles=4, min_stocks=8)
    assert list(pd.to_datetime(ev.daily["date"])) == list(dates)
    np.testing.assert_allclose(ev.daily["ic"], ref.daily["ic"], atol=TOL, equal_nan=True)
    for key, value in ref.summary.items():
        assert ev.summary[key] == pytest.approx(value, abs=1e-12, nan_ok=True), key


@pytest.mark.parametrize(
    "mutate,needle",
    [
        (lambda s, l: (pd.concat([s, s.iloc[:1]]), l), "duplicate (date, symbol)"),
        (lambda s, l: (s.assign(signal=s["signal"].where(s.index != 3, np.inf)), l), "infinite"),
        (lambda s, l: (s, l.assign(y5=1.0)), "constant"),
        (lambda s, l: (s.assign(signal="x"), l), "numeric"),
        (lambda s, l: (s.assign(date="not a date"), l), "unparsable"),
        (lambda s, l: (s.assign(symbol=s["symbol"] + "X"), l), "no overlapping"),
        (lambda s, l: (s.drop(columns="symbol"), l), "missing column 'symbol'"),
    ],
)
def test_evaluate_frames_rejects_bad_tables_in_one_line(mutate, needle):
    signal, label = random_panel(11, days=5, stocks=12)
    grid = pd.MultiIndex.from_product([pd.bdate_range("2023-01-02", periods=5), [f"S{i}" for i in range(12)]],
                                      names=["date", "symbol"]).to_frame(index=False)
    sig_df, lab_df = mutate(grid.assign(signal=signal.ravel()), grid.assign(y5=label.ravel()))
    with pytest.raises(CliError) as err:
        evaluate_frames(sig_df, lab_df, "y5")
    assert needle in str(err.value) and "\n" not in str(err.value)


@pytest.mark.parametrize("symbol,extra_label_row", [("S3", False), ("S_ONLY_IN_SIGNALS", False), ("S4", True)])
def test_duplicate_keys_are_named_inside_and_outside_the_joined_grid(symbol, extra_label_row):
    """A repeated (date, symbol) is an error whether or not the key takes part in the join."""
    signal, label = random_panel(13, days=6, stocks=6)
    grid = pd.MultiIndex.from_product([pd.bdate_range("2023-01-02", periods=6), [f"S{i}" for i in range(6)]],
                                      names=["date", "symbol"]).to_frame(index=False)
    sig_df, lab_df = grid.assign(signal=signal.ravel()), grid.assign(y5=label.ravel())
    twice = pd.DataFrame({"date": [pd.Timestamp("2023-01-03")] * 2, "symbol": [symbol] * 2, "signal": [0.1, 0.2]})
    if symbol in set(grid["symbol"]):
        sig_df = sig_df[~((sig_df["date"] == "2023-01-03") & (sig_df["symbol"] == symbol))]
    sig_df = pd.concat([sig_df, twice], ignore_index=True)
    if extra_label_row:  # the duplicate sits in the labels table instead
        sig_df, lab_df = grid.assign(signal=signal.ravel()), pd.concat(
            [lab_df, lab_df[(lab_df["symbol"] == symbol)].iloc[:1]], ignore_index=True)
    with pytest.raises(CliError) as err:
        evaluate_frames(sig_df, lab_df, "y5")
    msg = str(err.value)
    assert "1 duplicate (date, symbol) key(s)" in msg and symbol in msg and "\n" not in msg
    assert msg.startswith("labels:" if extra_label_row else "signals:")


def test_bad_parameters_name_the_key():
    signal, label = random_panel(12, days=5, stocks=12)
    for kw, key in [({"quantiles": 1}, "quantiles"), ({"min_stocks": 1}, "min_stocks"),
                    ({"horizon": 0}, "horizon"), ({"cost_bps": -1.0}, "cost_bps")]:
        with pytest.raises(CliError, match=key):
            evaluate(signal, label, **kw)
    with pytest.raises(CliError, match="shape"):
        evaluate(signal, label[:, :5])


@pytest.mark.parametrize("block_days", [1, 3, 7])
def test_block_scan_carries_books_across_blocks(monkeypatch, block_days):
    """Days are scanned in blocks (on threads); turnover and autocorrelation reach back across blocks."""
    import crnn_ray.metrics as metrics

    signal, label = random_panel(13, days=40, stocks=31)
    ref = pandas_reference(signal, label, 4, 10, 5, 20.0)
    whole = evaluate(signal, label, quantiles=4, horizon=5, cost_bps=20.0)
    monkeypatch.setattr(metrics, "_BLOCK_ELEMENTS", 31 * block_days)
    blocked = evaluate(signal, label, quantiles=4, horizon=5, cost_bps=20.0)
    for col in ("ic", "rank_ic", "ls", "turnover", "turnover_long", "ls_net"):
        np.testing.assert_allclose(blocked.daily[col], whole.daily[col], atol=TOL, rtol=0, equal_nan=True)
    np.testing.assert_allclose(blocked.daily["turnover"], ref["turnover"], atol=TOL, rtol=0, equal_nan=True)
    for key, value in whole.summary.items():
        assert blocked.summary[key] == pytest.approx(value, abs=1e-12, nan_ok=True), key


@pytest.mark.parametrize("quantiles", [5, 17, 20])
def test_bucket_sizes_counted_per_bucket_or_by_bincount_equal_reference(quantiles):
    """Bucket sizes are counted bucket by bucket on int8 buckets for Q <= 16, by bincount above: same numbers."""
    signal, label = random_panel(21, days=30, stocks=97)
    ref = pandas_reference(signal, label, quantiles, 10, 1, 0.0)
    ev = evaluate(signal, label, quantiles=quantiles, min_stocks=10)
    q_cols = [f"q{q + 1}" for q in range(quantiles)]
    np.testing.assert_allclose(ev.daily[q_cols].to_numpy(), ref["q_means"], atol=TOL, rtol=0, equal_nan=True)
    np.testing.assert_allclose(ev.daily["turnover"], ref["turnover"], atol=TOL, rtol=0, equal_nan=True)


def test_negative_nans_and_infinities_are_missing_like_nan():
    """Zero-filling works on the IEEE bits: a NaN with its sign bit set, or +-inf, must still count as missing."""
    signal, label = random_panel(22, days=25, stocks=40)
    odd_signal, odd_label = signal.copy(), label.copy()
    for arr in (odd_signal, odd_label):
        holes = np.flatnonzero(np.isnan(arr))
        arr.flat[holes[0::3]] = np.copysign(np.nan, -1.0)
        arr.flat[holes[1::3]] = -np.inf
        arr.flat[holes[2::3]] = np.inf
    assert np.signbit(odd_signal[np.isnan(odd_signal)]).any()
    plain = evaluate(signal, label, quantiles=4, min_stocks=10)
    odd = evaluate(odd_signal, odd_label, quantiles=4, min_stocks=10)
    pd.testing.assert_frame_equal(odd.daily, plain.daily)


def test_row_counts_match_count_nonzero_on_narrow_and_wide_rows():
    """Counting bytes into int16 (rows < 2**15 wide) or int32 (wider) gives np.count_nonzero's counts."""
    import crnn_ray.metrics as metrics

    rng = np.random.default_rng(5)
    for cols in (7, 2**15 - 1, 2**15 + 3):
        mask = rng.random((3, cols)) < 0.97
        mask[1] = True
        counts = metrics._row_counts(mask)
        assert counts.dtype == np.int64
        np.testing.assert_array_equal(counts, np.count_nonzero(mask, axis=1))


@pytest.mark.parametrize("symbol_dtype", [np.int32, np.int64, "text"])
def test_evaluate_frames_equals_arrays_for_integer_and_text_symbols(symbol_dtype):
    """Integer symbols take the lookup-table path, text symbols the factorize path: same grid either way."""
    signal, label = random_panel(14, days=7, stocks=9)
    codes = np.arange(600000, 600009, dtype=np.int64)
    symbols = codes.astype(str) if symbol_dtype == "text" else codes.astype(symbol_dtype)
    grid = pd.MultiIndex.from_product([pd.bdate_range("2023-03-01", periods=7), symbols],
                                      names=["date", "symbol"]).to_frame(index=False)
    sig_df = grid.assign(signal=signal.ravel()).sample(frac=1.0, random_state=1)
    lab_df = grid.assign(y5=label.ravel()).sample(frac=1.0, random_state=2)
    sig, lab, dates, syms = align_frames(sig_df, lab_df, "y5")
    np.testing.assert_array_equal(sig, signal)  # every (date, symbol) has a row in both: the grids come back
    np.testing.assert_array_equal(lab, label)
    assert [str(s) for s in syms] == [str(s) for s in symbols] and len(dates) == 7
