"""Packs (resources.models_per_trial): several models trained one after another by one Ray Train run.

On a real local Ray: a pack of three models gives each model the metrics and weights of three one-model Train
runs, even with its worker SIGKILLed after the second model's first epoch (it resumes there, the finished
first model is not trained again); a model that diverges does not stop its pack.
"""

from __future__ import annotations

import json
import math

import pytest
import torch

from conftest import init_ray_with_kill_hook, read_results_json, tiny_config, write_yaml
from crnn_ray.sweep import run_sweep

pytestmark = pytest.mark.ray


@pytest.fixture(scope="module")
def kill_t001(tmp_path_factory):
    """A local Ray whose Train worker SIGKILLs itself once, right after model t001 reported epoch 1 — unless
    the marker file `killed-t001` already exists (the hook then thinks it has done so)."""
    import ray

    markers = tmp_path_factory.mktemp("kill-markers")
    init_ray_with_kill_hook(1, markers, trial="t001")
    yield markers
    ray.shutdown()


def _sweep(root, name, models_per_trial, **overrides):
    doc = tiny_config(name=name, variants=["cnn1d/m01"], seeds=[0, 1, 2],
                      training={"epochs": 2, "early_stopping": {"patience": 5}},
                      resources={"cpus_per_trial": 1, "models_per_trial": models_per_trial})
    doc.update(overrides)
    return run_sweep(write_yaml(root / f"{name}.yaml", doc), storage=root / "runs")


@pytest.fixture(scope="module")
def single_and_packed(kill_t001, tmp_path_factory):
    root = tmp_path_factory.mktemp("packs")
    (kill_t001 / "killed-t001").write_text("not in the one-model runs")
    single = _sweep(root, "single", 1)
    (kill_t001 / "killed-t001").unlink()
    packed = _sweep(root, "packed", 3)
    return root, single, packed


def test_a_pack_is_one_train_run_with_a_row_per_model(single_and_packed):
    root, single, packed = single_and_packed
    assert sorted(p.name for p in (root / "runs" / "single" / "train").iterdir() if p.is_dir()) == [
        "single-t000", "single-t001", "single-t002"]
    assert [p.name for p in (root / "runs" / "packed" / "train").iterdir() if p.is_dir()] == ["packed-p000"]
    assert list(packed.trials.trial_id) == ["t000", "t001", "t002"]
    assert (packed.trials.status == "ok").all() and (packed.trials.epochs_run == 2).all()
    for row in packed.trials.itertuples():  # each model's own checkpoint, in the one-model format
        ckpt = root / "runs" / "packed" / row.checkpoint
        assert ckpt.name == row.trial_id and (ckpt / "best.pt").is_file()
        assert json.loads((ckpt / "meta.json").read_text())["trial_id"] == row.trial_id
    assert packed.time["slots"] == 1 and 0 <= packed.time["overhead"] <= 1
    assert single.time["slots"] == 2 and packed.time["epoch_s"] > 0


def test_a_killed_pack_resumes_at_its_unfinished_model(single_and_packed):
    root, _, packed = single_and_packed
    rows = packed.trials.set_index("trial_id")
    assert rows.resumed_from_epoch.to_dict() == {"t000": 0, "t001": 1, "t002": 0}
    reports = read_results_json(root / "runs" / "packed" / "tune" / "p000")
    # every model's epochs once, in order: the finished t000 was not trained again after the restart
    assert [(r["trial_key"], r["epoch"]) for r in reports] == [
        ("t000", 1), ("t000", 2), ("t001", 1), ("t001", 2), ("t002", 1), ("t002", 2)]
    pids = [r["worker_pid"] for r in reports]
    assert pids[2] != pids[3] and pids[3] == pids[5]  # t001's epoch 2 ran in the restarted worker


def test_each_packed_model_matches_its_one_model_run(single_and_packed):
    root, single, packed = single_and_packed
    a, b = single.trials.set_index("trial_id"), packed.trials.set_index("trial_id")
    for key in ("t000", "t001", "t002"):
        assert b.loc[key, "best_epoch"] == a.loc[key, "best_epoch"]
        for metric in ("valid_ic", "valid_rank_ic", "valid_pnl_long_short", "select_ic", "select_rank_ic"):
            assert b.loc[key, metric] == pytest.approx(a.loc[key, metric], rel=1e-6, abs=1e-9), (key, metric)
        wa, wb = (torch.load(root / "runs" / name / t.loc[key, "checkpoint"] / "best.pt", weights_only=True)
                  for name, t in (("single", a), ("packed", b)))
        assert wa.keys() == wb.keys() and all(torch.allclose(wa[k], wb[k], atol=1e-6) for k in wa), key


def test_a_diverging_model_does_not_stop_its_pack(kill_t001, tmp_path):
    # epochs 1: the kill hook only fires after an epoch that leaves its model running
    outcome = _sweep(tmp_path, "div", 2, seeds=[0],
                     training={"epochs": 1, "lr": [1e6, 1e-3], "early_stopping": {"patience": 5}})
    rows = outcome.trials.set_index("trial_id")
    assert rows.loc["t000", "status"] == "diverged" and "non-finite" in rows.loc["t000", "reason"]
    assert rows.loc["t001", "status"] == "ok" and math.isfinite(rows.loc["t001", "valid_ic"])
    assert outcome.n_ranked == 1 and (tmp_path / "runs" / "div" / rows.loc["t001", "checkpoint"]).is_dir()


def test_a_stacked_pack_matches_its_one_model_runs(single_and_packed, kill_t001, tmp_path):
    """resources.stack_size 3: the pack's three seeds of one spec train as one vmapped stack (one Train run),
    each model keeping its own row, reports and checkpoint, equal to its one-model run up to float rounding."""
    root, single, _ = single_and_packed
    (kill_t001 / "killed-t001").write_text("no kill in this sweep")
    stacked = _sweep(tmp_path, "stacked", 3, resources={"cpus_per_trial": 1, "models_per_trial": 3, "stack_size": 3})
    a, b = single.trials.set_index("trial_id"), stacked.trials.set_index("trial_id")
    assert (b.status == "ok").all() and list(b.index) == ["t000", "t001", "t002"]
    reports = read_results_json(tmp_path / "runs" / "stacked" / "tune" / "p000")
    # one round per epoch: every model's epoch 1 before any epoch 2 (one after another would be t000 1, t000 2, ...)
    assert [(r["trial_key"], r["epoch"]) for r in reports] == [
        ("t000", 1), ("t001", 1), ("t002", 1), ("t000", 2), ("t001", 2), ("t002", 2)]
    for key in ("t000", "t001", "t002"):
        assert b.loc[key, "best_epoch"] == a.loc[key, "best_epoch"]
        for metric in ("valid_ic", "valid_rank_ic", "select_rank_ic"):
            assert b.loc[key, metric] == pytest.approx(a.loc[key, metric], abs=1e-4), (key, metric)
        wa = torch.load(root / "runs" / "single" / a.loc[key, "checkpoint"] / "best.pt", weights_only=True)
        wb = torch.load(tmp_path / "runs" / "stacked" / b.loc[key, "checkpoint"] / "best.pt", weights_only=True)
        assert wa.keys() == wb.keys() and all(torch.allclose(wa[k], wb[k], atol=1e-4) for k in wa), key
    # tiny.yaml caps an epoch at 10 steps of 256: the rows say the nets saw 2 x 2,560 of their training rows
    assert (b.finished_by == "epochs").all() and (b.samples_seen == 2 * b.train_rows.clip(upper=10 * 256)).all()
