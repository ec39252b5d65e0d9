"""The one-pass normalisation and the normalised panel: the same values as the np.nanmedian definition on every
awkward cross-section, any chunking, any window of days; storage dtypes; fingerprints taken from the raw data;
and load_panel reading a Parquet file column by column, never as a pandas frame."""

from __future__ import annotations

import hashlib
import json

import numpy as np
import pandas as pd
import pyarrow as pa
import pyarrow.parquet as pq
import pytest
import torch

from conftest import synth_file
from crnn_ray.data import (NormalisedPanel, load_panel, make_splits, normalise_panel, normalize_features, save_panel,
                           walk_forward_splits)
from crnn_ray.data import panel as panel_module
from crnn_ray.data.panel import normalize_features_nanmedian, seen_data_fingerprint, seen_span
from crnn_ray.io import CliError


def awkward(S: int, seed: int = 0, D: int = 12, F: int = 4) -> tuple[np.ndarray, np.ndarray]:
    """A cube with every case the definition has a rule for: NaN values and absent rows, an all-invalid day,
    a day with one valid stock, ties, a constant column, MAD 0 with a spread (-> standard deviation), inf."""
    rng = np.random.default_rng(seed)
    X = (rng.standard_t(3, (D, S, F)) * 3 + 1).astype(np.float32)
    X[rng.random((D, S, F)) < 0.1] = np.nan
    mask = rng.random((D, S)) > 0.2
    X[2] = np.nan                                                        # no valid stock at all
    mask[3] = False
    mask[3, 0] = True                                                    # one valid stock: MAD 0 and std 0
    X[4, :, 1] = np.round(X[4, :, 1])                                    # ties
    X[5, :, 2] = 7.0                                                     # constant
    X[6, :, 0] = np.where(rng.random(S) < 0.7, 0.0, X[6, :, 0])          # MAD 0, std > 0
    X[7, :3, 3] = np.inf                                                 # non-finite values on present rows
    return X, mask


@pytest.mark.parametrize("S", [1, 2, 7, 599, 600, 601, 1500])  # numpy's nanmedian changes method at 600
def test_the_same_values_as_the_nanmedian_definition(S):
    X, mask = awkward(S, seed=S)
    for clip in (5.0, 3.0, 0.25):
        fast, slow = normalize_features(X, mask, clip=clip), normalize_features_nanmedian(X, mask, clip=clip)
        assert fast.dtype == np.float32 and np.isfinite(fast).all()
        np.testing.assert_array_equal(fast, slow)
    # float64 input is read as float32, as before
    np.testing.assert_array_equal(normalize_features(X.astype(np.float64), mask),
                                  normalize_features_nanmedian(X.astype(np.float64), mask))


def test_the_std_fallback_is_exercised_and_bounded():
    X, mask = awkward(300)
    Z = normalize_features(X, mask, clip=5.0)
    day6 = Z[6, mask[6], 0]
    assert np.count_nonzero(day6) > 0 and np.abs(day6).max() <= 5.0   # MAD 0 but spread: scaled by std, not 0
    assert (Z[5, :, 2] == 0).all() and (Z[2] == 0).all() and (Z[3] == 0).all()
    assert (Z[~mask] == 0).all()


def test_chunks_and_windows_change_nothing(monkeypatch):
    X, mask = awkward(50, D=30)
    whole = normalize_features(X, mask)
    monkeypatch.setattr(panel_module, "NORM_CHUNK_BYTES", 50 * 4 * 4 * 3)  # 3 days per chunk: 10 chunks
    np.testing.assert_array_equal(normalize_features(X, mask), whole)
    # per-date: a window of days normalised alone gives the whole cube's values there
    np.testing.assert_array_equal(normalize_features(X[9:23], mask[9:23]), whole[9:23])


