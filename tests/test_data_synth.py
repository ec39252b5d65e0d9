"""Synthetic market: reproducible, realistic shape, oracle IC true to the data, planted signal nonlinear."""

import numpy as np
import pandas as pd
import pytest
from scipy.stats import pearsonr

from crnn_ray import defaults
from crnn_ray.data import ingest_ohlcv, load_panel, normalize_features, save_panel, synthesize


@pytest.fixture(scope="module")
def market():
    return synthesize(150, 300, seed=7)


def test_same_seed_same_data_other_seed_differs():
    a, ma = synthesize(30, 80, seed=11)
    b, mb = synthesize(30, 80, seed=11)
    c, _ = synthesize(30, 80, seed=12)
    pd.testing.assert_frame_equal(a, b)
    assert ma == mb
    assert not np.allclose(a["close"].to_numpy()[:100], c["close"].to_numpy()[:100])


def test_columns_and_ohlc_consistency(market):
    df, meta = market
    # the main label, then the 1-day forward return every panel carries
    assert len(meta["features"]) == defaults.N_FEATURES and meta["labels"] == [defaults.LABEL, "y1"]
    assert meta["horizons"] == {"y5": 5, "y1": 1} and meta["source"] == "synth" and meta["returns"] == "y1"
    for col in ["date", "symbol", *meta["features"], "y5", "y1", "open", "high", "low", "close", "volume"]:
        assert col in df.columns
    assert (df["high"] >= np.maximum(df["open"], df["close"])).all()
    assert (df["low"] <= np.minimum(df["open"], df["close"])).all()
    assert (df["volume"] > 0).all() and (df["close"] > 0).all()


def test_listing_delisting_and_halts(market):
    df, _ = market
    first, last = df["date"].min(), df["date"].max()
    span = df.groupby("symbol")["date"].agg(["min", "max", "count"])
    assert (span["min"] > first).any(), "some stocks list after the start"
    assert (span["max"] < last).any(), "some stocks delist before the end"
    all_dates = np.sort(df["date"].unique())
    pos = {d: i for i, d in enumerate(all_dates)}
    lived = span["max"].map(pos) - span["min"].map(pos) + 1
    assert (lived > span["count"]).any(), "some stocks have halted (missing) days inside their life"


def test_volatility_clusters(market):
    df, _ = market
    wide = df.pivot(index="date", columns="symbol", values="ret1").to_numpy()
    sq = wide ** 2
    a, b = sq[1:], sq[:-1]
    ok = np.isfinite(a) & np.isfinite(b)
    assert np.corrcoef(a[ok], b[ok])[0, 1] > 0.03


def test_stored_oracle_ic_equals_independent_recomputation(market, tmp_path):
    df, meta = market
    path = tmp_path / "m.parquet"
    save_panel(df, path, meta)
    stored = load_panel(path).meta["oracle_ic"]["y5"]
    ok = df[meta["features"]].notna().all(axis=1) & df["y5"].notna()
    ics = [pearsonr(g["oracle_y5"], g["y5"])[0] for _, g in df[ok].groupby("date") if len(g) >= 10]
    assert stored == pytest.approx(float(np.mean(ics)), abs=1e-4)
    assert 0.08 < stored < 0.3


def test_features_are_the_ingest_features_of_its_ohlcv(market):
    df, meta = market
    raw = df[["date", "symbol", "open", "high", "low", "close", "volume"]]
    ing, _ = ingest_ohlcv(raw, horizon=5, label_lag=0)  # synth labels start at close t
    merged = df.merge(ing, on=["date", "symbol"], suffixes=("", "_ing"))
    late = merged["date"] > np.sort(df["date"].unique())[25]  # past the rolling warm-up of the ingest run
    for col in ["ret1", "open_gap", "high_rel", "low_rel", "volume_rel", "y5"]:
        np.testing.assert_allclose(merged.loc[late, col], merged.loc[late, f"{col}_ing"], rtol=1e-5, atol=1e-6)


def _r2(target, cols):
    A = np.column_stack(cols + [np.ones(len(target))])
    coef, *_ = np.linalg.lstsq(A, target, rcond=None)
    return 1 - (target - A @ coef).var() / target.var()


