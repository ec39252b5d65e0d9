"""OHLCV ingest: real S&P 500 closes, no look-ahead (property), label lag, gaps / zero volume, breaks and bad
prints, repairs, adjustment, universe filters, bad input."""

import importlib.util
from pathlib import Path
from types import SimpleNamespace

import numpy as np
import pandas as pd
import pytest

from crnn_ray.data import ingest_ohlcv, load_panel, save_panel
from crnn_ray.data.labels import training_label
from crnn_ray.io import CliError

SP500 = Path(importlib.util.find_spec("skfolio").submodule_search_locations[0]) / "datasets/data/sp500_dataset.csv.gz"
FEATURES_OHLCV = ["ret1", "ret5", "ma20_gap", "vol20", "open_gap", "high_rel", "low_rel", "volume_rel"]


def _random_ohlcv(seed=0, n_days=80, n_symbols=6, halt_frac=0.05):
    rng = np.random.default_rng(seed)
    dates = pd.bdate_range("2021-01-04", periods=n_days)
    close = 50 * np.exp(np.cumsum(rng.normal(0, 0.02, (n_days, n_symbols)), axis=0))
    open_ = close * np.exp(rng.normal(0, 0.01, close.shape))
    high = np.maximum(open_, close) * 1.01
    low = np.minimum(open_, close) * 0.99
    volume = rng.integers(1000, 100000, close.shape).astype(float)
    d, s = np.meshgrid(np.arange(n_days), np.arange(n_symbols), indexing="ij")
    df = pd.DataFrame({"Date": dates[d.ravel()], "Ticker": [f"T{i}" for i in s.ravel()],
                       "Open": open_.ravel(), "High": high.ravel(), "Low": low.ravel(), "Close": close.ravel(),
                       "Volume": volume.ravel()})
    keep = rng.random(len(df)) > halt_frac
    return df[keep].sample(frac=1.0, random_state=seed).reset_index(drop=True)  # vendors need not sort


@pytest.fixture(scope="module")
def sp500():
    wide = pd.read_csv(SP500)
    long = wide.melt(id_vars="Date", var_name="Ticker", value_name="Adj Close")
    panel, meta = ingest_ohlcv(long, horizon=5)
    return wide, panel, meta


def test_sp500_shapes_and_features(sp500):
    wide, panel, meta = sp500
    tickers = [c for c in wide.columns if c != "Date"]
    assert len(panel) == len(wide) * len(tickers)
    assert meta["features"] == ["ret1", "ret5", "ma20_gap", "vol20"] and meta["labels"] == ["y5", "y1"]
    assert meta["horizons"] == {"y5": 5, "y1": 1} and meta["returns"] == "y1" and meta["label_lag"] == 1
    assert meta["params"]["columns"]["close"] == "Adj Close"
    assert meta["repairs"] == {k: 0 for k in meta["repairs"]} and meta["repair_summary"] == []
    # two real one-day moves beyond -40 % that stay: RRC x0.333 in 1990 and AAPL's -52 % of 2000-09-29
    ca = meta["corporate_actions"]
    assert ca["adjustment"] == "none" and ca["breaks"] == 2 and ca["bad_prints"] == 0
    assert ca["break_examples"] == ["(1990-04-10, RRC) x0.333", "(2000-09-29, AAPL) x0.482"]
    dates = np.sort(panel["date"].unique())
    broken = panel.loc[panel["price_break"], ["symbol", "date"]]
    after_break = np.zeros(len(panel), dtype=bool)
    for sym, day in zip(broken["symbol"], broken["date"]):  # the series restarts: 20 days of warm-up again
        pos = np.searchsorted(dates, day)
        after_break |= ((panel["symbol"] == sym) & panel["date"].between(day, dates[pos + 20])).to_numpy()
    enough_history = (panel["date"] >= dates[20]).to_numpy()
    assert panel.loc[enough_history & ~after_break, meta["features"]].notna().all().all()
    assert panel.loc[enough_history & after_break, "ma20_gap"].isna().sum() == 2 * 9  # < 10 closes in the segment
    assert panel.loc[panel["date"] == dates[0], "ret1"].isna().all()
    # label NaN on the last L + H dates only: a break inside the window stays in it (every held move realised)
    assert panel.loc[panel["date"] >= dates[-6], "y5"].isna().all()
    assert panel.loc[panel["date"] < dates[-6], "y5"].notna().all()
    assert panel["ret1"].abs().max() <= np.log(2) + 1e-6


def test_sp500_label_is_the_hand_computed_lagged_forward_return(sp500):
    """y5 at t = close_{t+1+5} / close_{t+1} - 1 and y1 at t = close_{t+2} / close_{t+1} - 1 (label_lag 1)."""
    wide, panel, _ = sp500
    rng = np.random.default_rng(0)
    checked = 0
    for _ in range(8):
        t = int(rng.integers(30, len(wide) - 7))
        tk = str(rng.choice([c for c in wide.columns if c != "Date"]))
        row = panel[(panel["date"] == pd.Timestamp(wide["Date"].iloc[t])) & (panel["symbol"] == tk)]
        if row["y5"].notna().all():
            assert row["y5"].iloc[0] == pytest.approx(wide[tk].iloc[t + 6] / wide[tk].iloc[t + 1] - 1, rel=1e-4, abs=1e-6)
            assert row["y1"].iloc[0] == pytest.approx(wide[tk].iloc[t + 2] / wide[tk].iloc[t + 1] - 1, rel=1e-4, abs=1e-6)
            checked += 1
        assert row["ret1"].iloc[0] == pytest.approx(np.log(wide[tk].iloc[t] / wide[tk].iloc[t - 1]), abs=1e-5)
    assert checked >= 6


