"""The strong baselines: the second-order ridge sees an interaction, the window ridge a lagged effect, LightGBM
is deterministic; all fill exactly the ridge's cells and see no label outside the training part."""

import numpy as np
import pandas as pd
import pytest

from crnn_ray.baselines import BASELINES, baseline_signals, fit_ridge, fit_ridge_moments, second_order
from crnn_ray.data import Panel
from crnn_ray.metrics import evaluate

TRAIN, VALID, TEST = (0, 119), (125, 154), (160, 199)
STRONG = ("ridge2", "ridge_window", "lgbm")


def _panel(target, n_days=200, n_stocks=80, n_feat=4, seed=0, holes=False):
    """iid N(0,1) features; label = target(X) + N(0,1) noise; with `holes`, some rows absent (mask False, X NaN)."""
    rng = np.random.default_rng(seed)
    X = rng.standard_normal((n_days, n_stocks, n_feat))
    y = target(X) + rng.standard_normal((n_days, n_stocks))
    mask = np.ones((n_days, n_stocks), dtype=bool)
    if holes:
        mask &= rng.random((n_days, n_stocks)) > 0.05
        mask[:, -2:] = False
        X[~mask] = np.nan
    dates = pd.bdate_range("2021-01-01", periods=n_days).to_numpy().astype("datetime64[D]")
    return Panel(X=X.astype(np.float32), mask=mask, labels={"y1": y.astype(np.float32)}, dates=dates,
                 symbols=np.array([f"S{i}" for i in range(n_stocks)], dtype=object),
                 features=[f"f{i}" for i in range(n_feat)], meta={"horizons": {"y1": 1}})


def _test_ic(panel, signal):
    a, b = TEST
    return evaluate(signal[a:b + 1], panel.labels["y1"][a:b + 1], min_stocks=10).summary["ic"]


def test_second_order_design_is_features_products_squares():
    x = np.arange(1.0, 9.0)[None, :]  # 8 features: 8 + 28 + 8 columns
    z = second_order(x)
    assert z.shape == (1, 44)
    assert np.array_equal(z[0, :8], x[0]) and np.array_equal(z[0, -8:], x[0] ** 2)
    assert z[0, 8] == 1.0 * 2.0 and z[0, 8 + 27] == 7.0 * 8.0  # (0, 1) first, (6, 7) last


def test_moment_ridge_matches_fit_ridge_and_standardising_ignores_column_scale():
    rng = np.random.default_rng(3)
    x = rng.standard_normal((3000, 5))
    y = x @ np.array([0.5, -1.0, 0.0, 0.2, 0.0]) + rng.standard_normal(3000)
    rows = np.arange(len(x))[:, None]
    ref_beta, ref_b0 = fit_ridge(x, y, alpha=0.05)
    beta, b0 = fit_ridge_moments(lambda r: x[r[:, 0]], rows, y, 5, alpha=0.05)
    assert np.allclose(beta, ref_beta) and b0 == pytest.approx(ref_b0)
    # standardised: a column in other units gets the same fitted values (the unstandardised fit would not)
    scaled = x * np.array([1.0, 1000.0, 1.0, 0.001, 1.0])
    s1 = fit_ridge_moments(lambda r: x[r[:, 0]], rows, y, 5, alpha=0.05, standardise=True)
    s2 = fit_ridge_moments(lambda r: scaled[r[:, 0]], rows, y, 5, alpha=0.05, standardise=True)
    assert np.allclose(x @ s1[0] + s1[1], scaled @ s2[0] + s2[1])
    u2 = fit_ridge_moments(lambda r: scaled[r[:, 0]], rows, y, 5, alpha=0.05)
    assert not np.allclose(x @ s1[0] + s1[1], scaled @ u2[0] + u2[1], atol=1e-3)
    # a column constant on the rows gets no weight instead of a singular solve
    const = np.column_stack([x, np.full(len(x), 2.0)])
    c = fit_ridge_moments(lambda r: const[r[:, 0]], rows, y, 6, alpha=0.05, standardise=True)
    assert np.isfinite(c[0]).all() and c[0][-1] == 0.0


def test_second_order_ridge_recovers_an_interaction_the_linear_ridge_misses():
    panel = _panel(lambda X: X[:, :, 0] * X[:, :, 1])  # true IC of x0*x1 about 0.71
    sig = baseline_signals(panel, TRAIN, "y1", lookback=5, which=("ridge", "ridge2", "lgbm"))
    assert _test_ic(panel, sig["ridge2"]) > 0.5
    assert abs(_test_ic(panel, sig["ridge"])) < 0.05
    assert _test_ic(panel, sig["lgbm"]) > 0.4  # trees find it too


