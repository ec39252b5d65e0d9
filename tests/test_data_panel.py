"""Panel contract: load/save round trip, windows, sample indices, normalisation, label ranks, bad files."""

import numpy as np
import pandas as pd
import pytest
import torch
from scipy.stats import rankdata

from conftest import synth_file
from crnn_ray.data import (gather_windows, load_panel, normalize_features, rank_label, sample_index, save_panel)
from crnn_ray.io import CliError


@pytest.fixture(scope="module")
def panel_file(tmp_path_factory):
    return synth_file(tmp_path_factory.mktemp("panel"), 40, 120, 3)


def test_round_trip_scatters_every_row(panel_file):
    path, df, meta = panel_file
    p = load_panel(path)
    assert p.X.dtype == np.float32 and p.X.shape == (df["date"].nunique(), df["symbol"].nunique(), 8)
    assert p.features == meta["features"] and list(p.labels) == ["y5", "y1"]
    assert np.all(np.diff(p.dates.astype("int64")) > 0)
    assert p.meta["oracle_ic"] == meta["oracle_ic"] and p.meta["path"].endswith("panel.parquet")
    assert p.horizon("y5") == 5
    # every long row lands at its (date, symbol) cell
    di = np.searchsorted(p.dates, df["date"].to_numpy().astype("datetime64[D]"))
    si = np.searchsorted(p.symbols.astype(str), df["symbol"].to_numpy().astype(str))
    np.testing.assert_array_equal(p.X[di, si], df[meta["features"]].to_numpy(np.float32))
    np.testing.assert_array_equal(p.labels["y5"][di, si], df["y5"].to_numpy(np.float32))
    # absent cells are NaN and masked out; mask == all features finite
    present = np.zeros(p.mask.shape, bool)
    present[di, si] = True
    assert (~present).any() and np.isnan(p.X[~present]).all()
    np.testing.assert_array_equal(p.mask, np.isfinite(p.X).all(axis=2))
    with pytest.raises(CliError, match="y9"):
        p.label("y9")


def test_feature_and_label_selection(panel_file):
    path, _, _ = panel_file
    p = load_panel(path, features=["char_a", "ret1"], labels=["y5", "oracle_y5"])
    assert p.X.shape[2] == 2 and p.features == ["char_a", "ret1"] and set(p.labels) == {"y5", "oracle_y5"}
    with pytest.raises(CliError, match="'nope'"):
        load_panel(path, features=["nope"])


def test_csv_without_metadata_infers_columns(panel_file, tmp_path):
    _, df, meta = panel_file
    csv = tmp_path / "p.csv"
    df.drop(columns=["oracle_y5"]).to_csv(csv, index=False)
    p = load_panel(csv)
    assert p.features == meta["features"] and list(p.labels) == ["y5", "y1"] and p.horizon("y5") == 5
    assert p.horizon("y1") == 1 and p.returns() is p.labels["y1"]


def test_windows_equal_naive_slices_numpy_and_torch(panel_file):
    p = load_panel(panel_file[0])
    L = 7
    idx = sample_index(p.mask, p.labels["y5"], L, 0, p.n_days - 1)
    rng = np.random.default_rng(0)
    pick = idx[rng.choice(len(idx), 50, replace=False)]
    w = gather_windows(p.X, pick[:, 0], pick[:, 1], L)
    assert w.shape == (50, L, 8)
    for n, (d, s) in enumerate(pick):
        np.testing.assert_array_equal(w[n], p.X[d - L + 1:d + 1, s])
    wt = gather_windows(torch.from_numpy(p.X), torch.from_numpy(pick[:, 0]), torch.from_numpy(pick[:, 1]), L)
    assert isinstance(wt, torch.Tensor)
    np.testing.assert_array_equal(wt.numpy(), w)
    with pytest.raises(ValueError, match="lookback"):
        gather_windows(p.X, np.array([L - 2]), np.array([0]), L)


def test_sample_index_matches_naive_rule(panel_file):
    p = load_panel(panel_file[0])
    y = p.labels["y5"]
    L, lo, hi = 10, 3, 80
    idx = sample_index(p.mask, y, L, lo, hi)
    expected = [(d, s) for d in range(max(lo, L - 1), hi + 1) for s in range(p.n_stocks)
                if p.mask[d, s] and np.isfinite(y[d, s])]
    assert idx.dtype == np.int64 and idx.shape[1] == 2
    assert [tuple(r) for r in idx.tolist()] == expected
    assert sample_index(p.mask, y, L, 50, 40).shape == (0, 2)