def test_sp500_aapl_break_is_in_the_labels_and_masked_for_training_only(sp500, tmp_path):
    wide, panel, meta = sp500
    a = panel[panel["symbol"] == "AAPL"].reset_index(drop=True)
    b = int(np.flatnonzero(a["price_break"])[0])
    assert str(a["date"].iloc[b].date()) == "2000-09-29" and np.isnan(a["ret1"].iloc[b])
    px = wide["AAPL"].to_numpy()
    # the -52 % day is a move the books holding AAPL made: in y1 (close b-1 -> b at t = b-2) and in every y5
    # whose closes t+1 .. t+6 span it, exactly as the closes say
    assert not a["y5"].iloc[:-6].isna().any() and not a["y1"].iloc[:-2].isna().any()
    assert a["y1"].iloc[b - 2] == pytest.approx(px[b] / px[b - 1] - 1, rel=1e-5)
    for t in range(b - 6, b - 1):
        assert a["y5"].iloc[t] == pytest.approx(px[t + 6] / px[t + 1] - 1, rel=1e-5)
    # training targets drop exactly those labels (the break day in t+2 .. t+6), evaluation keeps them
    save_panel(panel, tmp_path / "sp.parquet", meta)
    p = load_panel(tmp_path / "sp.parquet")
    s = int(np.flatnonzero(p.symbols == "AAPL")[0])
    d0 = int(np.searchsorted(p.dates, np.datetime64(a["date"].iloc[0].date(), "D")))
    target = training_label(p, "y5")[d0:, s]
    np.testing.assert_array_equal(np.flatnonzero(np.isnan(target)[:len(a) - 6]), np.arange(b - 6, b - 1))
    np.testing.assert_array_equal(np.flatnonzero(np.isnan(training_label(p, "y1")[d0:, s])[:len(a) - 2]), [b - 2])
    assert np.isfinite(p.labels["y5"][d0:, s][:len(a) - 6]).all()
    # the labels just outside are the plain returns on each side of the break
    assert a["y5"].iloc[b - 1] == pytest.approx(px[b + 5] / px[b] - 1, rel=1e-5)
    assert a["y5"].iloc[b - 7] == pytest.approx(px[b - 1] / px[b - 6] - 1, rel=1e-5)
    # ret5 restarts: NaN for the break day and the 4 days after it, then from the break day's close
    assert a["ret5"].iloc[b:b + 5].isna().all() and a["ret5"].iloc[b + 5] == pytest.approx(np.log(px[b + 5] / px[b]), abs=1e-5)


@pytest.mark.parametrize("seed", [0, 1])
def test_no_look_ahead_property(seed):
    """Changing (even wildly: future breaks and spikes) or dropping rows after t changes no feature, liquidity
    measure or universe flag at <= t, and no label that ends at or before t."""
    df = _random_ohlcv(seed)
    filters = {"min_price": 45.0, "min_traded_value": 2e6, "max_stale_share": 0.5, "liquidity_window": 10}
    base, meta = ingest_ohlcv(df, horizon=3, **filters)
    assert meta["universe"]["rows_out_total"] > 0
    assert meta["features"] == FEATURES_OHLCV
    dates = np.sort(df["Date"].unique())
    rng = np.random.default_rng(100 + seed)
    for t in rng.choice(np.arange(5, len(dates) - 5), 4, replace=False):
        cut = dates[t]
        changed = df.copy()
        future = changed["Date"] > cut
        for col in ["Open", "High", "Low", "Close", "Volume"]:
            changed.loc[future, col] *= rng.uniform(0.3, 3.0, future.sum())
        # also drop some future rows (a halt that starts after t)
        changed = changed.drop(changed.index[future][:3])
        new, _ = ingest_ohlcv(changed, horizon=3, **filters)
        a = base[base["date"] <= cut].reset_index(drop=True)
        b = new[new["date"] <= cut].reset_index(drop=True)
        causal = ["date", "symbol"] + FEATURES_OHLCV + ["traded_value_med", "universe"]
        pd.testing.assert_frame_equal(a[causal], b[causal])
        # labels that end at or before t (close t'+1+3 <= t) are unchanged too, for names that trade at t (a
        # name halted on t carries its label to its next traded close); the ones that reach past t moved
        trades = a.loc[(a["date"] == cut) & (a["volume"] > 0) & ~a["suspect_jump"], "symbol"]
        settled = (a["date"] <= dates[t - 4]) & a["symbol"].isin(trades)
        assert settled.sum() > 0.3 * (a["date"] <= dates[t - 4]).sum()
        np.testing.assert_array_equal(a.loc[settled, "y3"].to_numpy(), b.loc[settled, "y3"].to_numpy())
        assert not np.allclose(a.loc[a["date"] == cut, "y3"].fillna(0), b.loc[b["date"] == cut, "y3"].fillna(0))


def _small(rows):
    return pd.DataFrame(rows, columns=["date", "symbol", "close", "volume"])


def test_gap_zero_volume_and_label_rules():
    dates = pd.bdate_range("2022-01-03", periods=10)
    rows = [(d, "A", 10.0 + i, 100.0) for i, d in enumerate(dates) if i != 4]  # A halted on day 4 (no row)
    rows += [(d, "B", 20.0, 0.0 if i == 2 else 50.0) for i, d in enumerate(dates)]  # B: zero volume on day 2
    out, meta = ingest_ohlcv(_small(rows), horizon=2, label_lag=0, min_days=1)  # 10 days: below the bound
    a = out[out["symbol"] == "A"].set_index("date")
    # after the halt, ret1 is measured from the last available close
    assert a.loc[dates[5], "ret1"] == pytest.approx(np.log(15.0 / 13.0), rel=1e-6)
    # a label never drops a name for a halt ahead: day 2's book (closes 2 -> 4) holds A through the halt and
    # exits at the next traded close, day 5; day 3's holds it from 13 to 15 (carried over day 4)
    assert a.loc[dates[2], "y2"] == pytest.approx(15.0 / 12.0 - 1, rel=1e-6)
    assert a.loc[dates[3], "y2"] == pytest.approx(15.0 / 13.0 - 1, rel=1e-6)
    # y1: the halt's move on A's last traded day before it (no book can trade it on day 4), 0 after it
    assert a.loc[dates[3], "y1"] == pytest.approx(15.0 / 13.0 - 1, rel=1e-6)
    b = out[out["symbol"] == "B"].set_index("date")
    # B's zero-volume day has no price: no features, no label that day, carried at 20 by the books holding it
    assert b.loc[dates[2], ["ret1", "volume_rel", "y2", "y1"]].isna().all() and b.loc[dates[0], "y2"] == 0.0
    assert meta["params"]["n_zero_volume_rows"] == 1
    # label_lag 1: y2 at t holds closes t+1 -> t+3; day 1's book is stuck in A's halt (2 -> 5); day 3's enters
    # during the halt, so at A's next traded close (day 5: the move over the halt is the earlier books')
    lagged, _ = ingest_ohlcv(_small(rows), horizon=2, min_days=1)
    a1 = lagged[lagged["symbol"] == "A"].set_index("date")
    assert a1.loc[dates[1], "y2"] == pytest.approx(15.0 / 12.0 - 1, rel=1e-6)
    assert a1.loc[dates[3], "y2"] == pytest.approx(16.0 / 15.0 - 1, rel=1e-6)
    assert a1.loc[dates[0], "y2"] == pytest.approx(13.0 / 11.0 - 1, rel=1e-6)
    assert a1.loc[dates[4 - 2], "y2"] == pytest.approx(15.0 / 13.0 - 1, rel=1e-6)


