"""OHLCV ingest: real S&P 500 closes, no look-ahead (property), gaps / zero volume / jumps, bad input."""

import importlib.util
from pathlib import Path

import numpy as np
import pandas as pd
import pytest

from crnn_ray.data import ingest_ohlcv
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
    assert meta["horizons"] == {"y5": 5, "y1": 1} and meta["returns"] == "y1"
    assert meta["params"]["columns"]["close"] == "Adj Close"
    dates = np.sort(panel["date"].unique())
    enough_history = panel["date"] >= dates[20]
    assert panel.loc[enough_history, meta["features"]].notna().all().all()
    assert panel.loc[panel["date"] == dates[0], "ret1"].isna().all()
    # label NaN on the last H dates, finite elsewhere unless a flagged jump sits inside the window
    assert panel.loc[panel["date"] >= dates[-5], "y5"].isna().all()
    assert panel.loc[panel["date"] < dates[-5], "y5"].notna().mean() > 0.99
    assert panel["ret1"].abs().max() <= np.log(2) + 1e-6


def test_sp500_label_is_the_hand_computed_forward_return(sp500):
    wide, panel, _ = sp500
    rng = np.random.default_rng(0)
    checked = 0
    for _ in range(8):
        t = int(rng.integers(30, len(wide) - 6))
        tk = str(rng.choice([c for c in wide.columns if c != "Date"]))
        expected = wide[tk].iloc[t + 5] / wide[tk].iloc[t] - 1
        row = panel[(panel["date"] == pd.Timestamp(wide["Date"].iloc[t])) & (panel["symbol"] == tk)]
        if row["y5"].notna().all():
            assert row["y5"].iloc[0] == pytest.approx(expected, rel=1e-4, abs=1e-6)
            checked += 1
        ret1 = np.log(wide[tk].iloc[t] / wide[tk].iloc[t - 1])
        assert row["ret1"].iloc[0] == pytest.approx(np.clip(ret1, -np.log(2), np.log(2)), abs=1e-5)
    assert checked >= 6


@pytest.mark.parametrize("seed", [0, 1])
def test_no_look_ahead_property(seed):
    df = _random_ohlcv(seed)
    base, meta = ingest_ohlcv(df, horizon=3)
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
        new, _ = ingest_ohlcv(changed, horizon=3)
        a = base[base["date"] <= cut].reset_index(drop=True)
        b = new[new["date"] <= cut].reset_index(drop=True)
        pd.testing.assert_frame_equal(a[["date", "symbol"] + FEATURES_OHLCV], b[["date", "symbol"] + FEATURES_OHLCV])
        # labels that end at or before t are unchanged too; the ones that reach past t moved
        settled = a["date"] <= dates[t - 3]
        np.testing.assert_array_equal(a.loc[settled, "y3"].to_numpy(), b.loc[settled, "y3"].to_numpy())
        assert not np.allclose(a.loc[a["date"] == cut, "y3"].fillna(0), b.loc[b["date"] == cut, "y3"].fillna(0))


def _small(rows):
    return pd.DataFrame(rows, columns=["date", "symbol", "close", "volume"])


def test_gap_zero_volume_and_label_rules():
    dates = pd.bdate_range("2022-01-03", periods=10)
    rows = [(d, "A", 10.0 + i, 100.0) for i, d in enumerate(dates) if i != 4]  # A halted on day 4 (no row)
    rows += [(d, "B", 20.0, 0.0 if i == 2 else 50.0) for i, d in enumerate(dates)]  # B: zero volume on day 2
    out, meta = ingest_ohlcv(_small(rows), horizon=2)
    a = out[out["symbol"] == "A"].set_index("date")
    # after the halt, ret1 is measured from the last available close
    assert a.loc[dates[5], "ret1"] == pytest.approx(np.log(15.0 / 13.0), rel=1e-6)
    # label at t needs the close at t+H: day 2 -> day 4 missing -> NaN; day 3 -> day 5 ok
    assert np.isnan(a.loc[dates[2], "y2"]) and a.loc[dates[3], "y2"] == pytest.approx(15.0 / 13.0 - 1, rel=1e-6)
    b = out[out["symbol"] == "B"].set_index("date")
    assert b.loc[dates[2], ["ret1", "volume_rel"]].isna().all() and np.isnan(b.loc[dates[0], "y2"])
    assert meta["params"]["n_zero_volume_rows"] == 1