def test_planted_signal_is_nonlinear_in_features_over_a_window(market, tmp_path):
    df, meta = market
    path = tmp_path / "m.parquet"
    save_panel(df, path, meta)
    p = load_panel(path, labels=["oracle_y5"])
    Z = normalize_features(p.X, p.mask)
    o = p.labels["oracle_y5"]
    ok = p.mask & np.isfinite(o)
    ok[:30] = False
    a, b, c = (Z[..., p.features.index(n)] for n in ("char_a", "char_b", "char_c"))
    c_lag = np.vstack([np.zeros((10, c.shape[1])), c[:-10]])
    today = [Z[..., i][ok] for i in range(Z.shape[2])]
    r2_linear = _r2(o[ok], today)
    r2_window = _r2(o[ok], today + [(a * b)[ok], np.tanh(3 * (c - c_lag))[ok]])
    assert r2_linear < 0.3 < r2_window


def test_returns_column_is_the_one_day_forward_return(market):
    df, meta = market
    assert meta["returns"] == "y1" and meta["labels"] == ["y5", "y1"]
    raw = df[["date", "symbol", "open", "high", "low", "close", "volume"]]
    ing, _ = ingest_ohlcv(raw, horizon=5, label_lag=0)  # synth labels start at close t
    merged = df.merge(ing, on=["date", "symbol"], suffixes=("", "_ing"))
    np.testing.assert_array_equal(np.isnan(merged["y1"]), np.isnan(merged["y1_ing"]))
    np.testing.assert_allclose(merged["y1"], merged["y1_ing"], rtol=1e-5, atol=1e-7)
    # compounding the 1-day returns over 5 days gives the 5-day label where all are known
    wide1 = df.pivot(index="date", columns="symbol", values="y1").to_numpy()
    wide5 = df.pivot(index="date", columns="symbol", values="y5").to_numpy()
    comp = np.prod(np.stack([1 + wide1[k:len(wide1) - 4 + k] for k in range(5)]), axis=0) - 1
    ok = np.isfinite(comp) & np.isfinite(wide5[:-4])
    assert ok.mean() > 0.8
    np.testing.assert_allclose(comp[ok], wide5[:-4][ok], rtol=2e-4, atol=1e-6)


def test_easy_preset_is_the_default_market_and_horizon_one_has_one_label():
    a, ma = synthesize(30, 80, seed=4)
    b, mb = synthesize(30, 80, seed=4, preset="easy")
    pd.testing.assert_frame_equal(a, b)
    assert ma == mb and ma["params"]["preset"] == "easy"
    one, m1 = synthesize(30, 80, seed=4, horizon=1)
    assert m1["labels"] == ["y1"] and m1["returns"] == "y1" and list(one.columns).count("y1") == 1
    with pytest.raises(Exception, match="preset"):
        synthesize(30, 80, preset="hard")


def test_realistic_preset_is_harder_fat_tailed_and_more_sector_correlated():
    from scipy.stats import kurtosis

    easy, me = synthesize(150, 300, seed=7)
    real, mr = synthesize(150, 300, seed=7, preset="realistic")
    assert mr["params"]["preset"] == "realistic" and mr["params"]["idio_dof"] == 4
    assert 0.015 < mr["oracle_ic"]["y5"] < 0.07 and me["oracle_ic"]["y5"] > 0.1
    assert list(real.columns) == list(easy.columns) and mr["features"] == me["features"]

    def residual(df):
        w = df.pivot(index="date", columns="symbol", values="y1").to_numpy()[:-1]  # the last day has no y1
        return w - np.nanmean(w, axis=1, keepdims=True)

    r_easy, r_real = residual(easy), residual(real)
    assert kurtosis(r_real[np.isfinite(r_real)]) > 3 * kurtosis(r_easy[np.isfinite(r_easy)])
    # same idiosyncratic vol scale (the t shocks are scaled to unit variance)
    assert 0.8 < np.nanstd(r_real) / np.nanstd(r_easy) < 1.3

    def high_pair_corr(df, top=0.97):  # ~1 pair in 10 shares a sector: the top few percent are those pairs
        c = pd.DataFrame(residual(df)).corr(min_periods=100).to_numpy()
        return np.nanquantile(c[np.triu_indices_from(c, 1)], top)

    assert high_pair_corr(real) > 1.5 * high_pair_corr(easy)  # same-sector pairs move together more