def test_normalize_features_properties():
    rng = np.random.default_rng(1)
    D, S, F = 6, 200, 3
    X = rng.standard_t(3, (D, S, F)).astype(np.float32) * 4 + 10
    mask = rng.random((D, S)) > 0.1
    X[~mask] = np.nan
    X[2, 5, 1] = np.nan  # one missing value on a present row
    mask[2, 5] = False
    Z = normalize_features(X, mask, clip=3.0)
    assert Z.dtype == np.float32 and np.isfinite(Z).all()
    assert (Z[~mask] == 0).all() and np.abs(Z).max() <= 3.0
    for d in range(D):
        for f in range(F):
            x = X[d, mask[d], f].astype(np.float64)
            med = np.median(x)
            mad = np.median(np.abs(x - med)) * 1.4826
            np.testing.assert_allclose(Z[d, mask[d], f], np.clip((x - med) / mad, -3, 3), rtol=1e-4, atol=1e-5)
    # invariant to a per-date affine change of scale and location
    a = rng.uniform(0.5, 3, (D, 1, F)).astype(np.float32)
    b = rng.normal(0, 5, (D, 1, F)).astype(np.float32)
    np.testing.assert_allclose(normalize_features(X * a + b, mask, clip=3.0), Z, atol=2e-4)
    # a constant cross-section carries no information: all zero, never NaN
    Xc = np.ones((2, 10, 1), np.float32)
    assert (normalize_features(Xc, np.ones((2, 10), bool)) == 0).all()


def test_rank_label_properties():
    rng = np.random.default_rng(2)
    y = rng.normal(size=(5, 30))
    y[y > 1.5] = np.nan
    y[1, :4] = 0.25  # ties
    r = rank_label(y)
    np.testing.assert_array_equal(np.isnan(r), np.isnan(y))
    for d in range(5):
        ok = np.isfinite(y[d])
        ref = (rankdata(y[d, ok]) - 1) / (ok.sum() - 1) - 0.5
        np.testing.assert_allclose(r[d, ok], ref, atol=1e-6)
        assert r[d, ok].min() == -0.5 and r[d, ok].max() == 0.5
    assert len(set(r[1, :4].tolist())) == 1


@pytest.mark.parametrize("mutate, match", [
    (lambda df: df.drop(columns=["ret1"]), "missing feature column 'ret1'"),
    (lambda df: pd.concat([df, df.iloc[[3]]]), "duplicate .*S00"),
    (lambda df: df.assign(char_a=df["char_a"].where(df.index != 7, np.inf)), "'char_a' has 1 infinite"),
    (lambda df: df.assign(date=df["date"].astype(str).where(df.index != 4, "2019-13-45")), "unparsable date"),
    (lambda df: df.assign(ret1=df["ret1"].astype(str).where(df.index != 2, "abc")), "'ret1' is not numeric"),
    (lambda df: df.drop(columns=["symbol"]), "missing column 'symbol'"),
])
def test_bad_files_one_line_error(panel_file, tmp_path, mutate, match):
    _, df, meta = panel_file
    bad = mutate(df.copy())
    path = tmp_path / "bad.csv"
    bad.to_csv(path, index=False)
    with pytest.raises(CliError, match=match) as err:
        load_panel(path, features=meta["features"])
    assert "\n" not in str(err.value) and "bad.csv" in str(err.value)


def test_missing_file():
    with pytest.raises(CliError, match="no such file"):
        load_panel("/nonexistent/panel.parquet")


def test_returns_are_loaded_whatever_labels_were_selected(panel_file, tmp_path):
    path, df, meta = panel_file
    p = load_panel(path, labels=["y5"])
    assert list(p.labels) == ["y5"] and p.returns() is not None
    full = load_panel(path)
    np.testing.assert_array_equal(p.returns(), full.labels["y1"])
    # returns[d, s] is close_{d+1} / close_d - 1 where both closes are on the panel's consecutive days
    close = np.full(p.returns().shape, np.nan)
    di = np.searchsorted(p.dates, df["date"].to_numpy().astype("datetime64[D]"))
    si = np.searchsorted(p.symbols.astype(str), df["symbol"].to_numpy().astype(str))
    close[di, si] = df["close"].to_numpy()
    expected = close[1:] / close[:-1] - 1
    ok = np.isfinite(expected) & np.isfinite(p.returns()[:-1])
    assert ok.mean() > 0.9
    np.testing.assert_allclose(p.returns()[:-1][ok], expected[ok], rtol=1e-5)
    assert np.isnan(p.returns()[-1]).all()  # the last day's next close is unknown
    # a panel without a returns column has none
    old = tmp_path / "old.parquet"
    save_panel(df.drop(columns=["y1"]), old, {**meta, "labels": ["y5"], "horizons": {"y5": 5},
                                               "returns": None})
    assert load_panel(old).returns() is None
