"""The scorer on an ingested OHLCV panel, in-process (no Ray): the panel's traded_value_med reaches the
liquidity split of the report, metrics.json and labels.parquet, `python -m crnn_ray.evaluate --liquidity`
recomputes it, and the label lag is stated everywhere (printed summary, report.html, metrics.json)."""

from __future__ import annotations

import json

import numpy as np
import pandas as pd
import pytest

from crnn_ray.data import ingest_ohlcv, load_panel, save_panel
from crnn_ray.evaluate import main as evaluate_main
from crnn_ray.score import job
from crnn_ray.score.config import ScoreConfig
from crnn_ray.score.select import Member, Unit

LOOKBACK = 6


def _ohlcv(days: int = 90, stocks: int = 30, seed: int = 7) -> pd.DataFrame:
    rng = np.random.default_rng(seed)
    dates = pd.bdate_range("2023-01-02", periods=days)
    frames = []
    for k in range(stocks):
        close = (20 + k) * np.exp(np.cumsum(rng.normal(0, 0.015, days)))
        volume = 1e4 * (1 + k) * np.exp(rng.normal(0, 0.3, days))  # names differ in size: a real split
        frames.append(pd.DataFrame({"date": dates, "symbol": f"S{k:02d}", "open": close * 0.997,
                                    "high": close * 1.01, "low": close * 0.99, "close": close,
                                    "volume": volume}))
    return pd.concat(frames, ignore_index=True)


def _score(tmp_path, monkeypatch, label_lag: int):
    import torch

    from crnn_ray.zoo import build_model, load_zoo

    panel_df, meta = ingest_ohlcv(_ohlcv(), horizon=3, label_lag=label_lag)
    path = tmp_path / "panel.parquet"
    save_panel(panel_df, path, meta)
    panel = load_panel(path)
    assert "traded_value_med" in panel.aux and panel.label_lag == label_lag
    d = [str(x) for x in panel.dates]
    torch.manual_seed(0)
    spec = load_zoo()["cnn1d/m01"].spec
    model = build_model(spec, len(meta["features"]), LOOKBACK)
    member_meta = {"spec": spec, "lookback": LOOKBACK, "features": list(meta["features"]), "label": "y3",
                   "horizon": 3, "panel": str(path), "rank_label": True,
                   "normalisation": {"method": "robust_z", "clip": 5.0},
                   "splits": {"train": [d[0], d[35]], "valid": [d[39], d[50]], "test": [d[55], d[-1]],
                              "embargo": 3}}
    member = Member(name="cnn1d/m01@seed0", trial_id="t0", variant_id="cnn1d/m01", spec=spec, seed=0,
                    checkpoint=tmp_path / "ck", valid_ic=0.05, select_value=0.05, meta=member_meta,
                    state_dict=model.state_dict())
    unit = Unit(member.name, [member], 0.05, 0.05)
    monkeypatch.setattr(job, "choose_units", lambda cfg, window: ([unit], [member], {"rule": "top_k",
                                                                                     "seed_average": False}))
    out = tmp_path / "out"
    cfg = ScoreConfig(experiment=tmp_path / "exp", out=out, data=path, path="in_process")
    cfg.evaluation.min_stocks = 5
    return job.run_score(cfg), out, panel


@pytest.mark.parametrize("label_lag", [1, 0])
def test_ingested_liquidity_reaches_the_report_labels_and_evaluate(tmp_path, monkeypatch, capsys, label_lag):
    metrics, out, panel = _score(tmp_path, monkeypatch, label_lag)
    printed = capsys.readouterr().out

    # the liquidity split: computed on the panel's traded_value_med, printed, in metrics.json and the html
    split = metrics["ensemble"]["liquidity_split"]
    assert split["available"] and split["column"] == "traded_value_med" and split["n_days"] > 0
    assert "liquidity split by traded_value_med (each day's names halved at the median): IC " in printed
    on_disk = json.loads((out / "metrics.json").read_text())
    assert on_disk["ensemble"]["liquidity_split"]["ic_liquid"] == pytest.approx(split["ic_liquid"])
    html = (out / "report.html").read_text()
    assert "liquidity split by traded_value_med" in html

    # labels.parquet carries the column, equal to the panel's grid on the written rows
    labels = pd.read_parquet(out / "labels.parquet")
    assert "traded_value_med" in labels.columns and labels["traded_value_med"].notna().any()
    di = np.searchsorted(panel.dates, pd.to_datetime(labels["date"]).to_numpy().astype("datetime64[D]"))
    si = pd.Index(panel.symbols.astype(str)).get_indexer(labels["symbol"].astype(str))
    np.testing.assert_array_equal(labels["traded_value_med"].to_numpy(),
                                  panel.aux["traded_value_med"][di, si].astype(np.float64))

    # the recompute command names the column and the lag, and gives the same figures
    assert "--liquidity traded_value_med" in metrics["recompute"]
    assert f"--label-lag {label_lag}" in metrics["recompute"]
    check = tmp_path / "check.json"
    argv = metrics["recompute"].split()[3:]
    argv[argv.index("--json") + 1] = str(check)
    assert evaluate_main(argv) == 0
    shown = capsys.readouterr().out
    again = json.loads(check.read_text())
    assert set(again) == set(on_disk["ensemble"])
    assert again["summary"] == on_disk["ensemble"]["summary"]
    assert again["liquidity_split"] == on_disk["ensemble"]["liquidity_split"]
    assert again["inputs"]["liquidity"] == "traded_value_med" and again["inputs"]["label_lag"] == label_lag
    assert "liquidity split by traded_value_med" in shown and "break-even " in shown

    # the label lag: metrics.json, the printed summary and report.html all state it
    assert on_disk["label_lag"] == label_lag
    assert on_disk["ensemble"]["inputs"]["label_lag"] == label_lag
    if label_lag:
        statement = "label y3 entered at close t+1 (label_lag 1): return close t+1 -> t+4, features up to close t"
    else:
        statement = ("label y3 entered at close t (label_lag 0: entered at the close the features use, "
                     "frictionless): return close t -> t+3")
    assert on_disk["execution"] == statement
    assert f"execution: {statement}" in printed and f"execution: {statement}" in shown
    assert f"label y3 (horizon 3, label_lag {label_lag})" in printed
    assert statement.replace(">", "&gt;") in html and f"label_lag {label_lag}" in html
