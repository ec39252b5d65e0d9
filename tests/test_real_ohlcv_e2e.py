"""Real OHLCV end to end: vendor file -> `python -m crnn_ray.data ingest` -> a tiny sweep -> the scorer.

The input is arch's real S&P 500 / NASDAQ daily OHLCV, cut into 12 pseudo-symbols of 300 real days each
(tests/real_ohlcv.py: a daily IC needs >= 10 stocks), with a vendor's mess added (a placeholder row, a negative
volume). Each command runs as its own process, as a user would run it; the sweep starts its own local Ray
(one variant, one short epoch: ~1-2 min on 2 CPUs).
"""

from __future__ import annotations

import json
import subprocess
import sys

import pandas as pd
import pytest
import yaml
from conftest import REPO
from real_ohlcv import time_sliced

from crnn_ray.data import load_panel

pytestmark = pytest.mark.ray


def _run(args: list[str], timeout: int) -> subprocess.CompletedProcess:
    proc = subprocess.run([sys.executable, *args], cwd=REPO, capture_output=True, text=True, timeout=timeout,
                          check=False)
    assert proc.returncode == 0, f"{args[:2]} exit {proc.returncode}\n{proc.stdout[-3000:]}\n{proc.stderr[-3000:]}"
    return proc


def test_real_ohlcv_ingest_sweep_score(tmp_path):
    vendor = time_sliced(n_slices=6, days=300, gap=500)
    first = vendor["Symbol"].eq("NDQ_2004") & vendor["Date"].eq(vendor["Date"].iloc[100])
    vendor.loc[first, ["Open", "High", "Low", "Close", "Adj Close", "Volume"]] = 0  # a placeholder row
    neg = vendor["Symbol"].eq("SPX_2006") & vendor["Date"].eq(vendor["Date"].iloc[150])
    vendor.loc[neg, "Volume"] = -vendor.loc[neg, "Volume"]
    src, panel_path = tmp_path / "vendor.csv.gz", tmp_path / "real.parquet"
    vendor.sample(frac=1.0, random_state=1).to_csv(src, index=False)

    ingest = _run(["-m", "crnn_ray.data", "ingest", "--ohlcv", str(src), "--out", str(panel_path),
                   "--horizon", "5"], timeout=120).stdout
    assert "3599 rows, 12 symbols x 300 days" in ingest
    assert "repairs    placeholder 1 row(s), first (1999-05-27, NDQ_2004); negative_volume 1 value(s) in " \
           "column 'Volume', first (1999-08-09, SPX_2006)" in ingest
    assert "adjustment by 'Adj Close' / close" in ingest and "0 break(s)" in ingest
    assert "label      y5 (close t+1 -> t+6, label_lag 1): present on" in ingest
    panel = load_panel(panel_path)
    assert panel.label_lag == 1 and panel.label_span("y5") == 6 and panel.X.shape == (300, 12, 8)
    # the jump flags ride along: they mask training targets only (data.labels.training_label)
    assert set(panel.aux) == {"universe", "traded_value_med", "suspect_jump", "price_break"}

    config = tmp_path / "real.yaml"
    config.write_text(yaml.safe_dump({
        "name": "real",
        "data": {"path": str(panel_path), "label": "y5", "lookback": 10,
                 "splits": {"fractions": [0.6, 0.2, 0.2], "select": 0.5}},
        "variants": ["cnn1d/m01"], "seeds": [0],
        "training": {"epochs": 1, "batch_size": 128, "lr": 1e-3, "max_steps_per_epoch": 5, "eval_batch_size": 2048},
        "resources": {"cpus_per_trial": 1},
    }, sort_keys=False))
    storage = tmp_path / "runs"
    _run(["-m", "crnn_ray.sweep", "--config", str(config), "--storage", str(storage), "--name", "real"], timeout=540)
    exp = storage / "real"
    lb = pd.read_parquet(exp / "leaderboard.parquet")
    ranked = lb[lb.family != "baseline"]
    assert len(ranked) == 1 and ranked.iloc[0].variant_id == "cnn1d/m01" and ranked.iloc[0].status == "ok"
    assert (exp / "leaderboard.md").is_file()

    out = tmp_path / "score"
    score = _run(["-m", "crnn_ray.score", "--experiment", str(exp), "--out", str(out), "--in-process"],
                 timeout=300).stdout
    metrics = json.loads((out / "metrics.json").read_text())
    assert metrics["horizon"] == 5 and metrics["label"] == "y5"
    assert "realised" in score  # the overlapping books' pnl from the lagged 1-day returns y1
    assert (out / "report.html").is_file() and any((out / "signals").iterdir())
