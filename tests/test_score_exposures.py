"""The scorer's exposures for neutral returns: a trailing beta from the panel's whole history and the panel's
group column, on a record's own dates and symbols (a subset, in any order the record keeps)."""

from __future__ import annotations

from types import SimpleNamespace

import numpy as np
import pandas as pd

from crnn_ray.data import load_panel, save_panel, synthesize
from crnn_ray.metrics import trailing_beta
from crnn_ray.score.exposures import exposure_grids


def test_exposures_come_from_the_whole_panel_and_land_on_the_record_grid(tmp_path):
    df, meta = synthesize(40, 150, seed=5)
    path = tmp_path / "panel.parquet"
    save_panel(df, path, meta)
    panel = load_panel(path)
    rows, names = np.arange(100, 150), np.array([3, 7, 11, 30])
    rec = SimpleNamespace(panel_path=path, panel_meta=panel.meta, dates=panel.dates[rows],
                          symbols=panel.symbols[names], label_lag=0)
    ex = exposure_grids(rec)
    # the beta of the record's first day uses the 60 days before it, which the record does not hold
    want = trailing_beta(panel.returns(), lag=0)[rows][:, names]
    np.testing.assert_allclose(ex["beta"], want, rtol=1e-12, equal_nan=True)
    assert np.isfinite(ex["beta"][0]).sum() >= 3  # (a name listed late has no beta yet)
    sectors = df.pivot(index="date", columns="symbol", values="sector").to_numpy()[rows][:, names]
    codes = ex["group"]
    assert ex["group_column"] == "sector" and np.isfinite(codes[pd.notna(sectors)]).all()
    for s in range(len(names)):  # one code per sector name, the same on every day
        known = pd.notna(sectors[:, s])
        assert len(set(codes[known, s])) == 1 and len(set(sectors[known, s])) == 1
    assert len(set(codes[0][np.isfinite(codes[0])])) == len(set(sectors[0][pd.notna(sectors[0])]))
    # a panel without returns or group: the market alone
    bare = SimpleNamespace(panel_path=tmp_path / "missing.parquet", panel_meta={}, dates=rec.dates,
                           symbols=rec.symbols, label_lag=0)
    assert exposure_grids(bare) == {"beta": None, "group": None, "group_column": None}
