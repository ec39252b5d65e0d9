"""Costs a desk can map to its market: per-side costs with a sell tax, the long-only book, the turnover
control, the verdict. The books are rebuilt here from explicit weight arrays (numpy), not from the code's
leg-overlap counts."""

from __future__ import annotations

import math

import numpy as np
import pandas as pd
import pytest

from crnn_ray.io import CliError
from crnn_ray.metrics import Costs, evaluate
from crnn_ray.metrics_text import verdict_line
from crnn_ray.score.turnover import smooth_signal


def weights(signal: np.ndarray, label: np.ndarray, quantiles: int = 5):
    """(long-short, long-only) weights per formation day from pd.qcut over the valid pairs (>= 10)."""
    ls, lo = np.zeros(signal.shape), np.zeros(signal.shape)
    for d in range(signal.shape[0]):
        ok = np.flatnonzero(np.isfinite(signal[d]) & np.isfinite(label[d]))
        if ok.size < 10:
            continue
        b = pd.qcut(signal[d, ok], quantiles, labels=False)
        top, bottom = ok[b == quantiles - 1], ok[b == 0]
        lo[d, top] = 1.0 / top.size
        ls[d, top] = 1.0 / top.size
        ls[d, bottom] = -1.0 / bottom.size
    return ls, lo


def realised(w: np.ndarray, r: np.ndarray, horizon: int, buy: float, sell: float):
    """(gross, net) daily pnl of the H overlapping books of weights w: W_t = mean of w_{t-H+1..t}, pnl W_t.r_t,
    cost buy * sum(dW+) + sell * sum(dW-) in bps of the traded notional."""
    n = w.shape[0]
    W = np.array([w[max(0, t - horizon + 1):t + 1].sum(axis=0) / horizon for t in range(n)])
    prev = np.vstack([np.zeros((1, w.shape[1])), W[:-1]])
    dW = W - prev
    gross = np.nansum(W * np.nan_to_num(r), axis=1)
    cost = 1e-4 * (buy * np.clip(dW, 0, None).sum(axis=1) + sell * np.clip(-dW, 0, None).sum(axis=1))
    return gross, gross - cost


def market(seed: int, days: int = 60, names: int = 40):
    rng = np.random.default_rng(seed)
    r = rng.normal(0.0005, 0.02, (days, names))
    label = np.full((days, names), np.nan)
    for d in range(days - 3):
        label[d] = np.prod(1 + r[d:d + 3], axis=0) - 1
    signal = label + rng.normal(0, 0.05, label.shape)  # some skill, much turnover
    signal[rng.random(signal.shape) < 0.1] = np.nan
    return signal, label, r


def test_per_side_costs_and_the_long_only_book_match_explicit_weights():
    signal, label, r = market(1)
    H, buy, sell = 3, 5.0, 25.0
    ev = evaluate(signal, label, horizon=H, returns=r, cost_bps={"buy": buy, "sell": sell})
    w_ls, w_lo = weights(signal, label)
    days = np.isfinite(ev.daily["pnl_ls"].to_numpy())
    for name, w in (("ls", w_ls), ("long_only", w_lo)):
        gross, net = realised(w, r, H, buy, sell)
        np.testing.assert_allclose(ev.daily[f"pnl_{name}"].to_numpy()[days], gross[days], atol=1e-12)
        np.testing.assert_allclose(ev.daily[f"pnl_{name}_net"].to_numpy()[days], net[days], atol=1e-12)
    s = ev.summary
    assert (s["cost_bps_buy"], s["cost_bps_sell"], s["cost_bps"]) == (5.0, 25.0, 15.0)
    assert ev.params["cost_bps"] == {"buy": 5.0, "sell": 25.0}
    x = ev.daily["pnl_long_only_net"].dropna().to_numpy()
    assert s["sharpe_long_only_net"] == pytest.approx(x.mean() / x.std(ddof=1) * math.sqrt(252), rel=1e-12)
    # a flat number is both sides: the old single cost, bit for bit the same as {buy: c, sell: c}
    flat, both = evaluate(signal, label, horizon=H, returns=r, cost_bps=10), \
        evaluate(signal, label, horizon=H, returns=r, cost_bps={"buy": 10, "sell": 10})
    assert flat.summary == both.summary and flat.params["cost_bps"] == 10.0
    # a sell tax costs a long-short book more than a long-only one: short sales pay it too
    taxed = evaluate(signal, label, horizon=H, returns=r, cost_bps={"buy": 0, "sell": 30}).summary
    gross = evaluate(signal, label, horizon=H, returns=r).summary
    assert gross["sharpe_net"] == gross["sharpe"] and taxed["sharpe_net"] < gross["sharpe"]


def test_booked_net_uses_each_side_and_the_net_t_is_newey_west():
    signal, label, r = market(2)
    ev = evaluate(signal, label, horizon=1, cost_bps={"buy": 2, "sell": 18})
    w_ls, _ = weights(signal, label)
    prev = np.vstack([np.zeros((1, w_ls.shape[1])), w_ls[:-1]])
    d = w_ls - prev
    cost = 1e-4 * (2 * np.clip(d, 0, None).sum(axis=1) + 18 * np.clip(-d, 0, None).sum(axis=1))
    book = np.isfinite(ev.daily["ls"].to_numpy())
    np.testing.assert_allclose(ev.daily["ls_net"].to_numpy()[book], (ev.daily["ls"].to_numpy() - cost)[book],
                               atol=1e-12)
    from crnn_ray.metrics import hac_lags, newey_west_tstat
    assert ev.summary["ls_net_tstat_hac"] == pytest.approx(
        newey_west_tstat(ev.daily["pnl_ls_net"].to_numpy(), hac_lags(ev.summary["n_days"], 1)), rel=1e-12)


