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
    s = pd.Series(ls).dropna()
    sharpe, ann_return = s.mean() / s.std(ddof=1) * math.sqrt(ppy), s.mean() * ppy
    sharpe_booked = sharpe
    # without returns, H > 1: each book's H-day return is realised on the last day it is held (curve), and
    # the Sharpe / return / drawdown are those of the H non-overlapping strategies (every H-th day), averaged
    realised_on = pd.Series(ls).shift(horizon - 1)
    cum = realised_on.fillna(0.0).cumsum()
    drawdown = cum - pd.concat([pd.Series([0.0]), cum]).cummax().iloc[1:].to_numpy()
    max_drawdown = drawdown.min()
    if horizon > 1:
        sharpes, anns, dds = [], [], []
        for offset in range(horizon):
            r = pd.Series(ls[offset::horizon] * horizon)
            ok = r.dropna()
            sharpes.append(ok.mean() / ok.std(ddof=1) * math.sqrt(ppy / horizon))
            anns.append(ok.mean() * ppy / horizon)
            c = r.fillna(0.0).cumsum()
            dds.append((c - pd.concat([pd.Series([0.0]), c]).cummax().iloc[1:].to_numpy()).min())
        sharpe, ann_return, max_drawdown = np.mean(sharpes), np.mean(anns), np.mean(dds)
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
        "sharpe": sharpe,
        "sharpe_booked": sharpe_booked,
        "ann_return": ann_return,
        "max_drawdown": max_drawdown,
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
    for key in ("pnl_long_short", "pnl_long", "pnl_long_short_net", "sharpe", "ann_return", "max_drawdown",
                "sharpe_booked"):
        assert s[key] == pytest.approx(ref[key], abs=1e-8), key
    assert s["pnl_method"] == ("daily" if horizon == 1 else "non_overlapping")
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
    # the booked (formation-day) sharpe is scale-free: a horizon only rescales the booked series; the sharpe
    # itself is now that of the non-overlapping H-day books (no returns given), a different strategy
    assert five.summary["sharpe_booked"] == pytest.approx(one.summary["sharpe"], abs=1e-9)
    assert five.summary["pnl_method"] == "non_overlapping" and one.summary["pnl_method"] == "daily"
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


# ---------------------------------------------------------------------------------------------------------
# realised pnl of the H overlapping books, the non-overlapping fallback, Newey-West t-statistics
# ---------------------------------------------------------------------------------------------------------


def books_panel(seed: int, days: int = 45, stocks: int = 40):
    """A persistent signal (overlapping books hold mostly the same names), names listing late and delisting
    early, missing returns on held names, a thin (skipped) day and a last day whose returns are unknown."""
    rng = np.random.default_rng(seed)
    level = rng.normal(size=stocks)
    signal = level + 0.4 * rng.normal(size=(days, stocks))
    returns = 0.01 * rng.normal(size=(days, stocks)) + 0.002 * signal
    label = returns.copy()  # any H-day label: the books are formed on it, the pnl is realised on `returns`
    label += 0.5 * rng.normal(size=label.shape) * 0.01
    signal[:12, :5] = np.nan  # five names list on day 12
    signal[30:, 5:9] = np.nan  # four names delist after day 29 (their held returns still count)
    returns[rng.random(returns.shape) < 0.1] = np.nan  # missing returns on held names count 0
    label[rng.random(label.shape) < 0.05] = np.nan
    signal[20, 8:] = np.nan  # day 20: a thin day, skipped: no book, but the portfolio is still held
    returns[-1] = np.nan  # the data's last day: its next close is unknown
    return signal, label, returns