def test_storage_dtypes_round_the_float32_values():
    X, mask = awkward(200)
    z32 = normalize_features(X, mask)
    np.testing.assert_array_equal(normalize_features(X, mask, dtype="float16"), z32.astype(np.float16))
    bits = normalize_features(X, mask, dtype="bfloat16")
    assert bits.dtype == np.uint16
    expected = torch.from_numpy(z32).to(torch.bfloat16).view(torch.int16).numpy().view(np.uint16)
    np.testing.assert_array_equal(bits, expected)
    with pytest.raises(CliError, match="x_dtype 'int8'"):
        normalize_features(X, mask, dtype="int8")


@pytest.fixture(scope="module")
def synth_panel(tmp_path_factory):
    return synth_file(tmp_path_factory.mktemp("norm"), 60, 260, 1)


def test_normalise_panel_keeps_what_training_needs_and_fingerprints_each_window(synth_panel):
    p = load_panel(synth_panel[0])
    windows = walk_forward_splits(p.dates, {"train": 80, "valid": 30, "select": 0.5, "step": 20, "windows": "all"}, p.horizon("y5"))
    assert len(windows) >= 3
    n = normalise_panel(p, clip=4.0, x_dtype="float16", windows=windows, labels=["y5"])
    assert isinstance(n, NormalisedPanel) and not hasattr(n, "X")       # the raw features stay behind
    np.testing.assert_array_equal(n.Z, normalize_features(p.X, p.mask, clip=4.0, dtype="float16"))
    assert (n.clip, n.x_dtype, n.features, n.n_days, n.n_stocks) == (4.0, "float16", p.features, p.n_days, p.n_stocks)
    assert n.label("y5") is p.label("y5") and n.horizon("y5") == 5 and n.returns() is p.returns()
    for w in windows:
        first, last = seen_span(w, p.dates)
        assert n.fingerprint(first, last, "y5") == seen_data_fingerprint(p, first, last, p.features, "y5")
    assert len({n.fingerprint(*seen_span(w, p.dates), "y5") for w in windows}) == len(windows)
    with pytest.raises(CliError, match="no fingerprint"):
        n.fingerprint(*seen_span(windows[0], p.dates), "y1")
    one = make_splits(p.dates, {"fractions": [0.6, 0.2, 0.2]}, 5)
    with pytest.raises(CliError, match="no fingerprint"):
        n.fingerprint(*seen_span(one, p.dates), "y5")


def test_load_panel_reads_parquet_by_column_without_pandas(synth_panel, monkeypatch):
    path, df, meta = synth_panel
    expected = load_panel(path, features=["char_a", "ret1"], labels=["y5"], aux=[])
    read: list[list[str]] = []
    real_read = pq.ParquetFile.read

    def spy(self, columns=None, **kw):
        read.append(list(columns or []))
        return real_read(self, columns=columns, **kw)

    class NoPandas:
        def __getattr__(self, name):
            raise AssertionError(f"pandas.{name} used on a clean Parquet panel")

    def whole_table(*a, **k):
        raise AssertionError("the whole table read at once")

    monkeypatch.setattr(pq.ParquetFile, "read", spy)
    monkeypatch.setattr(pq, "read_table", whole_table)
    monkeypatch.setattr(panel_module, "pd", NoPandas())
    got = load_panel(path, features=["char_a", "ret1"], labels=["y5"], aux=[])
    assert all(len(cols) == 1 for cols in read), read                    # one column at a time
    assert sorted(c[0] for c in read) == sorted(["date", "symbol", "char_a", "ret1", "y5", meta["returns"]]), read
    for name in ("X", "mask", "dates", "symbols"):
        np.testing.assert_array_equal(getattr(got, name), getattr(expected, name))
    np.testing.assert_array_equal(got.labels["y5"], expected.labels["y5"])


