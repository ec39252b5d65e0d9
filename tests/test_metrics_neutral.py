"""Neutral returns: residuals per date against the equal-weight market, a trailing beta and a group, rebuilt
here with plain numpy (per-day least squares, a per-name loop for the beta); and on the realistic market a
volatility tilt that the Pearson IC rewards is worth nothing once ranked or neutralised."""

from __future__ import annotations

import json
import math

import numpy as np
import pandas as pd
import pytest

from crnn_ray.data import load_panel, save_panel, synthesize
from crnn_ray.data.splits import make_splits
from crnn_ray.evaluate import main as evaluate_main
from crnn_ray.metrics import Neutral, evaluate, neutralize_by_day, trailing_beta


def lstsq_residuals(y: np.ndarray, beta: np.ndarray | None, group: np.ndarray | None) -> np.ndarray:
    """Per day: OLS of the finite y on [group dummies (NaN group: its own) or a constant, beta (NaN -> 1)]."""
    out = np.full(y.shape, np.nan)
    for d in range(y.shape[0]):
        ok = np.isfinite(y[d])
        if not ok.any():
            continue
        cols = []
        if group is None:
            cols.append(np.ones(ok.sum()))
        else:
            g = np.where(np.isfinite(group[d]), group[d], -1.0)[ok]
            cols += [(g == k).astype(float) for k in np.unique(g)]
        if beta is not None:
            cols.append(np.where(np.isfinite(beta[d]), beta[d], 1.0)[ok])
        X = np.column_stack(cols)
        coef, *_ = np.linalg.lstsq(X, y[d, ok], rcond=None)
        out[d, ok] = y[d, ok] - X @ coef
    return out


def test_neutralize_by_day_is_per_day_least_squares():
    rng = np.random.default_rng(4)
    y = rng.normal(size=(40, 60))
    y[rng.random(y.shape) < 0.2] = np.nan
    beta = rng.normal(1.0, 0.4, y.shape)
    beta[rng.random(y.shape) < 0.1] = np.nan
    group = rng.integers(0, 4, y.shape).astype(float)
    group[rng.random(y.shape) < 0.05] = np.nan
    for b, g in ((None, None), (beta, None), (None, group), (beta, group)):
        got = neutralize_by_day(y, b, g)
        want = lstsq_residuals(y, b, g)
        np.testing.assert_array_equal(np.isnan(got), np.isnan(y))
        np.testing.assert_allclose(got[np.isfinite(got)], want[np.isfinite(want)], atol=1e-10)
    # the market alone: each day's values minus their mean
    np.testing.assert_allclose(neutralize_by_day(y), y - np.nanmean(y, axis=1, keepdims=True), atol=1e-12)
    # a thin day (12 names, 5 groups + beta: fewer than 5 names per regressor) leaves the groups out, then the
    # beta (8 names): a dozen dummies on a dozen names would absorb any signal's own spread
    thin = np.full((2, 60), np.nan)
    thin[0, :12], thin[1, :8] = rng.normal(size=12), rng.normal(size=8)
    got = neutralize_by_day(thin, beta[:2], group[:2])
    np.testing.assert_allclose(got[0, :12], lstsq_residuals(thin[:1], beta[:1], None)[0, :12], atol=1e-10)
    np.testing.assert_allclose(got[1, :8], thin[1, :8] - thin[1, :8].mean(), atol=1e-12)


def test_trailing_beta_uses_only_returns_known_at_the_decision():
    rng = np.random.default_rng(5)
    market = rng.normal(0, 0.01, 90)
    true = rng.uniform(0.5, 1.5, 12)
    r = market[:, None] * true[None, :] + rng.normal(0, 0.004, (90, 12))
    r[rng.random(r.shape) < 0.1] = np.nan
    for lag in (0, 1):
        got = trailing_beta(r, lag=lag, days=30, min_days=10)
        m = np.array([np.nanmean(row) for row in r])
        for t in range(90):
            rows = np.arange(max(0, t - lag - 30), max(0, t - lag))  # returns whose last close is <= t
            for s in range(12):
                ok = rows[np.isfinite(r[rows, s])]
                if ok.size < 10:
                    assert np.isnan(got[t, s])
                    continue
                x, y = m[ok], r[ok, s]
                slope = ((x - x.mean()) * (y - y.mean())).sum() / ((x - x.mean()) ** 2).sum()
                assert got[t, s] == pytest.approx(slope, rel=1e-9, abs=1e-12)
        # changing the future changes no beta of the past
        future = r.copy()
        future[60:] *= 3.0
        np.testing.assert_array_equal(trailing_beta(future, lag=lag, days=30, min_days=10)[:60 + lag + 1],
                                      got[:60 + lag + 1])