def realised_reference(signal, label, returns, quantiles, min_stocks, horizon, cost_bps, ppy=252):
    """A plain per-day loop of the documented realised pnl (docs/metrics.md, "Realised pnl")."""
    days, stocks = signal.shape
    w_ls, w_long, w_top = (np.zeros((days, stocks)) for _ in range(3))
    has_book = np.zeros(days, dtype=bool)
    for d in range(days):
        ok = np.flatnonzero(np.isfinite(signal[d]) & np.isfinite(label[d]))
        if len(ok) < min_stocks:
            continue
        pos = pd.Series(signal[d, ok]).rank(method="average").to_numpy() - 1
        bucket = np.maximum(1, np.ceil(pos * quantiles / (len(ok) - 1))).astype(int)
        top, bottom = ok[bucket == quantiles], ok[bucket == 1]
        if len(top) == 0 or len(bottom) == 0:
            continue
        has_book[d] = True
        for s in top:
            w_ls[d, s] += 1.0 / len(top)
            w_long[d, s] += 1.0 / len(top)
            w_top[d, s] = 1.0 / len(top)
        for s in bottom:
            w_ls[d, s] -= 1.0 / len(bottom)
        for s in ok:
            w_long[d, s] -= 1.0 / len(ok)
    out = {k: np.full(days, np.nan) for k in ("pnl_ls", "pnl_long", "pnl_ls_net", "pnl_long_net", "turnover_port")}
    before, before_top = np.zeros(stocks), np.zeros(stocks)
    for t in range(days):
        live = [d for d in range(max(0, t - horizon + 1), t + 1) if has_book[d]]
        port = sum((w_ls[d] for d in live), np.zeros(stocks)) / horizon
        port_long = sum((w_long[d] for d in live), np.zeros(stocks)) / horizon
        port_top = sum((w_top[d] for d in live), np.zeros(stocks)) / horizon
        traded = float(np.abs(port - before).sum())
        traded_top = float(np.abs(port_top - before_top).sum())
        before, before_top = port, port_top
        if not (live or traded > 0) or not np.isfinite(returns[t]).any():
            continue
        pnl, pnl_long = 0.0, 0.0
        for s in range(stocks):
            if np.isfinite(returns[t, s]):
                pnl += port[s] * returns[t, s]
                pnl_long += port_long[s] * returns[t, s]
        out["pnl_ls"][t], out["pnl_long"][t], out["turnover_port"][t] = pnl, pnl_long, traded
        out["pnl_ls_net"][t] = pnl - cost_bps * 1e-4 * traded
        out["pnl_long_net"][t] = pnl_long - cost_bps * 1e-4 * traded_top
    s = pd.Series(out["pnl_ls"]).dropna()
    cum = pd.Series(out["pnl_ls"]).fillna(0.0).cumsum()
    out["cum_ls"] = cum.to_numpy()
    out["max_drawdown"] = (cum - pd.concat([pd.Series([0.0]), cum]).cummax().iloc[1:].to_numpy()).min()
    out["sharpe"] = s.mean() / s.std(ddof=1) * math.sqrt(ppy)
    out["ann_vol"] = s.std(ddof=1) * math.sqrt(ppy)
    out["ann_return"] = s.mean() * ppy
    out["pnl_long_short"] = s.sum()
    out["pnl_long_short_net"] = pd.Series(out["pnl_ls_net"]).dropna().sum()
    net = pd.Series(out["pnl_ls_net"]).dropna()
    out["sharpe_net"] = net.mean() / net.std(ddof=1) * math.sqrt(ppy)
    lg = pd.Series(out["pnl_long"]).dropna()
    out["sharpe_long"] = lg.mean() / lg.std(ddof=1) * math.sqrt(ppy)
    return out


@pytest.mark.parametrize("seed,quantiles,horizon,cost_bps", [(0, 5, 5, 10.0), (1, 4, 2, 0.0), (2, 3, 3, 25.0)])
def test_realised_pnl_equals_a_per_day_loop_of_the_overlapping_books(seed, quantiles, horizon, cost_bps):
    signal, label, returns = books_panel(seed)
    ref = realised_reference(signal, label, returns, quantiles, 10, horizon, cost_bps)
    ev = evaluate(signal, label, quantiles=quantiles, horizon=horizon, cost_bps=cost_bps, returns=returns)
    assert ev.summary["pnl_method"] == "realised"
    for col in ("pnl_ls", "pnl_long", "pnl_ls_net", "pnl_long_net", "turnover_port", "cum_ls"):
        np.testing.assert_allclose(ev.daily[col], ref[col], atol=1e-12, rtol=0, equal_nan=True, err_msg=col)
    for key in ("sharpe", "ann_vol", "ann_return", "max_drawdown", "pnl_long_short", "pnl_long_short_net",
                "sharpe_net", "sharpe_long"):
        assert ev.summary[key] == pytest.approx(ref[key], abs=1e-9), key
    assert math.isnan(ev.daily["pnl_ls"].iloc[-1])  # the last day's returns are unknown
    assert np.isfinite(ev.daily["pnl_ls"].iloc[20]) and math.isnan(ev.daily["ls"].iloc[20])  # held, no book
    # the booked figures are untouched by the returns
    plain = evaluate(signal, label, quantiles=quantiles, horizon=horizon, cost_bps=cost_bps)
    for col in ("ls", "long", "turnover", "ls_net", "ic", "rank_ic"):
        pd.testing.assert_series_equal(ev.daily[col], plain.daily[col])
    for key in ("ic", "ic_tstat", "ic_tstat_hac", "ls_mean", "long_mean", "turnover", "sharpe_booked"):
        assert ev.summary[key] == plain.summary[key], key


