"""The multiple-testing layer on seeded synthetic daily IC series: 1 of 20 variants has a true edge, 19 are noise.
The corrected procedures find the edge without flagging noise; the uncorrected t flags noise; PBO and the deflated
Sharpe tell an overfit pick from a real one."""

import math

import numpy as np
import pandas as pd
import pytest
from scipy import stats

from crnn_ray.metrics import hac_lags, newey_west_tstat
from crnn_ray.multiple_testing import (
    ablation_table,
    block_bootstrap_indices,
    deflated_sharpe,
    deflated_sharpe_of_best,
    expected_max_sharpe,
    hac_tstats,
    holm,
    paired_difference,
    paired_test,
    pbo_cscv,
    probabilistic_sharpe,
    romano_wolf,
    t_pvalue,
)

T, K, DRAWS, LEVEL = 250, 20, 50, 0.05


def _daily_ic_diffs(seed, edge=0.035, phi=0.2, common=0.3):
    """[T, K] daily IC differences (variant - base): AR(1) with a factor common to all variants (they share the
    base); column 0 has mean `edge` (HAC t about 4.4), the others mean 0."""
    rng = np.random.default_rng(seed)
    shocks = 0.1 * (math.sqrt(1 - common ** 2) * rng.standard_normal((T, K)) + common * rng.standard_normal((T, 1)))
    x = np.zeros((T, K))
    x[0] = shocks[0]
    for t in range(1, T):
        x[t] = phi * x[t - 1] + shocks[t]
    x[:, 0] += edge
    return x


def test_corrected_procedures_find_the_edge_and_the_plain_t_flags_noise():
    found = {"holm": 0, "romano_wolf": 0}
    noise = {"plain": 0, "holm": 0, "romano_wolf": 0}
    for seed in range(DRAWS):
        x = _daily_ic_diffs(seed)
        rw = romano_wolf(x, n_boot=500, seed=seed)
        plain = np.array([t_pvalue(t, T) for t in rw["tstat"]])
        adjusted = {"plain": plain, "holm": holm(plain), "romano_wolf": rw["p_adjusted"]}
        for name, p in adjusted.items():
            noise[name] += bool((p[1:] <= LEVEL).any())
            if name in found:
                found[name] += bool(p[0] <= LEVEL)
    share = {k: v / DRAWS for k, v in found.items()}
    false = {k: v / DRAWS for k, v in noise.items()}
    assert share["holm"] >= 0.8 and share["romano_wolf"] >= 0.8, share
    assert false["plain"] >= 0.6, false          # at least one noise variant "beats the base" most of the time
    assert false["romano_wolf"] <= 0.1 and false["holm"] <= 0.15, false  # the family-wise rate, about the level


def test_romano_wolf_statistics_and_seeding():
    x = _daily_ic_diffs(7)
    a = romano_wolf(x, n_boot=300, seed=1)
    assert a["lags"] == hac_lags(T) and a["n_days"] == T and a["block"] >= a["lags"] + 1
    assert np.allclose(a["tstat"], [newey_west_tstat(x[:, j], a["lags"]) for j in range(K)])
    assert np.array_equal(a["p_adjusted"], romano_wolf(x, n_boot=300, seed=1)["p_adjusted"])
    assert not np.array_equal(a["p_adjusted"], romano_wolf(x, n_boot=300, seed=2)["p_adjusted"])
    # step-down p-values are monotone in the ordered statistics and never below 1 / (1 + n_boot)
    order = np.argsort(-np.abs(a["tstat"]))
    assert (np.diff(a["p_adjusted"][order]) >= 0).all() and a["p_adjusted"].min() >= 1 / 301
    # a single series: the bootstrap p-value agrees with the HAC t's roughly
    one = romano_wolf(x[:, :1], n_boot=2000, seed=0)
    assert one["p_adjusted"][0] < 0.01 and t_pvalue(one["tstat"][0], T) < 0.01
    noise = romano_wolf(x[:, 5:6], n_boot=2000, seed=0)["p_adjusted"][0]
    assert abs(noise - t_pvalue(newey_west_tstat(x[:, 5], a["lags"]), T)) < 0.1
    # rows with a NaN anywhere are dropped (the common days)
    holes = x.copy()
    holes[:10, 3] = np.nan
    assert romano_wolf(holes, n_boot=50)["n_days"] == T - 10
    greater = romano_wolf(-x[:, :1], n_boot=500, seed=0, alternative="greater")  # a true loss is no win
    assert greater["p_adjusted"][0] > 0.9