def test_a_jump_that_stays_is_a_break_a_reversed_spike_is_a_bad_print():
    dates = pd.bdate_range("2022-01-03", periods=30)
    a = np.full(30, 40.0)
    a[:12] = 10.0                                          # A: a 4x jump on day 12 that stays (a missed 1:4 split)
    b = 20.0 + 0.1 * np.arange(30)
    b[8] *= 3.0                                            # B: a bad tick on day 8 (x3, back the next day)
    c = np.full(30, 30.0)
    c[20] = 30.0 * 0.5                                     # C: -50 % on day 20, back by +100 %: not beyond +100 %
    rows = [(d, sym, p, 100.0) for sym, px in (("A", a), ("B", b), ("C", c)) for d, p in zip(dates, px)]
    out, meta = ingest_ohlcv(_small(rows), horizon=3, label_lag=0)
    g = {s: out[out["symbol"] == s].reset_index(drop=True) for s in "ABC"}
    assert meta["corporate_actions"]["breaks"] == 1 and meta["corporate_actions"]["bad_prints"] == 2
    assert meta["corporate_actions"]["break_examples"] == ["(2022-01-19, A) x4"]
    assert list(np.flatnonzero(g["A"]["price_break"])) == [12] and not g["A"]["suspect_jump"].any()
    assert list(np.flatnonzero(g["B"]["suspect_jump"])) == [8, 9] and not g["B"]["price_break"].any()
    assert list(np.flatnonzero(g["C"]["suspect_jump"])) == [20, 21]
    assert meta["params"]["n_suspect_jumps"] == 4 and meta["params"]["n_breaks"] == 1
    # a break stays in the labels (every held move realised); a bad print is no price: no label on its days,
    # and a book holding the name is carried over it to the next good close
    assert list(np.flatnonzero(g["A"]["y3"].isna())) == [27, 28, 29]
    assert list(np.flatnonzero(g["B"]["y3"].isna())) == [8, 9, 27, 28, 29]
    assert list(np.flatnonzero(g["C"]["y3"].isna())) == [20, 21, 27, 28, 29]
    assert g["A"]["y3"].iloc[12] == 0.0 and g["A"]["y3"].iloc[8] == 0.0 and g["A"]["y3"].iloc[9] == 3.0
    assert g["B"]["y3"].iloc[7] == pytest.approx(b[10] / b[7] - 1, rel=1e-6)
    assert g["B"]["y1"].iloc[7] == pytest.approx(b[10] / b[7] - 1, rel=1e-6) and g["C"]["y3"].iloc[19] == 0.0
    # training targets drop every label whose closes t+1 .. t+3 hold a flagged day
    p = SimpleNamespace(label=lambda n: np.stack([g[s][n].to_numpy() for s in "ABC"], axis=1), horizon=lambda n: 3,
                        label_lag=0, aux={c: np.stack([g[s][c].to_numpy() for s in "ABC"], axis=1)
                                          for c in ("suspect_jump", "price_break")})
    target = training_label(p, "y3")
    assert [list(np.flatnonzero(np.isnan(target[:, k]))) for k in range(3)] == [
        [9, 10, 11, 27, 28, 29], [5, 6, 7, 8, 9, 27, 28, 29], [17, 18, 19, 20, 21, 27, 28, 29]]
    # features restart at every beyond-limit move (known that day: causal) and the day a bad print came back
    assert list(np.flatnonzero(g["B"]["ret1"].isna())) == [0, 8, 9]
    assert g["A"]["ma20_gap"].iloc[12:21].isna().all() and g["A"]["ma20_gap"].iloc[21] == 0.0
    # asymmetric limits: with a 10 % exchange limit a +20 % day is a move beyond it
    _, m2 = ingest_ohlcv(_small(rows), horizon=3, label_lag=0, max_up=0.1, max_down=0.1)
    assert m2["corporate_actions"]["breaks"] == 1 and m2["corporate_actions"]["bad_prints"] == 2
    loose, _ = ingest_ohlcv(_small(rows), horizon=3, label_lag=0, max_up=5.0, max_down=0.7)
    assert not loose["suspect_jump"].any() and not loose["price_break"].any()
    # the deprecated symmetric --max-jump J reads as max_up J, max_down J / (1 + J)
    _, m4 = ingest_ohlcv(_small(rows), horizon=3, max_jump=1.0)
    assert (m4["params"]["max_up"], m4["params"]["max_down"]) == (1.0, 0.5)


def test_column_names_case_insensitive_and_explicit():
    df = _random_ohlcv(3, n_days=40).rename(columns={"Date": "DAY", "Ticker": "Sym", "Close": "ADJ CLOSE"})
    out, meta = ingest_ohlcv(df, horizon=5, symbol_col="sym")
    assert meta["params"]["columns"]["date"] == "DAY" and meta["params"]["columns"]["close"] == "ADJ CLOSE"
    assert set(out["symbol"]) == {f"T{i}" for i in range(6)}


@pytest.mark.parametrize("mutate, match", [
    (lambda df: pd.concat([df, df.iloc[[0, 1]]]), r"2 duplicate \(date, symbol\) row\(s\), first: \(20"),
    (lambda df: df.drop(columns=["Close"]), "missing column 'close'"),
    (lambda df: df.assign(Close=df["Close"].astype(object).where(df.index != 5, "n/a?")),
     r"'Close' is not numeric: 1 value\(s\), first \(2021-0\d-\d\d, T\d\) 'n/a\?'"),
    (lambda df: df.assign(Close=df["Close"].where(df.index != 5, np.inf)), "'Close' has 1 infinite"),
    (lambda df: df.assign(Date=df["Date"].astype(str).where(df.index != 5, "yesterday")), "unparsable date 'yesterday'"),
    (lambda df: df.assign(Date="someday"), "column 'Date': no parsable date"),
    (lambda df: df.assign(Ticker=df["Ticker"].where(df.index != 5, None)), "'Ticker' has 1 missing value"),
    (lambda df: df.assign(Close=0.0), "no row with a positive close"),
])
def test_bad_input_one_line_errors(mutate, match):
    with pytest.raises(CliError, match=match) as err:
        ingest_ohlcv(mutate(_random_ohlcv(4, n_days=40)), horizon=5)
    assert "\n" not in str(err.value)