def test_realised_pnl_is_the_daily_pnl_at_horizon_one_and_spreads_the_booked_mean():
    signal, _, returns = books_panel(3)
    one = evaluate(signal, returns, horizon=1, cost_bps=10.0)
    also = evaluate(signal, returns, horizon=1, cost_bps=10.0, returns=returns)
    assert one.summary["pnl_method"] == also.summary["pnl_method"] == "daily"
    pd.testing.assert_frame_equal(one.daily, also.daily)
    assert one.summary == also.summary
    np.testing.assert_array_equal(one.daily["pnl_ls"], one.daily["ls"])
    assert one.summary["sharpe"] == one.summary["sharpe_booked"]
    # the loop reference at H = 1 with returns = label is the daily series on every book day (the daily
    # series has no row for day 20, skipped: the loop books a zero pnl and the cost of closing day 19's book)
    ref = realised_reference(signal, returns, returns, 5, 10, 1, 10.0)
    book = one.daily["ls"].notna().to_numpy()
    assert not book[20] and ref["pnl_ls"][20] == 0.0 and ref["pnl_ls_net"][20] < 0
    np.testing.assert_allclose(one.daily["ls"][book], ref["pnl_ls"][book], atol=1e-12)
    np.testing.assert_allclose(one.daily["ls_net"][book], ref["pnl_ls_net"][book], atol=1e-12)


def test_realised_sharpe_is_below_the_booked_one_for_a_persistent_signal():
    """Overlapping books hold mostly the same names: the booked series' spread is far too small."""
    rng = np.random.default_rng(4)
    days, stocks, horizon = 250, 120, 5
    alpha = np.cumsum(rng.normal(size=(days, stocks)) * 0.2, axis=0) * 0.1 + rng.normal(size=stocks)
    alpha = alpha * 0.0015
    returns = alpha + 0.015 * rng.normal(size=(days, stocks))
    label = np.full_like(returns, np.nan)
    for d in range(days - horizon):
        label[d] = returns[d:d + horizon].sum(axis=0)
    ev = evaluate(alpha, label, horizon=horizon, returns=returns)
    s = ev.summary
    assert s["pnl_method"] == "realised"
    assert s["sharpe"] < 0.75 * s["sharpe_booked"] and s["ann_vol"] > 1.5 * s["ann_vol_booked"]
    assert s["ann_return"] == pytest.approx(s["ls_mean"] * 252, rel=0.1)  # the same mean, spread out
    assert s["ic_tstat_hac"] < s["ic_tstat"]


@pytest.mark.parametrize("block_days", [1, 3, 7])
def test_realised_pnl_crosses_blocks(monkeypatch, block_days):
    """A block's last books are realised on the returns of the days after it (the next block's)."""
    import crnn_ray.metrics as metrics

    signal, label, returns = books_panel(5, days=40, stocks=31)
    whole = evaluate(signal, label, quantiles=4, horizon=5, cost_bps=20.0, returns=returns)
    monkeypatch.setattr(metrics, "_BLOCK_ELEMENTS", 31 * block_days)
    blocked = evaluate(signal, label, quantiles=4, horizon=5, cost_bps=20.0, returns=returns)
    for col in ("pnl_ls", "pnl_long", "pnl_ls_net", "turnover_port", "cum_ls"):
        np.testing.assert_allclose(blocked.daily[col], whole.daily[col], atol=1e-14, rtol=0, equal_nan=True)
    for key, value in whole.summary.items():
        assert blocked.summary[key] == pytest.approx(value, abs=1e-12, nan_ok=True), key