def test_suspicious_jump_is_flagged_clipped_and_drops_labels_over_it():
    dates = pd.bdate_range("2022-01-03", periods=12)
    px = [10.0] * 6 + [40.0] * 6  # a 4x jump on day 6 (a missed split, say)
    rows = [(d, "A", p, 100.0) for d, p in zip(dates, px)] + [(d, "B", 10.0, 100.0) for d in dates]
    out, meta = ingest_ohlcv(_small(rows), horizon=3, max_jump=1.0)
    a = out[out["symbol"] == "A"].set_index("date")
    assert a["suspect_jump"].sum() == 1 and a.loc[dates[6], "suspect_jump"]
    assert a.loc[dates[6], "ret1"] == pytest.approx(np.log(2.0), rel=1e-6)
    assert a.loc[dates[3:6], "y3"].isna().all() and a.loc[dates[2], "y3"] == pytest.approx(0.0)
    assert meta["params"]["n_suspect_jumps"] == 1
    loose, _ = ingest_ohlcv(_small(rows), horizon=3, max_jump=5.0)
    assert not loose["suspect_jump"].any()


def test_column_names_case_insensitive_and_explicit():
    df = _random_ohlcv(3, n_days=30).rename(columns={"Date": "DAY", "Ticker": "Sym", "Close": "ADJ CLOSE"})
    out, meta = ingest_ohlcv(df, horizon=5, symbol_col="sym")
    assert meta["params"]["columns"]["date"] == "DAY" and meta["params"]["columns"]["close"] == "ADJ CLOSE"
    assert set(out["symbol"]) == {f"T{i}" for i in range(6)}


@pytest.mark.parametrize("mutate, match", [
    (lambda df: pd.concat([df, df.iloc[[0, 1]]]), r"2 duplicate \(date, symbol\) row\(s\), first: \(20"),
    (lambda df: df.drop(columns=["Close"]), "missing column 'close'"),
    (lambda df: df.assign(Close=df["Close"].astype(object).where(df.index != 5, "n/a?")), "'Close' is not numeric"),
    (lambda df: df.assign(Close=df["Close"].where(df.index != 5, np.inf)), "'Close' has 1 infinite"),
    (lambda df: df.assign(Close=df["Close"].where(df.index != 5, -1.0)), "'Close' has 1 non-positive"),
    (lambda df: df.assign(Date=df["Date"].astype(str).where(df.index != 5, "yesterday")), "unparsable date 'yesterday'"),
    (lambda df: df.assign(Volume=df["Volume"].where(df.index != 5, -3.0)), "'Volume' has 1 negative"),
])
def test_bad_input_one_line_errors(mutate, match):
    with pytest.raises(CliError, match=match) as err:
        ingest_ohlcv(mutate(_random_ohlcv(4, n_days=20)), horizon=5)
    assert "\n" not in str(err.value)


def test_one_day_forward_return_column_follows_the_label_rules():
    """y1 = close_{t+1} / close_t - 1 on the panel calendar: NaN over a halt and over a suspicious jump."""
    dates = pd.bdate_range("2022-01-03", periods=12)
    px = [10.0, 11.0, 12.1, 11.0, 11.0, 11.5, 46.0, 46.0, 47.0, 48.0, 49.0, 50.0]  # a 4x jump on day 6
    rows = [(d, "A", p, 100.0) for i, (d, p) in enumerate(zip(dates, px)) if i != 3]  # A halted on day 3
    rows += [(d, "B", 10.0 + i, 100.0) for i, d in enumerate(dates)]
    out, meta = ingest_ohlcv(_small(rows), horizon=3)
    assert meta["labels"] == ["y3", "y1"] and meta["returns"] == "y1" and meta["horizons"]["y1"] == 1
    a = out[out["symbol"] == "A"].set_index("date")
    assert a.loc[dates[0], "y1"] == pytest.approx(0.1, rel=1e-6)
    assert np.isnan(a.loc[dates[2], "y1"])  # day 3 has no close
    assert np.isnan(a.loc[dates[5], "y1"])  # the jump on day 6 is suspect
    assert a.loc[dates[7], "y1"] == pytest.approx(47.0 / 46.0 - 1, rel=1e-6) and np.isnan(a.loc[dates[11], "y1"])
    b = out[out["symbol"] == "B"].set_index("date")
    np.testing.assert_allclose(b["y1"].iloc[:-1], (11.0 + np.arange(11)) / (10.0 + np.arange(11)) - 1, rtol=1e-6)
    # a 1-day label is the returns column itself (no second column)
    one, meta1 = ingest_ohlcv(_small(rows), horizon=1)
    assert meta1["labels"] == ["y1"] and meta1["returns"] == "y1" and list(one.columns).count("y1") == 1
    np.testing.assert_array_equal(one["y1"].to_numpy(), out["y1"].to_numpy())