def test_every_problem_is_reported_at_once():
    df = _random_ohlcv(4, n_days=40)
    df = pd.concat([df, df.iloc[[0]]])
    df["Close"] = df["Close"].astype(object)
    df.iloc[[3, 7], df.columns.get_loc("Close")] = "n/a?"
    df.iloc[[4], df.columns.get_loc("Volume")] = np.inf
    with pytest.raises(CliError) as err:
        ingest_ohlcv(df, horizon=5, where="prices.csv")
    msg = str(err.value)
    assert msg.startswith("prices.csv: 3 problems: ") and "\n" not in msg
    assert "'Close' is not numeric: 2 value(s)" in msg and "'Volume' has 1 infinite value(s)" in msg
    assert "1 duplicate (date, symbol) row(s)" in msg


def test_one_day_forward_return_column_follows_the_label_rules():
    """y1 = close_{t+1} / close_t - 1 on the panel calendar; a halt's move on the last traded day, a jump kept."""
    dates = pd.bdate_range("2022-01-03", periods=12)
    px = [10.0, 11.0, 12.1, 11.0, 11.0, 11.5, 46.0, 46.0, 47.0, 48.0, 49.0, 50.0]  # a 4x jump on day 6
    rows = [(d, "A", p, 100.0) for i, (d, p) in enumerate(zip(dates, px)) if i != 3]  # A halted on day 3
    rows += [(d, "B", 10.0 + i, 100.0) for i, d in enumerate(dates)]
    out, meta = ingest_ohlcv(_small(rows), horizon=3, label_lag=0, min_days=1)  # 12 days: below the bound
    assert meta["labels"] == ["y3", "y1"] and meta["returns"] == "y1" and meta["horizons"]["y1"] == 1
    a = out[out["symbol"] == "A"].set_index("date")
    assert a.loc[dates[0], "y1"] == pytest.approx(0.1, rel=1e-6)
    assert a.loc[dates[2], "y1"] == pytest.approx(11.0 / 12.1 - 1, rel=1e-6)  # day 3 has no close: 2 -> 4
    assert a.loc[dates[5], "y1"] == pytest.approx(46.0 / 11.5 - 1, rel=1e-6)  # the break on day 6 is a move
    assert a.loc[dates[7], "y1"] == pytest.approx(47.0 / 46.0 - 1, rel=1e-6) and np.isnan(a.loc[dates[11], "y1"])
    b = out[out["symbol"] == "B"].set_index("date")
    np.testing.assert_allclose(b["y1"].iloc[:-1], (11.0 + np.arange(11)) / (10.0 + np.arange(11)) - 1, rtol=1e-6)
    # a 1-day label is the returns column itself (no second column)
    one, meta1 = ingest_ohlcv(_small(rows), horizon=1, label_lag=0, min_days=1)
    assert meta1["labels"] == ["y1"] and meta1["returns"] == "y1" and list(one.columns).count("y1") == 1
    np.testing.assert_array_equal(one["y1"].to_numpy(), out["y1"].to_numpy())
    # with label_lag 1, y1 at t is the next row's lag-0 y1: the return the book formed at t earns first
    lagged, meta_l = ingest_ohlcv(_small(rows), horizon=3, min_days=1)
    assert meta_l["label_lag"] == 1
    lb = lagged[lagged["symbol"] == "B"]["y1"].to_numpy()
    np.testing.assert_array_equal(lb[:-1], b["y1"].to_numpy()[1:])
    # compounding y1 over t..t+2 gives y3 at t (both lagged): the realised pnl and the label agree
    l3 = lagged[lagged["symbol"] == "B"]["y3"].to_numpy()
    comp = (1 + lb[:-2]) * (1 + lb[1:-1]) * (1 + lb[2:]) - 1
    np.testing.assert_allclose(comp[:-2], l3[:-4], rtol=1e-5)


def _ohlcv(n_days=30, symbols=("A", "B", "C"), seed=5):
    rng = np.random.default_rng(seed)
    dates = pd.bdate_range("2022-01-03", periods=n_days)
    frames = []
    for k, sym in enumerate(symbols):
        close = (20 + 10 * k) * np.exp(np.cumsum(rng.normal(0, 0.01, n_days)))
        frames.append(pd.DataFrame({"date": dates, "symbol": sym, "open": close * 0.995, "high": close * 1.01,
                                    "low": close * 0.99, "close": close, "volume": 1000.0 + 100 * k}))
    return pd.concat(frames, ignore_index=True)


def _at(df, day, sym):
    return (df["date"] == pd.bdate_range("2022-01-03", periods=60)[day]) & (df["symbol"] == sym)


def test_repairs_are_counted_with_examples_and_strict_refuses_them_all():
    df = _ohlcv()
    holiday = pd.DataFrame({"date": pd.Timestamp("2022-01-08"), "symbol": ["A", "B", "C"], "open": 0.0,
                            "high": 0.0, "low": 0.0, "close": 0.0, "volume": 0.0})  # a Saturday filled with zeros
    df = pd.concat([df, holiday], ignore_index=True)
    df.loc[_at(df, 4, "A"), "open"] = 0.0
    df.loc[_at(df, 5, "B"), "high"] = -1.0
    df.loc[_at(df, 6, "B"), "low"] = np.nan            # already missing: no repair
    df.loc[_at(df, 7, "C"), "volume"] = -5.0
    df.loc[_at(df, 9, "C"), "volume"] = -7.0
    df.loc[_at(df, 3, "C"), "close"] = 0.0             # close unusable, other prices fine: the row goes
    df.loc[_at(df, 8, "A"), ["open", "high", "low", "close"]] = np.nan  # no price at all: absent, no repair
    df.loc[_at(df, 10, "B"), ["open", "high", "low", "close"]] = [0.0, 0.0, np.nan, 0.0]  # a placeholder row
    out, meta = ingest_ohlcv(df, horizon=2, where="v.csv")
    assert meta["repairs"] == {"placeholder": 4, "bad_close": 1, "bad_open": 1, "bad_high": 1, "bad_low": 0,
                               "negative_volume": 2, "negative_traded_value": 0, "bad_factor": 0,
                               "bad_adj_close": 0, "calendar_gap": 0}
    assert meta["repair_summary"][0] == ("placeholder 4 row(s), first (2022-01-08, A), (2022-01-08, B), "
                                         "(2022-01-08, C), ...")
    assert "negative_volume 2 value(s) in column 'volume', first (2022-01-12, C), (2022-01-14, C)" in meta[
        "repair_summary"]
    assert meta["params"]["n_rows_dropped"] == 6 and meta["params"]["n_rows_without_price"] == 1
    assert len(out) == 90 - 3 and pd.Timestamp("2022-01-08") not in set(out["date"])  # the filler day is gone
    o = out.set_index(["date", "symbol"])
    d = pd.bdate_range("2022-01-03", periods=30)
    assert np.isnan(o.loc[(d[4], "A"), "open"]) and np.isnan(o.loc[(d[4], "A"), "open_gap"])
    assert np.isfinite(o.loc[(d[4], "A"), "ret1"]) and np.isfinite(o.loc[(d[4], "A"), "high_rel"])
    assert np.isnan(o.loc[(d[7], "C"), "volume"]) and np.isnan(o.loc[(d[7], "C"), "volume_rel"])
    assert (d[3], "C") not in o.index and (d[10], "B") not in o.index and (d[8], "A") not in o.index
    # C's ret1 after its missing day is measured from the last close it had
    c = df[df["symbol"] == "C"].set_index("date")["close"]
    assert o.loc[(d[4], "C"), "ret1"] == pytest.approx(np.log(c[d[4]] / c[d[2]]), rel=1e-5)
    with pytest.raises(CliError) as err:
        ingest_ohlcv(df, horizon=2, strict=True, where="v.csv")
    msg = str(err.value)
    assert "\n" not in msg and msg.startswith("v.csv: --strict: 5 kind(s) of repair refused: placeholder 4 row(s)")
    for kind in ("bad_close 1 row(s) in column 'close'", "bad_open 1 value(s) in column 'open'",
                 "bad_high 1 value(s) in column 'high', first (2022-01-10, B)", "negative_volume 2 value(s)"):
        assert kind in msg, kind