def test_returns_are_checked_and_named():
    signal, label, returns = books_panel(6, days=25, stocks=15)
    with pytest.raises(CliError, match="returns shape"):
        evaluate(signal, label, horizon=5, returns=returns[:, :4])
    with pytest.raises(CliError, match="returns"):
        evaluate(signal, label, horizon=5, returns=np.zeros(20))


def newey_west_loop(x, lags):
    """An explicit loop over the autocovariances (Bartlett weights, small-sample factor n / (n - 1))."""
    x = [v for v in x if np.isfinite(v)]
    n = len(x)
    mean = sum(x) / n
    gamma = []
    for j in range(lags + 1):
        acc = 0.0
        for t in range(j, n):
            acc += (x[t] - mean) * (x[t - j] - mean)
        gamma.append(acc / n)
    s = gamma[0] + 2 * sum((1 - j / (lags + 1)) * gamma[j] for j in range(1, lags + 1))
    return mean / math.sqrt(s * n / (n - 1) / n)


def test_newey_west_tstat_equals_a_loop_and_plain_t_at_zero_lags():
    from crnn_ray.metrics import hac_lags, newey_west_tstat

    rng = np.random.default_rng(9)
    e = rng.normal(size=304)
    x = 0.1 + e[4:] + e[3:-1] + e[2:-2] + e[1:-3] + e[:-4]  # MA(4): an overlapping 5-day label's figure
    x[[7, 50, 51]] = np.nan
    for lags in (0, 1, 4, 9):
        assert newey_west_tstat(x, lags) == pytest.approx(newey_west_loop(x, lags), rel=1e-12), lags
    ok = x[np.isfinite(x)]
    assert newey_west_tstat(x, 0) == pytest.approx(ok.mean() / (ok.std(ddof=1) / math.sqrt(ok.size)), rel=1e-12)
    assert newey_west_tstat(x, 4) < 0.6 * newey_west_tstat(x, 0)  # the plain t overstates on overlapping days
    assert math.isnan(newey_west_tstat([1.0, np.nan], 2)) and math.isnan(newey_west_tstat([2.0, 2.0, 2.0], 1))
    assert newey_west_tstat(x[:5], 50) == pytest.approx(newey_west_loop(x[:5], 4), rel=1e-12)  # lags <= n - 1
    # max(2H, floor(4 (n / 100)^(2/9))) for H > 1 (overlapping labels), the rule of thumb alone for H = 1
    assert [hac_lags(73, 5), hac_lags(73, 1), hac_lags(1000, 1), hac_lags(1000, 10), hac_lags(0, 3)] == [10, 3, 6, 20, 6]
    # 2H lags take in the MA(4)'s whole autocovariance that 4 Bartlett lags cut short
    assert newey_west_tstat(x, 10) < newey_west_tstat(x, 4)