def test_parquet_and_csv_of_one_table_load_the_same(tmp_path):
    """Integer symbols, text dates, an integer feature, a bool and a float aux column, nulls: Parquet's own
    reader and the CSV path (pandas, as before) give the same panel."""
    rng = np.random.default_rng(3)
    days = pd.date_range("2021-01-04", periods=40, freq="B")
    rows = pd.DataFrame([(d, s) for d in days for s in (600000, 11, 300750, 2) if rng.random() > 0.15],
                        columns=["date", "symbol"])
    n = len(rows)
    rows["date"] = rows["date"].dt.strftime("%Y-%m-%d")
    rows["f_int"] = rng.integers(-3, 4, n)
    rows["f_float"] = np.where(rng.random(n) < 0.1, np.nan, rng.normal(size=n))
    rows["y1"] = rng.normal(size=n)
    rows["flag"] = rng.random(n) < 0.5
    rows["level"] = rng.random(n)
    meta = {"features": ["f_int", "f_float"], "labels": ["y1"], "aux_columns": ["flag", "level"]}
    pq.write_table(pa.Table.from_pandas(rows, preserve_index=False).replace_schema_metadata(
        {"crnn_ray": json.dumps(meta)}), tmp_path / "p.parquet")
    rows.to_csv(tmp_path / "p.csv", index=False)
    a = load_panel(tmp_path / "p.parquet")
    b = load_panel(tmp_path / "p.csv", features=meta["features"], labels=["y1"], aux=["flag", "level"])
    assert list(a.symbols) == ["11", "2", "300750", "600000"] == list(b.symbols)   # text order, as np.unique
    for name in ("X", "mask", "dates"):
        np.testing.assert_array_equal(getattr(a, name), getattr(b, name))
    np.testing.assert_array_equal(a.labels["y1"], b.labels["y1"])
    for name in ("flag", "level"):
        assert a.aux[name].dtype == b.aux[name].dtype
        np.testing.assert_array_equal(a.aux[name], b.aux[name])


def test_parquet_errors_stay_one_line(synth_panel, tmp_path):
    _, df, meta = synth_panel
    dup = pd.concat([df, df.iloc[[5]]])
    save_panel(dup, tmp_path / "dup.parquet", meta)
    with pytest.raises(CliError, match=r"1 duplicate \(date, symbol\) row\(s\), first: .*S0"):
        load_panel(tmp_path / "dup.parquet")
    bad = df.assign(char_a=df["char_a"].where(df.index != 7, np.inf))
    save_panel(bad, tmp_path / "inf.parquet", meta)
    with pytest.raises(CliError, match="'char_a' has 1 infinite"):
        load_panel(tmp_path / "inf.parquet")
    text = df.assign(ret1=df["ret1"].astype(str))
    save_panel(text, tmp_path / "text.parquet", meta)
    with pytest.raises(CliError, match="'ret1' is not numeric") as err:
        load_panel(tmp_path / "text.parquet")
    assert "\n" not in str(err.value)
    (tmp_path / "junk.parquet").write_bytes(b"not parquet")
    with pytest.raises(CliError, match="not a readable Parquet file"):
        load_panel(tmp_path / "junk.parquet")


def test_the_fingerprint_is_the_hash_of_the_seen_data_whatever_the_chunks(synth_panel, monkeypatch):
    """The streamed fingerprint hashes the same bytes as its definition (checkpoints written before it match)."""
    p = load_panel(synth_panel[0])
    first, last = str(p.dates[30]), str(p.dates[200])
    for features in (p.features, p.features[2:5], [p.features[4], p.features[0]]):
        lo, hi = 30, 201
        cols = [p.features.index(f) for f in features]
        values, target = p.X[lo:hi][:, :, cols], p.labels["y5"][lo:hi]
        present = np.isfinite(values).any(axis=(0, 2)) | np.isfinite(target).any(axis=0)
        digest = hashlib.blake2b(digest_size=8)
        digest.update(p.dates[lo:hi].astype("datetime64[D]").astype(np.int64).tobytes())
        digest.update("\x00".join(map(str, p.symbols[present])).encode())
        digest.update(np.ascontiguousarray(values[:, present], dtype=np.float32).tobytes())
        digest.update(np.ascontiguousarray(target[:, present], dtype=np.float32).tobytes())
        assert seen_data_fingerprint(p, first, last, features, "y5") == digest.hexdigest()
        monkeypatch.setattr(panel_module, "NORM_CHUNK_BYTES", p.n_stocks * 4 * 3)  # a few days per chunk
        assert seen_data_fingerprint(p, first, last, features, "y5") == digest.hexdigest()
        monkeypatch.undo()
