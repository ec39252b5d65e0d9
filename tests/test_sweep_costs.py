"""Dealing packs by measured cost (crnn_ray.sweep.costs, crnn_ray.sweep.placement) and the sweep's time split
(no Ray: the arithmetic)."""

from __future__ import annotations

import math

import pandas as pd
import pytest

from crnn_ray.sweep.collect import time_split
from crnn_ray.sweep.costs import model_costs, step_costs
from crnn_ray.sweep.placement import deal, make_packs


def _grid(costs: list[float]) -> tuple[list[dict], dict]:
    grid = [{"key": f"t{i:03d}", "spec": "s", "variant_id": f"v{i}"} for i in range(len(costs))]
    return grid, {g["key"]: c for g, c in zip(grid, costs)}


def test_longest_first_onto_the_least_loaded_pack():
    # the quickstart's measured model times (s): round-robin put the two slowest nets in one pack (48 vs 99 s)
    grid, costs = _grid([22, 40, 24, 57, 2, 2])
    rr = [sum(costs[m["key"]] for m in p) for p in deal(grid, 2, 3, None)]
    assert sorted(rr) == [48, 99]
    packs = deal(grid, 2, 3, costs)
    loads = sorted(sum(costs[m["key"]] for m in p) for p in packs)
    assert loads == [66, 81]  # the best split with at most 3 models each
    assert all(len(p) <= 3 for p in packs)
    for p in packs:  # each pack keeps grid order
        assert [m["key"] for m in p] == sorted(m["key"] for m in p)


def test_equal_costs_deal_round_robin_and_pack_keys_stay():
    grid, costs = _grid([5.0] * 6)
    assert deal(grid, 2, 3, costs) == deal(grid, 2, 3, None)
    packs = make_packs(grid, 3, costs=costs)
    assert [p["key"] for p in packs] == ["p000", "p001"]
    assert [[m["key"] for m in p["models"]] for p in packs] == [["t000", "t002", "t004"], ["t001", "t003", "t005"]]
    assert [p["key"] for p in make_packs(grid[:2], 1, costs=costs)] == ["t000", "t001"]
    assert [p["key"] for p in make_packs(grid, 3, prefix="g2p")] == ["g2p000", "g2p001"]


def test_a_recurrent_net_costs_more_than_a_cnn_per_sample():
    from crnn_ray.zoo import load_zoo

    zoo = load_zoo()
    got = step_costs([zoo["convlstm/m4"].spec, zoo["cnn1d/m02"].spec], n_features=8, lookback=20)
    (rnn_step, rnn_infer), (cnn_step, cnn_infer) = got.values()
    assert rnn_step > 3 * cnn_step and rnn_infer > 3 * cnn_infer


def test_model_costs_scale_with_the_epochs_and_rows_a_trial_touches():
    from crnn_ray.data import load_panel, make_splits, save_panel, synthesize
    from crnn_ray.zoo import load_zoo

    df, meta = synthesize(n_symbols=30, n_days=200, seed=1)
    import tempfile
    from pathlib import Path

    path = Path(tempfile.mkdtemp()) / "p.parquet"
    save_panel(df, path, meta)
    panel = load_panel(path)
    splits = make_splits(panel.dates, {"fractions": [0.6, 0.2, 0.2], "select": 0.5}, 5)
    spec = load_zoo()["cnn1d/m02"].spec
    base = {"label": "y5", "lookback": 10, "seed": 0, "epochs": 2, "batch_size": 64, "max_steps_per_epoch": 4}
    grid = [{"key": "a", "spec": spec, "train_config": base},
            {"key": "b", "spec": spec, "train_config": {**base, "epochs": 4}}]
    costs = model_costs(grid, panel, [splits])
    assert costs["b"] == pytest.approx(2 * costs["a"], rel=0.6)  # timed separately: the same spec, twice the epochs
    assert costs["a"] > 0


class _Result:
    """What time_split reads of a Tune Result: its reports (metrics_dataframe, the last in metrics)."""

    def __init__(self, rows):
        self.metrics_dataframe = pd.DataFrame(rows)
        self.metrics = rows[-1]


def test_time_split_names_where_the_slot_seconds_went():
    t0 = 1000.0
    pack = [  # a worker entering 20 s after the fit began (its trainable at 5 s), two models of 10 + 10 s epochs
        {"worker_t0": t0 + 20, "driver_t0": t0 + 5, "trial_key": "t000", "model_t0": t0 + 21, "report_t": t0 + 32,
         "epoch_s": 10.0, "train_s": 6.0, "valid_s": 4.0},
        {"worker_t0": t0 + 20, "driver_t0": t0 + 5, "trial_key": "t001", "model_t0": t0 + 33, "report_t": t0 + 44,
         "epoch_s": 10.0, "train_s": 6.0, "valid_s": 4.0},
    ]
    t = time_split([([_Result(pack)], t0, t0 + 50)], slots=2)
    assert t["slot_s"] == 100 and t["epoch_s"] == 20 and t["train_s"] == 12 and t["valid_s"] == 8
    assert t["startup_s"] == 20 and t["startup_tune_s"] == 5
    assert t["model_overhead_s"] == pytest.approx(2.0)   # 11 s active per model, 10 s of epochs
    assert t["idle_s"] == pytest.approx(58.0)            # the second slot had no pack at all
    assert t["overhead"] == pytest.approx(0.8)
    assert math.isclose(t["startup_s"] + t["model_overhead_s"] + t["idle_s"] + t["epoch_s"], t["slot_s"])


def test_pack_queue_hands_each_model_to_one_pack_longest_unstarted_first():
    from crnn_ray.sweep.placement import PackQueue

    grid, costs = _grid([50, 2, 1, 1, 30])
    a, b = [grid[0], grid[1]], [grid[2], grid[3], grid[4]]
    q = PackQueue({"p000": a, "p001": b}, costs)
    assert q.claim("p000", "t000") and q.claim("p001", "t002") and q.claim("p001", "t003")
    # p001 is quicker: after its own it would take t004 (its own, unclaimed) ... and then p000's t001
    assert q.claim("p001", "t004")
    assert q.steal("p001")["key"] == "t001"
    assert not q.claim("p000", "t001")            # p000 skips the model p001 took
    assert q.steal("p000") is None and q.steal("p001") is None
    assert q.owners() == {"t000": "p000", "t001": "p001", "t002": "p001", "t003": "p001", "t004": "p001"}
    # what a pack had started (its checkpoint, on --resume) stays its own; unmanaged packs always may
    q = PackQueue({"p000": a, "p001": b}, costs, claimed={"t000": "p000", "t001": "p000"})
    assert not q.claim("p001", "t001") and q.claim("p000", "t001")
    assert q.claim("p999", "t001") and q.steal("p999") is None
    assert q.steal("p001")["key"] == "t004"      # the longest unstarted