def test_evaluate_reports_hac_t_statistics_with_the_lag_rule():
    from crnn_ray.metrics import hac_lags

    signal, label, returns = books_panel(7, days=60)
    ev = evaluate(signal, label, horizon=5, returns=returns)
    s = ev.summary
    assert s["hac_lags"] == hac_lags(s["n_days"], 5) == 10
    assert s["ic_tstat_hac"] == pytest.approx(newey_west_loop(ev.daily["ic"].to_numpy(), 10), rel=1e-12)
    assert s["rank_ic_tstat_hac"] == pytest.approx(newey_west_loop(ev.daily["rank_ic"].to_numpy(), 10), rel=1e-12)
    pnl = ev.daily["pnl_ls"].dropna()
    assert s["ls_tstat"] == pytest.approx(pnl.mean() / (pnl.std(ddof=1) / math.sqrt(len(pnl))), rel=1e-12)
    assert s["ls_tstat_hac"] == pytest.approx(newey_west_loop(pnl.to_numpy(), 10), rel=1e-12)
    # beside them, the t of non-overlapping days: each offset's every-5th-day series, plain t, averaged
    for key, series in (("ic", ev.daily["ic"]), ("rank_ic", ev.daily["rank_ic"]), ("ls", ev.daily["ls"])):
        x = series.to_numpy()
        ts = []
        for o in range(5):
            part = x[o::5][np.isfinite(x[o::5])]
            ts.append(part.mean() / part.std(ddof=1) * math.sqrt(part.size))
        assert s[f"{key}_tstat_nonoverlap"] == pytest.approx(np.mean(ts), rel=1e-12), key
    assert s["n_days_pnl"] == len(pnl)
    # without returns the t of the mean daily pnl is that of the booked (overlapping) series
    fallback = evaluate(signal, label, horizon=5).summary
    booked = ev.daily["ls"].dropna()
    assert fallback["ls_tstat"] == pytest.approx(booked.mean() / (booked.std(ddof=1) / math.sqrt(len(booked))))
    assert fallback["ls_tstat_hac"] == pytest.approx(newey_west_loop(booked.to_numpy(), 10), rel=1e-12)


def test_non_overlapping_fallback_books_every_hth_day_and_averages_the_offsets():
    signal, label, _ = books_panel(8, days=50)
    horizon = 4
    ev = evaluate(signal, label, horizon=horizon, cost_bps=15.0)
    s = ev.summary
    assert s["pnl_method"] == "non_overlapping"
    ls = ev.daily["ls"].to_numpy()
    sharpes, vols, dds = [], [], []
    for offset in range(horizon):
        r = ls[offset::horizon] * horizon  # one full-capital H-day book every H days
        ok = r[np.isfinite(r)]
        sharpes.append(ok.mean() / ok.std(ddof=1) * math.sqrt(252 / horizon))
        vols.append(ok.std(ddof=1) * math.sqrt(252 / horizon))
        peak, cum, worst = 0.0, 0.0, 0.0
        for v in np.nan_to_num(r):
            cum += v
            peak = max(peak, cum)
            worst = min(worst, cum - peak)
        dds.append(worst)
    assert s["sharpe"] == pytest.approx(np.mean(sharpes), rel=1e-12)
    assert s["ann_vol"] == pytest.approx(np.mean(vols), rel=1e-12)
    assert s["max_drawdown"] == pytest.approx(np.mean(dds), rel=1e-12)
    assert s["pnl_long_short"] == pytest.approx(np.nansum(ls), abs=1e-12)  # = the mean of the offsets' totals
    # each book's H-day return is booked on the last day it is held
    np.testing.assert_allclose(ev.daily["pnl_ls"].iloc[horizon - 1:], ls[:-(horizon - 1)], equal_nan=True)
    assert ev.daily["pnl_ls"].iloc[:horizon - 1].isna().all()
    np.testing.assert_allclose(ev.daily["cum_ls"], np.cumsum(np.nan_to_num(ev.daily["pnl_ls"])), atol=1e-15)


def test_evaluate_frames_passes_the_returns_column():
    signal, label, returns = books_panel(10, days=25, stocks=30)
    dates = pd.bdate_range("2023-03-01", periods=25)
    symbols = [f"S{i:02d}" for i in range(30)]
    grid = pd.MultiIndex.from_product([dates, symbols], names=["date", "symbol"]).to_frame(index=False)
    sig_df = grid.assign(signal=signal.ravel())
    sig_df = sig_df[np.isfinite(sig_df["signal"])]  # names without a signal on a day have no signal row
    lab_df = grid.assign(y5=label.ravel(), y1=returns.ravel()).sample(frac=1.0, random_state=3)
    ev = evaluate_frames(sig_df, lab_df, "y5", horizon=5, returns_col="y1")
    ref = evaluate(signal, label, horizon=5, returns=returns)
    for key, value in ref.summary.items():
        assert ev.summary[key] == pytest.approx(value, abs=1e-12, nan_ok=True), key
    np.testing.assert_allclose(ev.daily["pnl_ls"], ref.daily["pnl_ls"], atol=1e-15, equal_nan=True)
    *_, ret = align_frames(sig_df, lab_df, "y5", returns_col="y1")
    np.testing.assert_array_equal(ret, returns)  # held names' returns arrive without a signal row too
    with pytest.raises(CliError, match="'y9'"):
        evaluate_frames(sig_df, lab_df, "y5", horizon=5, returns_col="y9")