def test_hac_tstats_is_newey_west_vectorised():
    rng = np.random.default_rng(0)
    x = rng.standard_normal((3, 120, 4)) + 0.2
    got = hac_tstats(x, 5)
    ref = np.array([[newey_west_tstat(x[b, :, k], 5) for k in range(4)] for b in range(3)])
    assert np.allclose(got, ref)
    assert np.isnan(hac_tstats(np.ones((50, 1)), 3)).all()  # no variance: NaN, like newey_west_tstat


def test_holm_by_hand_and_nan():
    # sorted 0.005, 0.01, 0.03, 0.04 -> 4*0.005, 3*0.01, 2*0.03, max(1*0.04, 0.06)
    assert np.allclose(holm([0.01, 0.04, 0.03, 0.005]), [0.03, 0.06, 0.06, 0.02])
    got = holm([0.01, np.nan, 0.04])
    assert np.isnan(got[1]) and np.allclose(got[[0, 2]], [0.02, 0.04])
    assert holm([0.6, 0.7]).max() == 1.0 and np.isnan(holm([np.nan])).all()


def test_block_bootstrap_indices_keep_blocks():
    rng = np.random.default_rng(0)
    idx = block_bootstrap_indices(200, 400, 8, rng, "stationary")
    assert idx.shape == (400, 200) and idx.min() >= 0 and idx.max() < 200
    breaks = (np.diff(idx, axis=1) % 200) != 1          # a new block starts where the next day is not t + 1
    assert 200 / (1 + breaks.sum(axis=1).mean()) == pytest.approx(8, rel=0.15)  # mean block length
    circ = block_bootstrap_indices(200, 50, 10, rng, "circular")
    assert (((np.diff(circ, axis=1) % 200) == 1)[:, [j for j in range(199) if (j + 1) % 10]]).all()
    with pytest.raises(ValueError):
        block_bootstrap_indices(200, 10, 5, rng, "moving")


def test_paired_difference_and_test():
    days = pd.date_range("2022-01-03", periods=6, freq="B")
    a = pd.Series([0.1, 0.2, np.nan, 0.4, 0.5, 0.6], index=days)
    b = pd.Series([0.0, 0.1, 0.1], index=days[[4, 0, 1]])        # another order, fewer days
    diff = paired_difference(a, b)
    assert list(diff.index) == list(days[[0, 1, 4]]) and np.allclose(diff, [0.0, 0.1, 0.5])
    with pytest.raises(ValueError):
        paired_difference(np.zeros(3), np.zeros(4))
    x = _daily_ic_diffs(3)
    res = paired_test(x[:, 0], np.zeros(T), horizon=5)
    assert res["lags"] == hac_lags(T, 5) and res["n_days"] == T
    assert res["tstat_hac"] == pytest.approx(newey_west_tstat(x[:, 0], res["lags"]))
    assert res["p_value"] == pytest.approx(2 * stats.t.sf(abs(res["tstat_hac"]), T - 1)) and res["p_value"] < 0.01


def test_ablation_table_names_the_variant_that_beats_its_base():
    x = _daily_ic_diffs(11)
    rng = np.random.default_rng(11)
    base = 0.03 + 0.1 * rng.standard_normal(T)
    daily = pd.DataFrame(base[:, None] + x, columns=[f"v{j:02d}" for j in range(K)])
    daily.insert(3, "base", base)
    table = ablation_table(daily, "base", n_boot=500)
    assert list(table["variant"]) == [f"v{j:02d}" for j in range(K)]
    assert table.set_index("variant")["beats_base"].to_dict() == {f"v{j:02d}": j == 0 for j in range(K)}
    assert (table["p_holm"] >= table["p_value"]).all() and (table["p_romano_wolf"] >= table["p_value"] - 1e-12).all()
    assert np.allclose(table["diff"], x.mean(axis=0))
    with pytest.raises(ValueError, match="base"):
        ablation_table(daily, "nope")