def test_evaluate_on_neutral_returns_is_evaluate_on_the_residuals():
    rng = np.random.default_rng(6)
    days, names = 80, 50
    beta = rng.uniform(0.4, 1.8, (days, names))
    group = np.tile(rng.integers(0, 5, names), (days, 1)).astype(float)
    market = rng.normal(0.004, 0.01, days)  # a rising market
    returns = beta * market[:, None] + rng.normal(0, 0.02, (days, names))
    label = np.full((days, names), np.nan)
    for d in range(days - 5):
        label[d] = np.prod(1 + returns[d:d + 5], axis=0) - 1
    signal = beta + rng.normal(0, 0.5, (days, names))  # a beta tilt, no skill
    signal[rng.random(signal.shape) < 0.1] = np.nan
    neutral = Neutral(beta, group)
    got = evaluate(signal, label, horizon=5, returns=returns, neutral=neutral)
    pairs = np.isfinite(signal) & np.isfinite(label)
    resid_label = lstsq_residuals(np.where(pairs, label, np.nan), beta, group)
    resid_returns = lstsq_residuals(returns, beta, group)
    want = evaluate(signal, resid_label, horizon=5, returns=resid_returns)
    for key in ("ic", "rank_ic", "quantile_spread", "sharpe", "pnl_long_short", "sharpe_long", "ic_tstat_hac"):
        assert got.summary[key] == pytest.approx(want.summary[key], rel=1e-8, abs=1e-12), key
    ic = [np.corrcoef(signal[d, pairs[d]], resid_label[d, pairs[d]])[0, 1] for d in range(days) if pairs[d].sum() >= 10]
    assert got.summary["ic"] == pytest.approx(np.mean(ic), rel=1e-9)
    assert got.summary["returns_basis"] == "neutral (equal-weight market + trailing beta + group)"
    total = evaluate(signal, label, horizon=5, returns=returns)
    assert total.summary["returns_basis"] == "total"
    assert total.summary["ic_tstat_hac"] > 2  # the tilt's IC is the market's ...
    # ... and the pure tilt (the beta itself) is uncorrelated with the beta-neutral label every day, exactly
    tilt = np.where(np.isfinite(signal), beta, np.nan)
    daily = evaluate(tilt, label, horizon=5, returns=returns, neutral=neutral).daily["ic"].to_numpy()
    assert np.nanmax(np.abs(daily)) < 1e-9 and evaluate(tilt, label, horizon=5).summary["ic"] > 0.05


def test_cli_neutral_basis_reads_beta_and_group_columns(tmp_path, capsys):
    rng = np.random.default_rng(7)
    dates = pd.bdate_range("2024-01-01", periods=30)
    rows = []
    for d in dates:
        for s in range(25):
            rows.append((d, f"S{s:02d}", rng.normal(), rng.normal(), rng.normal(1, 0.3), float(s % 3)))
    df = pd.DataFrame(rows, columns=["date", "symbol", "signal", "y1", "beta", "group"])
    df[["date", "symbol", "signal"]].to_parquet(tmp_path / "s.parquet")
    df[["date", "symbol", "y1", "beta", "group"]].to_parquet(tmp_path / "l.parquet")
    assert evaluate_main(["--signals", str(tmp_path / "s.parquet"), "--labels", str(tmp_path / "l.parquet"),
                          "--label", "y1", "--beta", "beta", "--group", "group", "--json",
                          str(tmp_path / "m.json")]) == 0
    printed = capsys.readouterr().out
    assert "returns: neutral (equal-weight market + trailing beta + group)" in printed
    got = json.loads((tmp_path / "m.json").read_text())
    grid = {c: df.pivot(index="date", columns="symbol", values=c).to_numpy() for c in ("signal", "y1", "beta", "group")}
    ref = evaluate(grid["signal"], grid["y1"], neutral=Neutral(grid["beta"], grid["group"])).summary
    for key in ("ic", "rank_ic", "sharpe", "quantile_spread"):
        assert got["summary"][key] == pytest.approx(ref[key], abs=1e-12), key
    assert got["inputs"]["beta"] == "beta" and got["inputs"]["group"] == "group"