def test_fewer_days_than_the_horizon_and_no_day_give_nan_not_a_crash():
    rng = np.random.default_rng(12)
    for days in (0, 3):
        signal, label, returns = (rng.normal(size=(days, 20)) for _ in range(3))
        for kw in ({"returns": returns}, {}):
            s = evaluate(signal, label, horizon=5, **kw).summary
            assert s["pnl_method"] == ("realised" if kw else "non_overlapping") and s["hac_lags"] == 10
            assert s["n_days_pnl"] == (days if kw else 0)


# ---- costs: break-even, and the liquidity split (docs/metrics.md, "Costs", "Liquidity split") -------------


def test_break_even_cost_on_a_constructed_book():
    """4 names, 2 buckets, H = 1: the top pair earns a = 1 % more than the bottom pair every day, and the
    signal flips daily. The book trades 2 on day 0 (opened from cash: four half-unit legs) and 4 on every
    later day (each name moves from +1/2 to -1/2 or back): mean turnover (2 + 4 x 9) / 10 = 3.8, mean
    pnl 0.01, break-even 1e4 x 0.01 / 3.8 bps. The long book earns a/2 on a traded (1 + 2 x 9) / 10 = 1.9."""
    a, days = 0.01, 10
    up = np.array([1.0, 2.0, 3.0, 4.0])
    signal = np.array([up if d % 2 == 0 else up[::-1] for d in range(days)])
    label = np.where(signal > 2.5, a, 0.0)
    ev = evaluate(signal, label, quantiles=2, min_stocks=2)
    s = ev.summary
    assert s["ls_mean"] == pytest.approx(a) and s["turnover"] == pytest.approx(3.8)
    assert s["break_even_bps"] == pytest.approx(1e4 * a / 3.8)  # 26.3 bps per unit traded
    assert s["break_even_bps_long"] == pytest.approx(1e4 * (a / 2) / 1.9)
    assert s["cost_bps"] == 0.0 and s["pnl_long_short_net"] == s["pnl_long_short"]  # gross when no cost
    at = evaluate(signal, label, quantiles=2, min_stocks=2, cost_bps=s["break_even_bps"]).summary
    assert at["pnl_long_short_net"] == pytest.approx(0.0, abs=1e-15) and at["cost_bps"] == s["break_even_bps"]
    assert at["break_even_bps"] == s["break_even_bps"]  # a property of the gross pnl, whatever cost is assumed
    # a losing signal, and a book that never trades: no cost makes them break even
    assert math.isnan(evaluate(-signal, label, quantiles=2, min_stocks=2).summary["break_even_bps"])
    from crnn_ray.metrics import break_even_bps

    assert math.isnan(break_even_bps(np.full(5, 0.01), np.zeros(5)))
    assert math.isnan(break_even_bps(np.full(5, np.nan), np.ones(5)))


@pytest.mark.parametrize("with_returns", [True, False])
def test_break_even_zeroes_the_net_pnl_of_every_pnl_method(with_returns):
    signal, label, returns = books_panel(21)
    kw = {"returns": returns} if with_returns else {}
    gross = evaluate(signal, label, horizon=5, **kw).summary
    assert gross["pnl_method"] == ("realised" if with_returns else "non_overlapping")
    assert gross["pnl_long_short"] > 0 and gross["break_even_bps"] > 0
    net = evaluate(signal, label, horizon=5, cost_bps=gross["break_even_bps"], **kw).summary
    assert net["pnl_long_short_net"] == pytest.approx(0.0, abs=1e-12)
    if with_returns:  # realised: the net daily series has mean 0, so its Sharpe is 0
        assert net["sharpe_net"] == pytest.approx(0.0, abs=1e-9)
    for key in ("ic", "pnl_long_short", "sharpe", "turnover"):  # the gross figures do not move
        assert net[key] == gross[key]