def test_factor_or_adj_close_adjusts_a_split_away():
    df = _ohlcv(n_days=40, symbols=("A", "B", "C", "D"))
    split = df["symbol"].eq("A") & (df["date"] >= pd.bdate_range("2022-01-03", periods=40)[20])
    true_close = df["close"].copy()
    for col in ("open", "high", "low", "close"):
        df.loc[split, col] /= 2.0  # a 2:1 split the raw prices show
    df.loc[split, "volume"] *= 2.0
    clean, _ = ingest_ohlcv(df.assign(open=df["open"].where(~split, df["open"] * 2), high=df["high"].where(
        ~split, df["high"] * 2), low=df["low"].where(~split, df["low"] * 2), close=true_close,
        volume=df["volume"].where(~split, df["volume"] / 2)), horizon=5)
    with_factor, mf = ingest_ohlcv(df.assign(factor=np.where(split, 2.0, 1.0)), horizon=5)
    with_adj, ma = ingest_ohlcv(df.assign(adj_close=true_close), horizon=5)
    _, mr = ingest_ohlcv(df, horizon=5)
    assert mf["corporate_actions"]["adjustment"] == "factor" and mf["corporate_actions"]["breaks"] == 0
    assert ma["corporate_actions"]["adjustment"] == "adj_close" and ma["corporate_actions"]["breaks"] == 0
    feats = mf["features"] + ["y5", "y1"]
    for adjusted in (with_factor, with_adj):
        pd.testing.assert_frame_equal(adjusted[feats], clean[feats], rtol=1e-5)
        np.testing.assert_allclose(adjusted["adj_close"], clean["close"], rtol=1e-12)
        np.testing.assert_array_equal(adjusted["close"], df.sort_values(["date", "symbol"])["close"])  # raw kept
    assert mr["corporate_actions"]["breaks"] == 1 and mr["corporate_actions"]["break_examples"][0].startswith(
        "(2022-01-31, A) x0.")
    # --no-adjust ignores the factor: the split is a break again
    _, mn = ingest_ohlcv(df.assign(factor=np.where(split, 2.0, 1.0)), horizon=5, adjust=False)
    assert mn["corporate_actions"] == {**mr["corporate_actions"]}
    bad = df.assign(factor=np.where(split, 2.0, 1.0))
    bad.loc[_at(bad, 3, "B"), "factor"] = 0.0
    _, mb = ingest_ohlcv(bad, horizon=5)
    assert mb["repairs"]["bad_factor"] == 1 and mb["params"]["n_rows_dropped"] == 1


def test_universe_filters_drop_labels_keep_features():
    df = _ohlcv(n_days=40, symbols=("A", "B", "C"))
    days = pd.bdate_range("2022-01-03", periods=40)
    cheap = df["symbol"].eq("A") & df["date"].between(days[10], days[19])
    df.loc[cheap, ["open", "high", "low", "close"]] *= 0.2         # A trades below 5 on days 10..19 (a ramp-free
    df.loc[cheap, "volume"] = 10.0                                  # drop: it is a break in and out, too)
    stale = df["symbol"].eq("B") & df["date"].between(days[20], days[35])
    df.loc[stale, ["open", "high", "low", "close"]] = df.loc[_at(df, 19, "B"), "close"].iloc[0]
    base, mb = ingest_ohlcv(df, horizon=3)
    out, meta = ingest_ohlcv(df, horizon=3, min_price=5.0, min_traded_value=5e3, liquidity_window=10,
                             max_stale_share=0.5)
    # reference figures, symbol by symbol (groupby) on the long table
    long = df.sort_values(["symbol", "date"])
    tv_med = (long["close"] * long["volume"]).groupby(long["symbol"]).transform(
        lambda s: s.rolling(10, min_periods=5).median())
    share = long["close"].groupby(long["symbol"]).transform(lambda s: s.eq(s.shift(1)).astype(float).rolling(
        10, min_periods=5).mean())
    ref = pd.DataFrame({"date": long["date"], "symbol": long["symbol"], "med": tv_med, "share": share,
                        "price_out": long["close"] < 5.0}).sort_values(["date", "symbol"]).reset_index(drop=True)
    np.testing.assert_allclose(out["traded_value_med"], ref["med"], rtol=1e-12)
    tv_out, stale_out = ~(ref["med"] >= 5e3), ~(ref["share"] <= 0.5)
    assert meta["universe"]["rows_out"] == {"min_price": 10, "min_traded_value": int(tv_out.sum()),
                                            "max_stale_share": int(stale_out.sum())}
    gone = (ref["price_out"] | tv_out | stale_out).to_numpy()
    assert meta["universe"]["rows_out_total"] == int(gone.sum()) and 10 < gone.sum() < len(out)
    np.testing.assert_array_equal(out["universe"].to_numpy(), ~gone)
    assert out.loc[gone, "y3"].isna().all()
    pd.testing.assert_series_equal(out.loc[~gone, "y3"], base.loc[~gone, "y3"])
    pd.testing.assert_frame_equal(out[meta["features"]], base[mb["features"]])   # features untouched
    pd.testing.assert_series_equal(out["y1"], base["y1"])  # H > 1: the held books' returns stay
    one, _ = ingest_ohlcv(df, horizon=1, min_price=5.0)
    assert one.loc[ref["price_out"].to_numpy(), "y1"].isna().all()  # H = 1: y1 is the label
    with pytest.raises(CliError, match="--min-traded-value needs a volume column"):
        ingest_ohlcv(df.drop(columns=["volume"]), horizon=3, min_traded_value=1.0)


