"""The tear sheet (crnn_ray/score/report.py, render.py) on a hand-made record, no Ray: gross vs net, the cost
assumed, the break-even cost, and the liquidity split or why there is none; one self-contained HTML file whose
figures are inline PNGs drawn for 2x pixel density; no sentinels; member names on the correlation matrix; the
demeaned quantile returns."""

from __future__ import annotations

import base64
import json
import re
import shutil
from html import escape as html_escape
from types import SimpleNamespace

import numpy as np
import pandas as pd
import pytest

from crnn_ray.io import to_json
from crnn_ray.score import render
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
        assert "net SR" in out and "long-short Sharpe (net of 10 bps per unit traded)" in html
        assert "long-only Sharpe (net of 10 bps per unit traded)" in html
    else:
        assert "costs: none assumed (evaluation.cost_bps 0): every pnl and Sharpe above is gross" in out
        assert "net SR" not in out and "none: every pnl and Sharpe here is gross" in html
    # the verdict: first in metrics.json, first printed, at the top of the report
    assert list(doc)[0] == "verdict" and doc["verdict"].startswith(f"VERDICT ensemble at {cost_bps:g} bps per unit")
    assert f"net Sharpe {s['sharpe_net']:+.2f} (HAC t {s['ls_net_tstat_hac']:+.2f})" in doc["verdict"]
    assert f"break-even {s['break_even_bps']:.1f} bps, turnover {s['turnover']:.2f}/day" in doc["verdict"]
    assert "long-only net Sharpe" in doc["verdict"] and out.lstrip("\n").startswith(doc["verdict"])
    assert html.index("VERDICT ensemble") < html.index("Key numbers")


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


# ------------------------------------------------------------------------------------------- the tear sheet
def _two_members(plan, signal, preds, rng):
    """The hand-made record with a second member and a losing baseline (absent break-even: an em dash)."""
    second = SimpleNamespace(name="cnn1d/m02@seed1", trial_id="t001", valid_ic=0.05, variant_id="cnn1d/m02",
                             info={"spec": "y"})
    plan.members = plan.columns = [plan.members[0], second]
    plan.weights = [0.5, 0.5]
    plan.baselines = {"reversal": -signal}
    other = signal + rng.normal(scale=0.02, size=signal.shape)
    return np.stack([preds[..., 0], other.astype(np.float32)], axis=-1)


def _leaderboard(directory):
    """A sweep leaderboard as the sweep writes it: one seed (no sd) and a baseline row (params -1, no seeds)."""
    directory.mkdir(parents=True, exist_ok=True)
    nan = float("nan")
    rows = [("convgru/m01", "convgru", 1, 1, "ok", 0.12, nan, 0.10, nan, 0.05, 7377, 0.067, 2.49),
            ("cnn1d/m02", "cnn1d", 1, 1, "ok", 0.08, nan, 0.07, nan, 0.03, 18465, 0.048, 2.50),
            ("convlstm/m4", "convlstm", 2, 2, "ok", 0.09, 0.01, 0.06, 0.02, 0.04, 9793, 0.068, 2.65),
            ("baseline/reversal", "baseline", 1, 0, "baseline", -0.05, nan, -0.04, nan, -0.02, -1, nan, nan)]
    cols = ["variant_id", "family", "n_seeds", "n_ok", "status", "valid_ic_mean", "valid_ic_std", "select_ic_mean",
            "select_ic_std", "valid_pnl_long_short_mean", "params", "seed_ic", "seed_pnl"]
    pd.DataFrame(rows, columns=cols).to_parquet(directory / "leaderboard.parquet")


def _tear_sheet(tmp_path, cost_bps=0.0):
    rng = np.random.default_rng(11)
    plan, signal, preds = _plan(liquidity=False)
    preds = _two_members(plan, signal, preds, rng)
    plan.label_lag = 1
    ecfg = EvaluationConfig(quantiles=5, cost_bps=cost_bps, min_stocks=10, periods_per_year=252)
    ev = rep.evaluate_all(SimpleNamespace(**{**vars(plan), "signal": signal, "preds": preds}), ecfg)
    opts = _opts(tmp_path)
    _leaderboard(tmp_path / "exp")
    doc = json.loads(to_json(rep.metrics_document(plan, opts, {"path": "in-process"}, ev)))
    figures = rep.render_figures(plan, ev, ecfg)
    html = rep.render_html(plan, opts, doc, ev, figures)
    return plan, ev, doc, figures, html


def _png_width(data: bytes) -> int:
    assert data[:8] == b"\x89PNG\r\n\x1a\n" and data[12:16] == b"IHDR"
    return int.from_bytes(data[16:20], "big")


def test_tear_sheet_is_one_file_every_figure_inline_at_2x(tmp_path):
    """report.html copied alone to an empty folder shows every figure: each <img> is a data: URI of a PNG at
    least twice as wide as the CSS px it is shown at (>= 1600 px for a full-width figure); figures/ is still
    written beside it with the same PNGs."""
    plan, ev, doc, figures, html = _tear_sheet(tmp_path, cost_bps=10.0)
    out = tmp_path / "out"
    out.mkdir()
    rep.write_report(out, doc, figures, html)
    alone = tmp_path / "alone"
    alone.mkdir()
    shutil.copy(out / "report.html", alone / "report.html")
    page = (alone / "report.html").read_text()
    assert "src=\"figures/" not in page and "src='figures/" not in page and "not drawn" not in page
    imgs = re.findall(r"<img ([^>]*)>", page)
    assert len(imgs) == len(figures) >= 10
    seen = set()
    for attrs in imgs:
        src = re.search(r'src="data:image/png;base64,([^"]+)"', attrs)
        css = int(re.search(r'width="(\d+)"', attrs).group(1))
        assert src, attrs[:80]
        data = base64.b64decode(src.group(1))
        width = _png_width(data)
        assert width >= 2 * css, (css, width)
        if css == render.FULL:
            assert width >= 1600
        seen.add(data)
    # the same PNGs are in figures/ for whoever wants the files
    assert seen == {p.read_bytes() for p in (out / "figures").iterdir()}
    assert {p.name for p in (out / "figures").iterdir()} == set(figures)
    for name in ("pnl.png", "quantiles.png", "quantile_cum.png", "spread.png", "ic_monthly.png", "autocorr.png",
                 "correlation.png", "turnover.png", "ic_daily.png", "ic_hist.png"):
        assert name in figures


