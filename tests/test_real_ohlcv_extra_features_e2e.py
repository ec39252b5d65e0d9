"""A vendor's own feature column end to end: an emerging-market style file (integer YYYYMMDD dates, a traded
value column in currency, a hole in the calendar, one extra signal column) -> `python -m crnn_ray.data ingest
--traded-value value --extra-features range` -> `python -m crnn_ray.sweep --check` -> a tiny real sweep whose
data.features lists the extra column.

The rows are arch's real S&P 500 / NASDAQ daily OHLCV cut into 12 pseudo-symbols (tests/real_ohlcv.py), as in
test_real_ohlcv_e2e.py. One variant, one epoch of 2 steps: ~1 min on 2 CPUs.
"""

from __future__ import annotations

import json
import subprocess
import sys

import numpy as np
import pandas as pd
import pytest
import yaml
from conftest import REPO
from real_ohlcv import time_sliced

from crnn_ray.data import load_panel

pytestmark = pytest.mark.ray

FEATURES = ["ret1", "vol20", "range"]


def _run(args: list[str], timeout: int) -> subprocess.CompletedProcess:
    proc = subprocess.run([sys.executable, *args], cwd=REPO, capture_output=True, text=True, timeout=timeout,
                          check=False)
    assert proc.returncode == 0, f"{args[:2]} exit {proc.returncode}\n{proc.stdout[-3000:]}\n{proc.stderr[-3000:]}"
    return proc


def _vendor_file(path) -> None:
    """12 real price paths on one real calendar, written the way an emerging-market vendor would."""
    vendor = time_sliced(n_slices=6, days=300, gap=500)
    day = pd.to_datetime(vendor["Date"], format="%m/%d/%Y")
    calendar = np.sort(day.unique())
    vendor = vendor[~day.between(calendar[150], calendar[169])].copy()       # 20 trading days missing
    vendor["Date"] = pd.to_datetime(vendor["Date"], format="%m/%d/%Y").dt.strftime("%Y%m%d").astype(int)
    vendor["value"] = vendor["Close"] * vendor["Volume"]                    # traded value, in currency
    vendor["range"] = (vendor["High"] - vendor["Low"]) / vendor["Close"]    # the vendor's own signal
    vendor.drop(columns=["Adj Close"]).sample(frac=1.0, random_state=2).to_csv(path, index=False)


def test_extra_feature_column_ingest_check_and_sweep(tmp_path):
    src, panel_path = tmp_path / "em.csv", tmp_path / "em.parquet"
    _vendor_file(src)
    ingest = _run(["-m", "crnn_ray.data", "ingest", "--ohlcv", str(src), "--out", str(panel_path), "--horizon", "5",
                   "--traded-value", "value", "--extra-features", "range"], timeout=120).stdout
    assert "12 symbols x 280 days" in ingest and "volume_rel, range (" in ingest
    assert "dates      integer YYYYMMDD detected (19990104 -> 1999-01-04)" in ingest
    assert "gaps       1 calendar gap(s) longer than 14 days: 1999-08-06 -> 1999-09-07 (32 days)" in ingest
    assert "liquidity  traded_value_med: median traded value 'value'" in ingest
    panel = load_panel(panel_path, features=FEATURES)
    assert panel.features == FEATURES and panel.X.shape == (280, 12, 3) and np.isfinite(panel.X[..., 2]).mean() > 0.9

    config = tmp_path / "em.yaml"
    config.write_text(yaml.safe_dump({
        "name": "em",
        "data": {"path": str(panel_path), "label": "y5", "lookback": 10, "features": FEATURES,
                 "splits": {"fractions": [0.6, 0.2, 0.2], "select": 0.5}},
        "variants": ["cnn1d/m01"], "seeds": [0],
        "training": {"epochs": 1, "batch_size": 128, "lr": 1e-3, "max_steps_per_epoch": 2, "eval_batch_size": 2048},
        "resources": {"cpus_per_trial": 1},
    }, sort_keys=False))
    check = _run(["-m", "crnn_ray.sweep", "--config", str(config), "--check"], timeout=120).stdout
    assert "ok, 1 trial(s)" in check and "has label y5 and 3 feature(s)" in check
    storage = tmp_path / "runs"
    _run(["-m", "crnn_ray.sweep", "--config", str(config), "--storage", str(storage), "--name", "em"], timeout=540)
    lb = pd.read_parquet(storage / "em" / "leaderboard.parquet")
    ranked = lb[lb.family != "baseline"]
    assert len(ranked) == 1 and ranked.iloc[0].status == "ok"
    metas = [json.loads(p.read_text()) for p in (storage / "em").rglob("meta.json")]
    assert metas and all(m["features"] == FEATURES and m["n_features"] == 3 for m in metas)
