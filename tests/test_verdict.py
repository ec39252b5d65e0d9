"""The ablation verdict (crnn_ray.score.verdict) on seeded synthetic daily RankIC series: the one modification
with a real edge over its base is flagged after the family-wise correction, noise is not, each variant is
compared with its own family's base, and "pick the best" gets its PBO and deflated Sharpe."""

from __future__ import annotations

import numpy as np
import pandas as pd
import pytest

from crnn_ray.score.verdict import ablation_verdict, default_bases, selection_overfit

GRU = [f"convgru/m{i:02d}" for i in range(1, 9)]
CNN = [f"cnn1d/m{i:02d}" for i in range(1, 5)]


def daily_series(edge_variant: str | None, edge: float = 0.02, days: int = 400, seed: int = 0) -> pd.DataFrame:
    """Daily RankIC: a common market-of-skill factor, AR(1) noise per variant, +edge for one variant."""
    rng = np.random.default_rng(seed)
    dates = pd.bdate_range("2020-01-01", periods=days)
    common = rng.normal(0.03, 0.04, days)
    cols = {}
    for v in GRU + CNN:
        e = np.zeros(days)
        shocks = rng.normal(0, 0.03, days)
        for t in range(days):
            e[t] = 0.4 * (e[t - 1] if t else 0.0) + shocks[t]
        cols[v] = common + e + (edge if v == edge_variant else 0.0)
    return pd.DataFrame(cols, index=dates)


def test_bases_are_each_familys_model_1():
    assert default_bases(GRU + CNN) == {"convgru": "convgru/m01", "cnn1d": "cnn1d/m01"}
    assert default_bases(GRU[1:]) == {}  # m01 not run: no base for the family


def test_the_true_edge_survives_the_correction_and_noise_does_not():
    flagged_true, flagged_noise_rw, flagged_noise_raw = 0, 0, 0
    draws = 12
    for seed in range(draws):
        table, info = ablation_verdict(daily_series("convgru/m05", seed=seed), horizon=1, n_boot=300, seed=seed)
        assert info["n_comparisons"] == len(GRU) - 1 + len(CNN) - 1
        assert set(table.loc[table.family == "cnn1d", "base"]) == {"cnn1d/m01"}
        row = table.set_index("variant")
        flagged_true += bool(row.loc["convgru/m05", "beats_base"])
        noise = row.drop(index="convgru/m05")
        flagged_noise_rw += bool(noise["beats_base"].any())
        flagged_noise_raw += bool(noise["beats_base_uncorrected"].any())
        assert (table["p_holm"] >= table["p_value"] - 1e-12).all()
    assert flagged_true >= 0.8 * draws
    assert flagged_noise_rw <= 0.25 * draws
    assert flagged_noise_raw > flagged_noise_rw  # what the correction removes


def test_pbo_is_high_on_noise_and_low_with_an_edge_and_the_pick_is_deflated():
    noise = daily_series(None, seed=3)
    edge = daily_series("convgru/m05", edge=0.03, seed=3)
    assert selection_overfit(noise, None, None, horizon=1)["pbo"]["pbo"] > 0.2
    assert selection_overfit(edge, None, None, horizon=1)["pbo"]["pbo"] < 0.1
    pnl = (noise - 0.03) * 0.01  # skill-less books: mean ~0
    out = selection_overfit(noise, pnl["convgru/m03"], pnl, horizon=1)
    ds = out["deflated_sharpe"]
    assert ds["n_trials"] == noise.shape[1] and ds["sr0"] > 0 and ds["dsr"] < ds["psr"]


def test_a_short_record_says_why_it_has_no_pbo():
    out = selection_overfit(daily_series(None, days=20), None, None, horizon=5)
    assert np.isnan(out["pbo"]["pbo"]) and "too few" in out["pbo"]["note"]


def test_a_record_without_bases_has_an_empty_verdict_with_a_note():
    table, info = ablation_verdict(daily_series(None)[GRU[1:]], horizon=1)
    assert table.empty and "no variant beside a base" in info["note"]


@pytest.mark.parametrize("horizon", [1, 5])
def test_lags_follow_the_label_horizon(horizon):
    _, info = ablation_verdict(daily_series(None), horizon=horizon, n_boot=50)
    assert info["hac_lags"] >= horizon - 1
