"""Work stealing between packs on a real local Ray: a pack that has trained its own models takes over a model
dealt to a pack still busy with a long one (crnn_ray.sweep.placement.PackQueue), and every model still gets one
row, its own checkpoint and its status."""

from __future__ import annotations

import json

import pytest

from conftest import tiny_config, write_yaml

pytestmark = pytest.mark.ray


@pytest.fixture(scope="module")
def stolen(ray_local, tmp_path_factory):
    from crnn_ray.sweep import run_sweep

    root = tmp_path_factory.mktemp("steal")
    # one slow recurrent net and three CNNs in packs of two: by cost the slow one shares its pack with the
    # cheapest CNN, the other pack gets two CNNs and is done long before
    # (the recurrent net's 2 x 180 steps take ~25 s; a CNN's, with its reports, ~6 s)
    doc = tiny_config(name="steal", variants=["convlstm/m4", "cnn1d/m01", "cnn1d/m02", "cnn1d/m06"],
                      training={"epochs": 2, "batch_size": 64, "max_steps_per_epoch": 180,
                                "early_stopping": {"patience": 5}},
                      resources={"cpus_per_trial": 1, "models_per_trial": 2})
    doc["data"]["synth"] = {**doc["data"]["synth"], "symbols": 80}
    outcome = run_sweep(write_yaml(root / "steal.yaml", doc), storage=root / "runs")
    return root, outcome


def _reports(root, pack: str) -> list[dict]:
    path = root / "runs" / "steal" / "tune" / pack / "result.json"
    return [json.loads(line) for line in path.read_text().splitlines() if line.strip()]


def test_the_idle_pack_takes_over_the_busy_packs_unstarted_model(stolen):
    root, outcome = stolen
    trials = outcome.trials
    assert list(trials.trial_id) == ["t000", "t001", "t002", "t003"] and (trials.status == "ok").all()
    dealt = {}
    for pack in ("p000", "p001"):
        rows = _reports(root, pack)
        dealt[pack] = sorted({r["trial_key"] for r in rows})
    assert "t000" in dealt["p000"]                       # the slow net stays where it was dealt
    assert sorted(dealt["p000"] + dealt["p001"]) == ["t000", "t001", "t002", "t003"]  # each trained once
    assert len(dealt["p001"]) == 3, dealt                # the quick pack did its two and took the third
    for row in trials.itertuples():                      # each model's checkpoint is where its trainer put it
        pack = next(p for p, keys in dealt.items() if row.trial_id in keys)
        assert f"steal-{pack}/" in row.checkpoint
        meta = json.loads((root / "runs" / "steal" / row.checkpoint / "meta.json").read_text())
        assert meta["trial_id"] == row.trial_id and meta["status"] == "ok"
    run = root / "runs" / "steal" / "train" / "steal-p001"
    pack_file = sorted(d for d in run.glob("checkpoint_*") if d.is_dir())[-1] / "pack.json"
    info = json.loads(pack_file.read_text())
    assert [m["key"] for m in info["stolen"]] == [k for k in dealt["p001"] if k not in info["models"][:2]]


def test_resume_keeps_what_each_pack_trained(stolen):
    """--resume of the finished experiment: the queue starts from the packs' checkpoints (the taken-over model
    stays the quick pack's), nothing trains again, the rows are the same."""
    from crnn_ray.sweep import run_sweep

    root, outcome = stolen
    before = {p: len(_reports(root, p)) for p in ("p000", "p001")}
    again = run_sweep(None, storage=root / "runs", name="steal", resume=True)
    assert {p: len(_reports(root, p)) for p in ("p000", "p001")} == before
    cols = ["trial_id", "status", "valid_ic", "select_ic", "checkpoint"]
    assert again.trials[cols].equals(outcome.trials[cols])