@pytest.fixture(scope="module")
def realistic(tmp_path_factory):
    df, meta = synthesize(200, 500, seed=0, horizon=5, preset="realistic")
    path = tmp_path_factory.mktemp("realistic") / "panel.parquet"
    save_panel(df, path, meta)
    return df, load_panel(path, labels=["y5", "oracle_y5"])


def test_a_volatility_tilt_has_no_rank_or_neutral_ic_on_the_realistic_market(realistic):
    """docs/metrics.md, "RankIC first" and "Neutral returns": the trailing 20-day volatility (no model) against
    the planted oracle, test part and whole panel."""
    df, p = realistic
    close = df.pivot(index="date", columns="symbol", values="close").sort_index()
    vol = np.log(close / close.ffill().shift(1)).rolling(20, min_periods=10).std().to_numpy()
    sector = df.pivot(index="date", columns="symbol", values="sector").sort_index().to_numpy()
    group = np.full(sector.shape, np.nan)
    known = pd.notna(sector)
    group[known] = pd.factorize(sector[known])[0]
    assert meta_group(p) == "sector"
    beta = trailing_beta(p.returns(), lag=p.label_lag)
    label = np.where(p.mask, p.labels["y5"], np.nan)
    a, b = make_splits(p.dates, {"fractions": [0.6, 0.2, 0.2]}, 5).test
    for lo, hi in ((0, len(p.dates) - 1), (a, b)):
        days = np.arange(lo, hi + 1)
        days = days[np.isfinite(label[days]).any(axis=1)]
        for name, raw in (("vol", vol), ("oracle", p.labels["oracle_y5"])):
            sig = np.where(np.isfinite(label), raw, np.nan)[days]
            kw = dict(horizon=5, returns=p.returns()[days])
            total = evaluate(sig, label[days], **kw).summary
            neutral = evaluate(sig, label[days], neutral=Neutral(beta[days], group[days]), **kw).summary
            assert neutral["hac_lags"] == 10
            if name == "vol":
                assert abs(total["rank_ic_tstat_hac"]) < 2 and abs(neutral["ic_tstat_hac"]) < 2
                assert abs(neutral["rank_ic_tstat_hac"]) < 2
            else:
                assert total["rank_ic_tstat_hac"] > 3 and neutral["rank_ic_tstat_hac"] > 3
                assert neutral["rank_ic"] > total["rank_ic"] - 0.005  # the sector noise is gone, the skill stays


def meta_group(panel) -> str:
    return str(panel.meta.get("group_column"))


def test_beta_tilt_pnl_is_hedged_on_neutral_returns():
    """A long-only book on high-beta names earns the market on total returns and nothing on neutral ones."""
    rng = np.random.default_rng(8)
    days, names = 120, 60
    beta = np.tile(rng.uniform(0.3, 2.0, names), (days, 1))
    market = rng.normal(0.004, 0.01, days)  # a strongly rising market
    returns = beta * market[:, None] + rng.normal(0, 0.01, (days, names))
    signal = beta.copy()
    total = evaluate(signal, returns, returns=returns).summary
    neutral = evaluate(signal, returns, returns=returns, neutral=Neutral(beta)).summary
    assert total["sharpe"] > 3 and math.isfinite(neutral["sharpe"]) and abs(neutral["sharpe"]) < 2
