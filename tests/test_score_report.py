"""The tear sheet's cost and liquidity statements (crnn_ray/score/report.py) on a hand-made record, no Ray:
gross vs net, the cost assumed, the break-even cost, and the liquidity split or why there is none."""

from __future__ import annotations

import json
from types import SimpleNamespace

import numpy as np
import pytest

from crnn_ray.io import to_json
from crnn_ray.score import report as rep
from crnn_ray.score.config import EvaluationConfig


def _plan(liquidity: bool, days: int = 40, stocks: int = 30, seed: int = 3):
    rng = np.random.default_rng(seed)
    label = rng.normal(scale=0.01, size=(days, stocks))
    returns = 0.2 * label + rng.normal(scale=0.001, size=(days, stocks))  # the books earn what the label says
    member = SimpleNamespace(name="convgru/m01@seed0", trial_id="t000", valid_ic=0.1, variant_id="convgru/m01",
                             info={"spec": "x"})
    plan = SimpleNamespace(
        label_grid=label, returns_grid=returns, oracle_grid=None, horizon=5, label="y5", returns_name="y1",
        dates=np.datetime64("2024-01-02") + np.arange(days), members=[member], columns=[member], weights=[1.0],
        baselines={}, selected=None, panel_meta={}, panel_path="/tmp/panel.parquet", label_lag=None,
        period=("2024-01-02", "2024-02-10"), n_dates=days, n_rows=days * stocks, in_sample={}, weight_note="",
        units=[], unit_weights=None, selection=None,
        liquidity_grid=np.tile(np.arange(stocks, dtype=float), (days, 1)) if liquidity else None,
        liquidity_name="traded_value_med" if liquidity else None)
    signal = label + rng.normal(scale=0.01, size=label.shape)  # a signal that earns, gross
    preds = signal[..., None].astype(np.float32)
    return plan, signal, preds


def _evaluate(rec, signal, preds, ecfg):
    """report.evaluate_all on the hand-made record with this signal and these member predictions."""
    return rep.evaluate_all(SimpleNamespace(**{**vars(rec), "signal": signal, "preds": preds}),
                            EvaluationConfig(**ecfg))


def _opts(tmp_path):
    return SimpleNamespace(experiment=str(tmp_path / "exp"), method="mean", select_by="select_ic", top_k=1,
                           out=str(tmp_path / "out"), seed_average=False)


@pytest.mark.parametrize("cost_bps", [0.0, 10.0])
def test_report_says_gross_or_net_the_cost_and_the_break_even(tmp_path, capsys, cost_bps):
    plan, signal, preds = _plan(liquidity=False)
    ecfg = {"quantiles": 5, "cost_bps": cost_bps, "min_stocks": 10, "periods_per_year": 252}
    ev = _evaluate(plan, signal, preds, ecfg)
    s = ev["ensemble"].summary
    assert s["cost_bps"] == cost_bps and s["break_even_bps"] > 0
    doc = json.loads(to_json(rep.metrics_document(plan, _opts(tmp_path), {"path": "in-process"}, ev)))
    costs = doc["costs"]
    assert costs["cost_bps"] == cost_bps and "bps of traded notional" in costs["cost_unit"]
    assert costs["sharpe_gross"] == s["sharpe"] and costs["sharpe_net"] == s["sharpe_net"]
    assert costs["pnl_long_short_gross"] == s["pnl_long_short"]
    assert costs["break_even_bps"] == pytest.approx(s["break_even_bps"])
    assert costs["break_even_text"] == f"{s['break_even_bps']:.1f} bps per unit traded"
    assert costs["headline_sharpe"].startswith("gross")
    assert doc["ensemble"]["summary"]["break_even_bps"] == pytest.approx(s["break_even_bps"])
    assert doc["ensemble"]["liquidity_split"] == {"available": False, "note": "n/a (no liquidity column)",
                                                  "column": None}

    rep.print_evaluation(plan, ev, {**doc, "method": "mean", "select_by": "select_ic"})
    out = capsys.readouterr().out
    assert "gross SR" in out and "BE bps" in out and f"Sharpe {s['sharpe']:+.2f} gross" in out
    assert f"break-even {s['break_even_bps']:.1f} bps per unit traded" in out
    assert "liquidity split: n/a (no liquidity column)" in out
    html = rep.render_html(plan, _opts(tmp_path), doc, ev, {})
    assert "long-short Sharpe (gross, before costs)" in html and "break-even cost, long-short" in html
    if cost_bps:
        assert "costs: 10 bps per unit traded" in out and f"{s['sharpe_net']:+.2f} net" in out
        assert "net SR" in out and "long-short Sharpe (net of 10 bps)" in html
    else:
        assert "costs: none assumed (evaluation.cost_bps 0): every pnl and Sharpe above is gross" in out
        assert "net SR" not in out and "none: every pnl and Sharpe here is gross" in html