def _visible(page: str) -> str:
    """The page without its inline images (base64 can spell anything)."""
    return re.sub(r'src="data:image/png;base64,[^"]*"', 'src=""', page)


@pytest.mark.parametrize("cost_bps", [0.0, 10.0])
def test_tear_sheet_has_no_sentinels_and_states_units(tmp_path, cost_bps):
    """No `nan`, `n/a`, `± n/a`, `params -1` or `None`: an absent value is an em dash with its reason as a
    footnote; the unit convention is stated once at the top, and the tables name their units."""
    plan, ev, doc, figures, html = _tear_sheet(tmp_path, cost_bps)
    page = _visible(html)
    assert not re.search(r"\bnan\b", page, re.IGNORECASE)
    assert "n/a" not in page and "± n/a" not in page and "params -1" not in page and ">-1<" not in page
    assert not re.search(r"\bNone\b", page)
    units = html_escape(render.UNITS)
    assert page.count(units) == 1 and page.index(units) < page.index("Key numbers")
    # the losing baseline has no break-even: a dash with the reason; the leaderboard's baseline has no params
    assert "—<sup class='fn'>" in page
    assert "break-even: gross pnl &lt;= 0: no cost makes it break even" in page
    assert "baselines are closed-form fits: no seeds trained, no network parameters" in page
    assert "+0.1200 ±" not in page and "+0.0900 ± 0.0100" in page  # sd only with two or more seeds
    for unit in ("LS pnl, %", "turnover, %/day", "BE, bps", "% a year", "bps per 5-day label",
                 "valid LS pnl, %"):
        assert unit in page
    assert ("net of 10 bps" in page) == bool(cost_bps)


def test_correlation_matrix_names_the_members(tmp_path):
    plan, ev, doc, figures, html = _tear_sheet(tmp_path)
    header = "<tr><th></th>" + "".join(f"<th>{n}</th>" for n in ["convgru/m01@seed0", "cnn1d/m02@seed1",
                                                                   "signal"]) + "</tr>"
    assert header in html
    assert list(ev["correlation"].index) == ["convgru/m01@seed0", "cnn1d/m02@seed1", "signal"]


def test_demeaned_quantile_returns_sum_to_zero_and_match_a_hand_computation(tmp_path):
    """30 stocks in 5 quantiles of 6: each day's quantile means, minus the day's mean, sum to 0; their mean over
    days is what a plain loop gives; the rank autocorrelation at the horizon is evaluate's signal_autocorr."""
    plan, signal, preds = _plan(liquidity=False, days=40, stocks=30)
    label = plan.label_grid.copy()
    label[3, :25] = np.nan  # a day with fewer than min_stocks labels: no quantiles, left out
    plan.label_grid = label
    ev = _evaluate(plan, signal, preds, {"quantiles": 5, "cost_bps": 0.0, "min_stocks": 10, "periods_per_year": 252})
    ts = ev["tear_sheet"]
    q = ts["quantile_returns_demeaned_bps"]
    assert q.shape == (5,) and abs(q.sum()) < 1e-9 and q[-1] > 0 > q[0]
    hand = []
    for d in range(label.shape[0]):
        ok = np.isfinite(label[d]) & np.isfinite(signal[d])
        if ok.sum() < 10:
            continue
        order = np.argsort(signal[d][ok], kind="stable")
        lab = label[d][ok][order]
        hand.append([lab[i * 6:(i + 1) * 6].mean() - lab.mean() for i in range(5)])
    np.testing.assert_allclose(q, 1e4 * np.mean(hand, axis=0), rtol=1e-9, atol=1e-9)
    assert np.isnan(ts["quantile_demeaned"][3]).all()
    assert ts["spread_mean_bps"] == pytest.approx(1e4 * ev["ensemble"].summary["quantile_spread"])
    assert list(ts["rank_autocorr"]) == [1, 2, 3, 4, 5]
    assert ts["rank_autocorr"][5] == pytest.approx(ev["ensemble"].summary["signal_autocorr"], abs=1e-12)
    monthly = ts["monthly_ic"]
    assert list(monthly.index) == [2024] and list(monthly.columns) == list(range(1, 13))
    assert np.isfinite(monthly.loc[2024, 1]) and np.isfinite(monthly.loc[2024, 2]) and np.isnan(monthly.loc[2024, 3])
    doc = json.loads(to_json(rep.metrics_document(plan, _opts(tmp_path), {"path": "in-process"}, ev)))
    assert sum(doc["tear_sheet"]["quantile_returns_demeaned_bps"].values()) == pytest.approx(0.0, abs=1e-9)
    assert set(doc["tear_sheet"]["monthly_ic"]) == {"2024-01", "2024-02"}