@pytest.mark.parametrize("kwargs, match", [
    ({"label_lag": -1}, "--label-lag must be an integer >= 0"),
    ({"max_down": 1.0}, r"--max-down must be in \(0, 1\)"),
    ({"max_up": 0.0}, "--max-up must be a positive number"),
    ({"max_stale_share": 1.5}, r"--max-stale-share must be in \[0, 1\]"),
    ({"liquidity_window": 1}, "--liquidity-window must be an integer >= 2"),
    ({"min_price": -1.0}, "--min-price must be a number >= 0"),
])
def test_bad_settings_name_the_flag(kwargs, match):
    with pytest.raises(CliError, match=match):
        ingest_ohlcv(_ohlcv(), horizon=3, **kwargs)


def test_panel_file_exposes_label_lag_and_aux_grids(tmp_path):
    from crnn_ray.data import load_panel, save_panel, synthesize

    df, meta = ingest_ohlcv(_ohlcv(n_days=40).drop(index=[5, 50]), horizon=5, min_price=30.0)
    path = tmp_path / "p.parquet"
    save_panel(df, path, meta)
    p = load_panel(path)
    assert p.meta["label_lag"] == 1 and p.label_lag == 1 and p.horizon("y5") == 5 and p.label_span("y5") == 6
    assert "traded_value_med" not in p.features and "universe" not in p.features
    assert set(p.aux) == {"universe", "traded_value_med", "suspect_jump", "price_break"}
    assert p.aux["universe"].dtype == bool and p.aux["price_break"].dtype == bool
    di = np.searchsorted(p.dates, df["date"].to_numpy().astype("datetime64[D]"))
    si = np.searchsorted(p.symbols.astype(str), df["symbol"].to_numpy().astype(str))
    np.testing.assert_array_equal(p.aux["universe"][di, si], df["universe"].to_numpy())
    np.testing.assert_allclose(p.aux["traded_value_med"][di, si], df["traded_value_med"], rtol=1e-6)
    # NaN where absent (2 cells) and over the first 9 rows of each stock (a median needs >= 10 of the 20 days)
    assert p.aux["universe"].sum() == df["universe"].sum() and np.isnan(p.aux["traded_value_med"]).sum() == 2 + 3 * 9
    # no universe row has a label, and a CSV without metadata keeps the aux columns out of the features too
    assert not np.isfinite(p.labels["y5"][~p.aux["universe"]]).any()
    df.to_csv(tmp_path / "p.csv", index=False)
    assert load_panel(tmp_path / "p.csv").features == meta["features"]
    sdf, smeta = synthesize(20, 80, seed=1)
    save_panel(sdf, tmp_path / "s.parquet", smeta)
    assert smeta["label_lag"] == 0 and load_panel(tmp_path / "s.parquet").label_lag == 0