def test_break_even_is_na_with_its_reason_for_a_losing_signal(tmp_path):
    plan, signal, preds = _plan(liquidity=False)
    ecfg = {"quantiles": 5, "cost_bps": 0.0, "min_stocks": 10, "periods_per_year": 252}
    ev = _evaluate(plan, -signal, -preds, ecfg)
    s = ev["ensemble"].summary
    assert s["pnl_long_short"] < 0 and np.isnan(s["break_even_bps"])
    assert rep.costs_document(s)["break_even_text"] == "n/a (gross pnl <= 0: no cost makes it break even)"
    assert "break-even n/a (gross pnl <= 0" in rep.costs_line(s)


def test_report_prints_the_liquidity_split_when_the_plan_has_a_liquidity_grid(tmp_path, capsys):
    plan, signal, preds = _plan(liquidity=True)
    ecfg = {"quantiles": 5, "cost_bps": 0.0, "min_stocks": 10, "periods_per_year": 252}
    ev = _evaluate(plan, signal, preds, ecfg)
    split = ev["ensemble"].liquidity_split
    assert split["available"] and split["n_days"] == 40 and split["mean_stocks_liquid"] == 15
    doc = json.loads(to_json(rep.metrics_document(plan, _opts(tmp_path), {"path": "in-process"}, ev)))
    assert doc["ensemble"]["liquidity_split"]["column"] == "traded_value_med"
    assert doc["ensemble"]["liquidity_split"]["ic_liquid"] == pytest.approx(split["ic_liquid"])
    line = rep.liquidity_line(split, "traded_value_med")
    assert line.startswith("liquidity split by traded_value_med (each day's names halved at the median): IC ")
    assert f"{split['ic_liquid']:+.4f} more liquid vs {split['ic_illiquid']:+.4f} less liquid" in line
    rep.print_evaluation(plan, ev, {**doc, "method": "mean", "select_by": "select_ic"})
    assert line in capsys.readouterr().out
    # the ensemble's summary is the same with or without the liquidity grid (the recompute command has none)
    plain = _evaluate(_plan(liquidity=False)[0], signal, preds, ecfg)["ensemble"].summary
    assert json.loads(to_json(plain)) == json.loads(to_json(ev["ensemble"].summary))


@pytest.mark.parametrize("label_lag", [None, 0, 1])
def test_report_states_the_label_lag_and_the_recompute_names_the_liquidity_column(tmp_path, capsys, label_lag):
    plan, signal, preds = _plan(liquidity=True)
    if label_lag is not None:
        plan.label_lag = label_lag
    ecfg = {"quantiles": 5, "cost_bps": 0.0, "min_stocks": 10, "periods_per_year": 252}
    ev = _evaluate(plan, signal, preds, ecfg)
    doc = json.loads(to_json(rep.metrics_document(plan, _opts(tmp_path), {"path": "in-process"}, ev)))
    assert doc["label_lag"] == label_lag
    assert "--liquidity traded_value_med" in doc["recompute"]
    assert doc["ensemble"]["inputs"]["liquidity"] == "traded_value_med"
    want = {None: "label y5: label_lag unknown",
            0: "label y5 entered at close t (label_lag 0: entered at the close the features use",
            1: "label y5 entered at close t+1 (label_lag 1): return close t+1 -> t+6, features up to close t"}
    assert doc["execution"].startswith(want[label_lag])
    assert (f"--label-lag {label_lag}" in doc["recompute"]) == (label_lag is not None)
    rep.print_evaluation(plan, ev, {**doc, "method": "mean", "select_by": "select_ic"})
    assert f"execution: {doc['execution']}" in capsys.readouterr().out
    html = rep.render_html(plan, _opts(tmp_path), doc, ev, {})
    assert "execution (label lag)" in html and want[label_lag].replace(">", "&gt;") in html
    plain_plan = _plan(liquidity=False)[0]
    plain = rep.metrics_document(plain_plan, _opts(tmp_path), {"path": "in-process"},
                                 _evaluate(plain_plan, signal, preds, ecfg))
    assert "--liquidity" not in plain["recompute"] and "liquidity" not in plain["ensemble"]["inputs"]