def test_window_ridge_recovers_a_lagged_feature_the_last_day_misses():
    lag = 3
    panel = _panel(lambda X: np.vstack([np.zeros((lag, X.shape[1])), X[:-lag, :, 0]]))  # y_t = x0_{t-3} + noise
    sig = baseline_signals(panel, TRAIN, "y1", lookback=8, which=("ridge", "ridge_window"))
    assert _test_ic(panel, sig["ridge_window"]) > 0.5
    assert abs(_test_ic(panel, sig["ridge"])) < 0.05


def test_lgbm_is_deterministic_and_early_stops_on_valid():
    panel = _panel(lambda X: np.tanh(2 * X[:, :, 0]) + X[:, :, 1] * X[:, :, 2])
    a, b, c = ({} for _ in range(3))
    one = baseline_signals(panel, TRAIN, "y1", 5, which=("lgbm",), info=a)["lgbm"]
    two = baseline_signals(panel, TRAIN, "y1", 5, which=("lgbm",), info=b)["lgbm"]
    assert np.array_equal(one, two, equal_nan=True)
    stopped = baseline_signals(panel, TRAIN, "y1", 5, which=("lgbm",), valid=VALID, info=c)["lgbm"]
    again = baseline_signals(panel, TRAIN, "y1", 5, which=("lgbm",), valid=VALID)["lgbm"]
    assert np.array_equal(stopped, again, equal_nan=True)
    assert a["lgbm"]["rounds"] == 150 and 1 <= c["lgbm"]["rounds"] < 1000 and c["lgbm"]["rounds"] != 150
    assert not np.array_equal(one, stopped, equal_nan=True)
    assert a["lgbm"]["n_train"] == (120 - 4) * 80  # days with 5 days of history and a["lgbm"]["fit_s"] > 0


def test_every_baseline_fills_exactly_the_ridges_cells():
    panel = _panel(lambda X: X[:, :, 0], holes=True)
    info = {}
    sig = baseline_signals(panel, TRAIN, "y1", lookback=10, days=(130, 199), info=info)
    assert set(sig) == {"ridge", "ridge2", "ridge_window", "lgbm"}  # no ret1: no reversal, and info says why
    assert "ret1" in info["reversal"]["skipped"]
    filled = np.isfinite(sig["ridge"])
    assert filled.sum() == panel.mask[130:].sum() and not filled[:130].any() and not filled[:, -2:].any()
    for name in STRONG:
        assert sig[name].shape == panel.mask.shape
        assert np.array_equal(np.isfinite(sig[name]), filled), name
    assert info["ridge2"]["n_params"] == 4 + 6 + 4 and info["ridge_window"]["n_params"] == 10 * 4
    assert list(sig) == [n for n in BASELINES if n in sig]  # the documented order


def test_no_label_outside_the_training_part_moves_a_baseline():
    panel = _panel(lambda X: X[:, :, 0] * X[:, :, 1] + X[:, :, 2])
    before = baseline_signals(panel, TRAIN, "y1", 5, which=STRONG)
    rng = np.random.default_rng(9)
    panel.labels["y1"][TRAIN[1] + 1:] = rng.standard_normal(panel.labels["y1"][TRAIN[1] + 1:].shape)
    after = baseline_signals(panel, TRAIN, "y1", 5, which=STRONG)
    for name in STRONG:
        assert np.array_equal(before[name], after[name], equal_nan=True), name


def test_which_selects_and_rejects_names():
    panel = _panel(lambda X: X[:, :, 0], n_days=60, n_stocks=30)
    assert set(baseline_signals(panel, (0, 39), "y1", 5, which=("ridge2",))) == {"ridge2"}
    with pytest.raises(ValueError, match="unknown baseline"):
        baseline_signals(panel, (0, 39), "y1", 5, which=("ridge3",))
    info = {}  # too few training samples for the window ridge's 5 x 40 columns: left out, with the reason
    few = _panel(lambda X: X[:, :, 0], n_days=30, n_stocks=12, n_feat=40)
    assert "ridge_window" not in baseline_signals(few, (0, 9), "y1", 5, which=("ridge_window",), info=info)
    assert "training samples" in info["ridge_window"]["skipped"]