def test_liquidity_split_scores_each_half_of_the_day():
    rng = np.random.default_rng(5)
    days, stocks = 30, 41
    label = rng.normal(size=(days, stocks))
    liquidity = np.tile(np.arange(stocks, dtype=float), (days, 1)) + rng.random((days, stocks))  # ~ the name
    signal = rng.normal(size=(days, stocks))
    liquid_names = liquidity > np.median(liquidity, axis=1, keepdims=True)
    signal[liquid_names] = label[liquid_names] + 0.3 * signal[liquid_names]  # skill only where it is cheap
    signal[3, :7] = np.nan
    liquidity[7, 10] = np.nan  # a name without a liquidity value is in neither half
    ev = evaluate(signal, label, liquidity=liquidity)
    split = ev.liquidity_split
    # the same by a plain per-day loop
    ics = {"liquid": [], "illiquid": []}
    rics = {"liquid": [], "illiquid": []}
    sizes = {"liquid": [], "illiquid": []}
    for d in range(days):
        ok = np.isfinite(signal[d]) & np.isfinite(label[d]) & np.isfinite(liquidity[d])
        med = np.median(liquidity[d][ok])
        for name, half in (("liquid", ok & (liquidity[d] > med)), ("illiquid", ok & (liquidity[d] < med))):
            ics[name].append(st.pearsonr(signal[d][half], label[d][half])[0])
            rics[name].append(st.spearmanr(signal[d][half], label[d][half])[0])
            sizes[name].append(half.sum())
    for name in ("liquid", "illiquid"):
        assert split[f"ic_{name}"] == pytest.approx(np.mean(ics[name]), abs=TOL)
        assert split[f"rank_ic_{name}"] == pytest.approx(np.mean(rics[name]), abs=TOL)
    assert split["ic_liquid"] > 0.9 and abs(split["ic_illiquid"]) < 0.1 and split["n_days"] == days
    assert split["ic_diff"] == pytest.approx(np.mean(np.subtract(ics["liquid"], ics["illiquid"])), abs=TOL)
    assert split["ic_diff_tstat_hac"] > 10 and sizes["liquid"] == sizes["illiquid"]  # 41 names: 20 + 20
    assert split["mean_stocks_liquid"] == pytest.approx(np.mean(sizes["liquid"])) == split["mean_stocks_illiquid"]
    # the summary does not depend on it; without a liquidity measure the split says so
    plain = evaluate(signal, label)
    same = lambda a, b: a == b or (isinstance(a, float) and math.isnan(a) and math.isnan(b))  # noqa: E731
    assert plain.summary.keys() == ev.summary.keys()
    assert all(same(plain.summary[k], ev.summary[k]) for k in plain.summary)
    assert plain.liquidity_split == {"available": False, "note": "n/a (no liquidity column)"}
    assert ev.to_dict()["liquidity_split"] == split and "liquidity_split" in plain.to_dict()
    with pytest.raises(CliError, match="liquidity shape"):
        evaluate(signal, label, liquidity=liquidity[:, :5])


def test_evaluate_frames_passes_the_liquidity_column():
    signal, label, returns = books_panel(11, days=25, stocks=30)
    liquidity = np.random.default_rng(2).lognormal(size=signal.shape)
    dates = pd.bdate_range("2023-03-01", periods=25)
    symbols = [f"S{i:02d}" for i in range(30)]
    grid = pd.MultiIndex.from_product([dates, symbols], names=["date", "symbol"]).to_frame(index=False)
    sig_df = grid.assign(signal=signal.ravel())
    sig_df = sig_df[np.isfinite(sig_df["signal"])]
    lab_df = grid.assign(y5=label.ravel(), y1=returns.ravel(), traded_value_med=liquidity.ravel())
    ev = evaluate_frames(sig_df, lab_df.sample(frac=1.0, random_state=4), "y5", horizon=5, returns_col="y1",
                         liquidity_col="traded_value_med", min_stocks=5)
    ref = evaluate(signal, label, horizon=5, returns=returns, liquidity=liquidity, min_stocks=5)
    assert ev.liquidity_split == pytest.approx(ref.liquidity_split) and ev.liquidity_split["available"]
    assert evaluate_frames(sig_df, lab_df, "y5", horizon=5).liquidity_split["available"] is False
