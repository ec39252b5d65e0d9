"""Baselines: the ridge recovers a planted linear signal on the nets' rows; reversal is minus the 5-day return."""

import numpy as np
import pandas as pd
import pytest

from crnn_ray.baselines import REVERSAL_DAYS, baseline_signals, fit_ridge
from crnn_ray.data import Panel
from crnn_ray.metrics import evaluate


def _panel(n_days=120, n_stocks=60, seed=0):
    rng = np.random.default_rng(seed)
    X = rng.standard_normal((n_days, n_stocks, 3)).astype(np.float32)
    y = (0.5 * X[:, :, 0] - 0.25 * X[:, :, 2] + rng.standard_normal((n_days, n_stocks))).astype(np.float32)
    mask = np.ones((n_days, n_stocks), dtype=bool)
    mask[:, -3:] = False  # absent names are never scored
    dates = pd.bdate_range("2021-01-01", periods=n_days).to_numpy().astype("datetime64[D]")
    return Panel(X=X, mask=mask, labels={"y1": y}, dates=dates, symbols=np.array([f"S{i}" for i in range(n_stocks)],
                 dtype=object), features=["a", "ret1", "c"], meta={"horizons": {"y1": 1}})


def test_fit_ridge_matches_the_normal_equations():
    rng = np.random.default_rng(1)
    x = rng.standard_normal((500, 4))
    y = x @ np.array([1.0, -2.0, 0.5, 0.0]) + 3.0 + 0.1 * rng.standard_normal(500)
    beta, b0 = fit_ridge(x, y, alpha=0.0)
    ref = np.linalg.lstsq(np.column_stack([x, np.ones(500)]), y, rcond=None)[0]
    assert np.allclose(beta, ref[:4]) and b0 == pytest.approx(ref[4])
    shrunk, _ = fit_ridge(x, y, alpha=1.0)
    assert np.linalg.norm(shrunk) < np.linalg.norm(beta)


def test_ridge_and_reversal_signals_on_the_nets_rows():
    panel = _panel()
    signals = baseline_signals(panel, (0, 59), "y1", lookback=10, rank_label=False, days=(70, 119))
    ridge, reversal = signals["ridge"], signals["reversal"]
    # only scorable cells of the requested days are filled
    assert np.isnan(ridge[:70]).all() and np.isnan(ridge[:, -3:]).all() and np.isfinite(ridge[70:, :-3]).all()
    ic = evaluate(ridge[70:], panel.labels["y1"][70:], min_stocks=10).summary["ic"]
    assert ic > 0.3  # the planted linear signal (true IC about 0.49)
    ret1 = panel.X[:, :, 1].astype(np.float64)
    d, s = 100, 7
    assert reversal[d, s] == pytest.approx(-ret1[d - REVERSAL_DAYS + 1:d + 1, s].sum())
    no_ret1 = _panel()
    no_ret1.features = ["a", "b", "c"]
    assert set(baseline_signals(no_ret1, (0, 59), "y1", lookback=10)) == {"ridge", "ridge2", "ridge_window",
                                                                          "lgbm"}