# ------------------------------------------------------------------ dates, calendar gaps, traded value, extras,
# bounds: what real vendor files (a US large-cap and an emerging-market daily panel) broke on
def test_integer_yyyymmdd_dates_are_dates_not_nanoseconds():
    df = _ohlcv(n_days=40)
    ref, _ = ingest_ohlcv(df, horizon=3)
    as_int = df.assign(date=df["date"].dt.strftime("%Y%m%d").astype(int))
    as_float = as_int.assign(date=as_int["date"].astype(float))           # a column with a gap reads as floats
    as_text = as_int.assign(date=as_int["date"].astype(str))
    for variant in (as_int, as_float, as_text):
        out, meta = ingest_ohlcv(variant, horizon=3)
        pd.testing.assert_frame_equal(out, ref)                         # not 120 rows on 1970-01-01
        assert meta["params"]["date_note"] == "integer YYYYMMDD detected (20220103 -> 2022-01-03)"
        assert meta["params"]["date_format"] == "%Y%m%d"
    assert ref["date"].nunique() == 40 and meta["params"]["date_note"] is not None
    bad = as_int.assign(date=as_int["date"].where(as_int.index != 7, 20220231))
    with pytest.raises(CliError, match=r"column 'date': unparsable date 20220231 \(1 row\(s\), e\.g\. \(20220231, A\)"):
        ingest_ohlcv(bad, horizon=3)
    with pytest.raises(CliError, match=r"no parsable date \(first value 1641168000; integers are read as YYYYMMDD"):
        ingest_ohlcv(df.assign(date=(df["date"] - pd.Timestamp(0)) // pd.Timedelta("1s")), horizon=3)  # epoch s
    with pytest.raises(CliError, match=r"no parsable date \(first value 20220103\.5"):
        ingest_ohlcv(as_float.assign(date=as_float["date"] + 0.5), horizon=3)
    # an explicit --date-format, and a value that does not follow it named
    text = df.assign(date=df["date"].dt.strftime("%d/%m/%Y"))
    out, meta = ingest_ohlcv(text, horizon=3, date_format="%d/%m/%Y")
    pd.testing.assert_frame_equal(out, ref)
    assert meta["params"]["date_note"] is None and meta["params"]["date_format"] == "%d/%m/%Y"
    with pytest.raises(CliError, match=r"unparsable date '2022-01-05' .*--date-format '%d/%m/%Y'"):
        ingest_ohlcv(text.assign(date=text["date"].where(text.index != 2, "2022-01-05")), horizon=3,
                     date_format="%d/%m/%Y")


def _with_hole(n_before=40, n_after=40, hole=30, jump=3.0):
    """3 stocks, 40 business days, a hole of 30 business days (> 40 calendar days) nobody has a row in, 40 more;
    the prices move by `jump` across the hole (what a month of missing data can hide)."""
    days = pd.bdate_range("2022-01-03", periods=n_before + hole + n_after)
    df = _ohlcv(n_days=len(days))
    after = df["date"] >= days[n_before + hole]
    df.loc[after, ["open", "high", "low", "close"]] *= jump
    keep = ~df["date"].between(days[n_before], days[n_before + hole - 1])
    return df[keep].reset_index(drop=True), days[n_before - 1], days[n_before + hole]


def test_a_calendar_gap_cuts_the_panel_into_stretches_no_window_or_label_crosses():
    df, last, first = _with_hole()
    out, meta = ingest_ohlcv(df, horizon=3)
    gaps, n = meta["calendar_gaps"], (first - last).days
    assert gaps["gaps"] == [[str(last.date()), str(first.date()), n]] and gaps["max_gap_days"] == 14 and n > 40
    assert meta["repairs"]["calendar_gap"] == 1 and meta["repair_summary"] == [
        f"calendar_gap 1 gap(s) longer than 14 days, first {last.date()} -> {first.date()} ({n} days)"]
    # the jump across the hole is no move: no break, no bad print (without the gap rule: 3 false breaks)
    assert meta["corporate_actions"]["breaks"] == 0 and not out["price_break"].any()
    _, across = ingest_ohlcv(df, horizon=3, max_gap_days=60)  # the hole taken for a holiday
    assert across["corporate_actions"]["breaks"] == 3 and across["calendar_gaps"]["gaps"] == []
    # each stretch is the panel its rows alone would make: features and labels (min_days: each is short)
    cols = meta["features"] + ["y3", "y1", "suspect_jump", "price_break"]
    for part in (df["date"] <= last, df["date"] >= first):
        alone, _ = ingest_ohlcv(df[part], horizon=3, min_days=1)
        side = out[out["date"].isin(df.loc[part, "date"])].reset_index(drop=True)
        pd.testing.assert_frame_equal(side[cols], alone[cols])
    # so: ret1 NaN on the first day after the hole, no label from the last 4 (L + H) days before it
    post = out[out["date"] == first]
    pre = out[out["date"].between(last - pd.offsets.BDay(3), last)]
    assert post["ret1"].isna().all() and pre["y3"].isna().all() and out[out["date"] <= last]["y3"].notna().sum()
    # the counts: per stock ret1 1, ret5 5, ma20_gap 9, vol20 10, volume_rel 4 (open/high/low: same day)
    assert gaps["features_masked"] == 3 * (1 + 5 + 9 + 10 + 4)
    assert gaps["labels_masked"] == {"y3": 3 * 4, "y1": 3 * 2}
    with pytest.raises(CliError, match=r"--strict: 1 kind\(s\) of repair refused: calendar_gap 1 gap\(s\)"):
        ingest_ohlcv(df, horizon=3, strict=True)


def test_traded_value_column_is_the_liquidity_in_currency():
    df = _ohlcv(n_days=40)
    rng = np.random.default_rng(3)
    df["value"] = df["close"] * df["volume"] * 100 * rng.uniform(0.5, 2.0, len(df))   # yuan, not lots
    df.loc[_at(df, 12, "B"), "value"] = 0.0              # no trade that day: halted, like zero volume
    df.loc[_at(df, 14, "C"), "value"] = -3.0             # a repair, like a negative volume
    base, _ = ingest_ohlcv(df.drop(columns=["value"]), horizon=3)
    out, meta = ingest_ohlcv(df, horizon=3, traded_value="VALUE", min_traded_value=1e6, liquidity_window=10)
    assert meta["params"]["traded_value"] == "value" and "value" not in meta["features"]
    assert meta["repairs"]["negative_traded_value"] == 1 and meta["params"]["n_zero_volume_rows"] == 1
    long = df.assign(value=df["value"].where(df["value"] >= 0)).sort_values(["symbol", "date"])
    med = long["value"].groupby(long["symbol"]).transform(lambda s: s.rolling(10, min_periods=5).median())
    ref = pd.DataFrame({"date": long["date"], "symbol": long["symbol"], "med": med}).sort_values(
        ["date", "symbol"]).reset_index(drop=True)
    np.testing.assert_allclose(out["traded_value_med"], ref["med"].where(out["close"].notna()), rtol=1e-12)
    assert meta["universe"]["rows_out"]["min_traded_value"] == int((~(ref["med"] >= 1e6)).sum())
    np.testing.assert_allclose(out["traded_value"], df.sort_values(["date", "symbol"])["value"].where(
        lambda v: v >= 0).to_numpy())
    halted = (out["symbol"] == "B") & (out["date"] == pd.bdate_range("2022-01-03", periods=40)[12])
    assert out.loc[halted, meta["features"]].isna().all(axis=None) and base.loc[halted, "ret1"].notna().all()
    # a file with a traded value and no volume has a liquidity measure (and a filter) but no volume_rel
    only, m2 = ingest_ohlcv(df.drop(columns=["volume"]), horizon=3, traded_value="value", min_traded_value=1.0)
    assert "volume_rel" not in m2["features"] and only["traded_value_med"].notna().any()
    for kwargs, match in (({"traded_value": "turnover"}, r"missing column 'turnover' \(--traded-value\)"),
                          ({"traded_value": "Close"}, r"--traded-value 'Close': column 'close' is the close column"),
                          ({"traded_value": "value", "symbol_col": "value"},
                           r"--traded-value 'value': column 'value' is the symbol column")):
        with pytest.raises(CliError, match=match):
            ingest_ohlcv(df, horizon=3, **kwargs)


def test_extra_features_are_kept_after_the_computed_ones():
    df = _ohlcv(n_days=40)
    df["pe"] = np.linspace(5, 25, len(df))
    df["Sentiment"] = np.where(np.arange(len(df)) % 7 == 0, np.nan, np.cos(np.arange(len(df))))
    df.loc[_at(df, 20, "A"), "volume"] = 0.0             # a halted day: its extras are NaN like its features
    out, meta = ingest_ohlcv(df, horizon=3, extra_features=("pe", "sentiment"))
    assert meta["features"] == FEATURES_OHLCV + ["pe", "Sentiment"]
    assert meta["params"]["extra_features"] == {"pe": "pe", "Sentiment": "Sentiment"}
    ref = df.sort_values(["date", "symbol"]).reset_index(drop=True)
    halted = ref["volume"].eq(0).to_numpy()
    assert out["pe"].dtype == np.float32 and halted.sum() == 1 and out.loc[halted, ["pe", "Sentiment"]].isna().all(
        axis=None)
    np.testing.assert_allclose(out.loc[~halted, "Sentiment"], ref.loc[~halted, "Sentiment"], rtol=1e-6)
    np.testing.assert_allclose(out.loc[~halted, "pe"], ref.loc[~halted, "pe"], rtol=1e-6)
    for extras, match in ((("beta",), r"missing column 'beta' \(--extra-features\)"),
                          (("volume",), "column 'volume' is the volume column, not an extra feature"),
                          (("pe", "PE"), "'pe' is the name of a column ingest writes, or given twice")):
        with pytest.raises(CliError, match=match):
            ingest_ohlcv(df, horizon=3, extra_features=extras)
    for name in ("ret1", "y5", "universe"):
        with pytest.raises(CliError, match=f"'{name}' is the name of a column ingest writes"):
            ingest_ohlcv(df.assign(**{name: 1.0}), horizon=3, extra_features=(name,))
    # a text value is one more problem of the one-line report
    text = df.assign(pe=df["pe"].astype(object).where(df.index != 4, "n/a"), close=df["close"].where(
        df.index != 9, np.inf))
    with pytest.raises(CliError, match=r"2 problems: column 'close' has 1 infinite value\(s\), first \(2022-01-14, A\); "
                                       r"column 'pe' is not numeric: 1 value\(s\), first \(2022-01-07, A\) 'n/a'$"):
        ingest_ohlcv(text, horizon=3, extra_features=("pe",))


def test_a_file_too_small_for_a_panel_is_refused():
    ok, meta = ingest_ohlcv(_ohlcv(n_days=31), horizon=5)            # 20 + 1 + 5 + 5 = 31 days: the least
    assert ok["date"].nunique() == 31 and meta["params"]["min_days"] == 31
    with pytest.raises(CliError, match=r"^f\.csv: 30 day\(s\) with a price \(2022-01-03 \.\. 2022-02-11\): a panel "
                                       r"needs >= 31 \(lookback 20 \+ label lag 1 \+ horizon 5 \+ 5 labelled days\)$"):
        ingest_ohlcv(_ohlcv(n_days=30), horizon=5, where="f.csv")
    with pytest.raises(CliError, match=r"1 day\(s\) with a price \(2022-01-03 \.\. 2022-01-03\): a panel needs >= 26"):
        ingest_ohlcv(_ohlcv(n_days=1), horizon=1, label_lag=0)      # a 1-day file would have no label at all
    with pytest.raises(CliError, match=r"^f\.csv: 1 symbol\(s\) with a price \(A\): a panel needs >= 2 \(a "
                                       r"cross-section to rank\)$"):
        ingest_ohlcv(_ohlcv(n_days=40, symbols=("A",)), horizon=5, where="f.csv")
    # with the file's other problems, in the one line; a symbol the repairs leave without rows counts too
    dup = _ohlcv(n_days=10, symbols=("A",))
    with pytest.raises(CliError, match=r"3 problems: 1 duplicate .*; 1 symbol\(s\) .*; 10 day\(s\)"):
        ingest_ohlcv(pd.concat([dup, dup.iloc[[0]]]), horizon=5)
    gone = _ohlcv(n_days=40)
    gone.loc[gone["symbol"] != "A", "volume"] = 1.0
    gone.loc[gone["symbol"] == "B", "factor"] = 0.0                  # unusable factor: every B row goes
    gone["factor"] = gone["factor"].fillna(1.0)
    gone = gone[gone["symbol"] != "C"]
    with pytest.raises(CliError, match=r"after the repairs: 1 symbol\(s\) with a price \(A\)"):
        ingest_ohlcv(gone, horizon=5)
    small, _ = ingest_ohlcv(_ohlcv(n_days=12), horizon=5, min_days=12)  # an explicit, smaller bound
    assert small["date"].nunique() == 12


@pytest.mark.parametrize("kwargs, match", [
    ({"max_gap_days": 0}, "--max-gap-days must be an integer >= 1"),
    ({"date_format": "Ymd"}, "--date-format must be a strftime format"),
    ({"min_days": 0}, "--min-days must be an integer >= 1"),
    ({"extra_features": ("pe", " ")}, "--extra-features must be column names"),
])
def test_bad_new_settings_name_the_flag(kwargs, match):
    with pytest.raises(CliError, match=match):
        ingest_ohlcv(_ohlcv(), horizon=3, **kwargs)


def test_own_features_added_to_a_panel_file_afterwards(tmp_path):
    """docs/data.md, "Your own features": the recipe for a panel that is ingested already."""
    from crnn_ray.data import load_panel, save_panel
    from crnn_ray.data.panel import read_panel_meta

    df, meta = ingest_ohlcv(_ohlcv(n_days=40), horizon=3)
    save_panel(df, tmp_path / "real.parquet", meta)
    mine = _ohlcv(n_days=40)[["date", "symbol"]].assign(my_signal=np.arange(120.0))   # data <= t, yours
    panel = pd.read_parquet(tmp_path / "real.parquet").assign(date=lambda d: pd.to_datetime(d["date"]))
    meta = read_panel_meta(tmp_path / "real.parquet")
    panel = panel.merge(mine, on=["date", "symbol"], how="left")
    meta["features"].append("my_signal")
    save_panel(panel, tmp_path / "real_plus.parquet", meta)
    p = load_panel(tmp_path / "real_plus.parquet")
    assert p.features[-1] == "my_signal" and p.X.shape == (40, 3, 9)
    np.testing.assert_array_equal(p.X[:, :, -1], np.arange(120.0).reshape(3, 40).T)


def test_a_group_column_is_carried_as_text_for_neutral_returns():
    dates = pd.bdate_range("2022-01-03", periods=12)
    rows = [(d, s, 10.0 + i + k, 100.0, "tech" if s in "AB" else "energy")
            for k, s in enumerate("ABC") for i, d in enumerate(dates)]
    df = pd.DataFrame(rows, columns=["date", "symbol", "close", "volume", "Sector"])
    out, meta = ingest_ohlcv(df, horizon=3, min_days=1, group="sector")
    assert meta["group_column"] == "group" and "group" not in meta["features"]
    assert out.groupby("symbol")["group"].first().to_dict() == {"A": "tech", "B": "tech", "C": "energy"}
    assert "group_column" not in ingest_ohlcv(df, horizon=3, min_days=1)[1]
    with pytest.raises(CliError, match="missing column 'industry' \\(group\\)"):
        ingest_ohlcv(df, horizon=3, min_days=1, group="industry")
    with pytest.raises(CliError, match="is an OHLCV / key column"):
        ingest_ohlcv(df, horizon=3, min_days=1, group="close")