def test_pbo_is_a_coin_flip_on_noise_and_small_with_an_edge():
    noise = [pbo_cscv(_daily_ic_diffs(s, edge=0.0), n_splits=16)["pbo"] for s in range(DRAWS)]
    edge = [pbo_cscv(_daily_ic_diffs(s), n_splits=16)["pbo"] for s in range(DRAWS)]
    assert 0.35 <= np.mean(noise) <= 0.65, np.mean(noise)
    assert np.mean(edge) < 0.2, np.mean(edge)


def test_pbo_bookkeeping():
    rng = np.random.default_rng(0)
    perf = rng.standard_normal((130, 5))
    perf[:, 2] += 3.0                                   # line 2 wins in and out of every split
    res = pbo_cscv(perf, n_splits=8, metric="sharpe")
    assert res["n_combinations"] == math.comb(8, 4) == len(res["logits"]) and res["n_days"] == 128
    assert res["pbo"] == 0.0 and np.allclose(res["logits"], math.log((5 / 6) / (1 / 6)))
    # a line best in the first half and worst in the second: whenever it wins in sample it loses out of sample
    flip = np.zeros((64, 3))
    flip[:32, 0], flip[32:, 0] = 1.0, -1.0
    flip[:, 1:] = rng.standard_normal((64, 2)) * 1e-3
    blocks = pbo_cscv(flip, n_splits=2)
    assert blocks["n_combinations"] == 2 and blocks["pbo"] == 1.0
    with pytest.raises(ValueError):
        pbo_cscv(perf, n_splits=7)
    with pytest.raises(ValueError):
        pbo_cscv(perf[:, :1])


def test_expected_max_sharpe_matches_simulation():
    rng = np.random.default_rng(0)
    for n in (10, 100):
        sim = (0.05 * rng.standard_normal((4000, n))).max(axis=1).mean()
        assert expected_max_sharpe(n, 0.05 ** 2) == pytest.approx(sim, rel=0.05)
    assert expected_max_sharpe(1, 0.01) == 0.0 and expected_max_sharpe(1000, 0.01) > expected_max_sharpe(100, 0.01)


def test_probabilistic_sharpe_is_the_t_test_on_normal_returns():
    rng = np.random.default_rng(1)
    r = 0.1 + rng.standard_normal(500)
    t = r.mean() / r.std(ddof=1) * math.sqrt(500)
    assert probabilistic_sharpe(r) == pytest.approx(stats.t.cdf(t, 499), abs=0.01)
    fat = rng.standard_t(3, 500) / math.sqrt(3) + 0.1   # same mean, fat tails and noisier Sharpe
    assert deflated_sharpe(fat, n_trials=1, sharpe_var=0.0)["kurtosis"] > 4


def test_deflated_sharpe_discounts_the_best_of_many_noise_trials():
    plain_significant, deflated_significant, real = 0, 0, 0
    for seed in range(20):
        rng = np.random.default_rng(seed)
        trials = 0.01 * rng.standard_normal((T, 200))       # 200 skill-less daily return series
        best = deflated_sharpe_of_best(trials)
        plain_significant += best["psr"] > 0.95
        deflated_significant += best["dsr"] > 0.95
        assert best["sr0"] > 0 and best["dsr"] < best["psr"]
        trials[:, 17] += 0.01 * 0.4                          # one real edge: daily Sharpe 0.4 (about 6.3 a year)
        picked = deflated_sharpe_of_best(trials)
        real += picked["best"] == 17 and picked["dsr"] > 0.95
    assert plain_significant >= 18 and deflated_significant <= 2 and real >= 15  # power about 0.85 here