def test_cost_settings_are_read_in_every_form_and_refused_in_one_line():
    assert Costs.of_setting(7) == Costs(7.0, 7.0)
    assert Costs.of_setting({"buy": 3, "sell": 28}) == Costs(3.0, 28.0)
    assert Costs.of_setting("buy=3, sell=28") == Costs(3.0, 28.0)
    assert Costs(3, 28).describe() == "3 bps on buys, 28 bps on sells (a 25 bps sell tax)"
    assert Costs(10, 10).describe() == "10 bps per unit traded" and Costs(3, 28).mean == 15.5
    for bad in (-1, {"buy": 1, "sel": 2}, "buy=x", float("nan"), {"buy": -3}):
        with pytest.raises(CliError, match="cost_bps"):
            Costs.of_setting(bad)


def test_smoothing_is_a_rolling_mean_of_daily_z_scores_and_cuts_turnover():
    rng = np.random.default_rng(3)
    days, names = 80, 50
    persistent = np.cumsum(rng.normal(size=(days, names)) * 0.3, axis=0) + rng.normal(size=names)
    signal = persistent + rng.normal(size=(days, names))  # a persistent part under daily noise
    signal[rng.random(signal.shape) < 0.1] = np.nan
    z = pd.DataFrame(signal).apply(lambda row: (row - row.mean()) / row.std(ddof=0), axis=1)
    want = z.rolling(3, min_periods=1).mean().where(pd.DataFrame(signal).notna()).to_numpy()
    np.testing.assert_allclose(smooth_signal(signal, 3), want, atol=1e-12)
    np.testing.assert_allclose(smooth_signal(signal, 1), z.to_numpy(), atol=1e-12)
    label = np.roll(persistent, -1, axis=0) + rng.normal(size=(days, names))
    label[-1] = np.nan
    turnover = [evaluate(smooth_signal(signal, n), label).summary["turnover"] for n in (1, 3, 10)]
    assert turnover[0] > turnover[1] > turnover[2]


def test_verdict_line_states_cost_basis_control_and_baseline():
    signal, label, r = market(4)
    s = evaluate(signal, label, horizon=3, returns=r, cost_bps={"buy": 5, "sell": 25}).summary
    b = evaluate(-signal, label, horizon=3, returns=r, cost_bps={"buy": 5, "sell": 25}).summary
    line = verdict_line(s, name="ensemble", baseline=("ridge", b), control="signal smoothed over 3 day(s)")
    assert line.startswith("VERDICT ensemble at 5 bps on buys, 25 bps on sells (a 20 bps sell tax) (total returns; "
                           "signal smoothed over 3 day(s)): long-short net Sharpe ")
    assert f"net Sharpe {s['sharpe_net']:+.2f} (HAC t {s['ls_net_tstat_hac']:+.2f})" in line
    assert f"turnover {s['turnover']:.2f}/day" in line and f"long-only net Sharpe {s['sharpe_long_only_net']:+.2f}" in line
    assert "| best baseline ridge: long-short net Sharpe" in line and "\n" not in line
    assert b["pnl_long_short"] < 0 and "no break-even (gross pnl <= 0)" in line


def test_the_worked_example_of_docs_metrics():
    """docs/metrics.md, "Costs": 4 names, 2 buckets, H = 1, a signal that flips every day, the top pair +0.5 %
    and the bottom pair -0.5 % a day; 5 bps on buys, 25 bps on sells."""
    days = 10
    signal = np.array([[1.0, 1.0, 0.0, 0.0] if d % 2 == 0 else [0.0, 0.0, 1.0, 1.0] for d in range(days)])
    label = np.where(signal > 0, 0.005, -0.005)
    ev = evaluate(signal, label, quantiles=2, min_stocks=2, cost_bps={"buy": 5, "sell": 25})
    ls, ls_net = ev.daily["ls"].to_numpy(), ev.daily["ls_net"].to_numpy()
    lo, lo_net = ev.daily["long_only"].to_numpy(), ev.daily["long_only_net"].to_numpy()
    np.testing.assert_allclose(ls, 0.01)
    # day 0 opens from cash (buy 1 long, sell 1 short: 5 + 25 bps), then every day swaps (buy 2, sell 2: 60 bps)
    np.testing.assert_allclose(ls_net, [0.01 - 0.0030] + [0.01 - 0.0060] * 9, atol=1e-15)
    assert ev.summary["turnover"] == pytest.approx(3.8) and ev.summary["break_even_bps"] == pytest.approx(26.3158, rel=1e-4)
    # the long-only book: buy 1 (5 bps) on day 0, then sell 1 and buy 1 (30 bps) a day
    np.testing.assert_allclose(lo, 0.005)
    np.testing.assert_allclose(lo_net, [0.005 - 0.0005] + [0.005 - 0.0030] * 9, atol=1e-15)
    assert ev.summary["turnover_long"] == pytest.approx(1.9)
    assert ev.summary["break_even_bps_long_only"] == pytest.approx(26.3158, rel=1e-4)
    assert np.mean(ls_net) == pytest.approx(0.0043) and np.mean(lo_net) == pytest.approx(0.00225)
