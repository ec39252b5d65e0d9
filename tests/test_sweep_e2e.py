"""A tiny sweep end to end on a real local Ray: outputs, a killed worker resuming, divergence, --resume.

One sweep serves several checks (each Train run costs ~15-40 s of start-up on 2 CPUs): one variant, a
learning-rate grid [1e-3, 1e6] over 2 epochs. The 1e-3 trial's worker is SIGKILLed after its first
checkpoint (the test-only hook in tests/hooks/sitecustomize.py) and must resume and finish exactly like an
uninterrupted run; the 1e6 trial diverges and must not be ranked.
"""

from __future__ import annotations

import json
import math
from pathlib import Path

import pandas as pd
import pytest
import yaml

from conftest import init_ray_with_kill_hook, read_results_json, tiny_config, write_yaml
from crnn_ray.baselines import BASELINES
from crnn_ray.io import CliError
from crnn_ray.sweep import run_sweep
from crnn_ray.sweep.leaderboard import LEADERBOARD_COLUMNS, TRIAL_COLUMNS

pytestmark = pytest.mark.ray

@pytest.fixture(scope="module")
def ray_kill_hook(tmp_path_factory):
    """A local Ray whose Train workers SIGKILL themselves once, right after reporting epoch 1."""
    import ray

    init_ray_with_kill_hook(1, tmp_path_factory.mktemp("kill-markers"))
    yield ray
    ray.shutdown()


@pytest.fixture(scope="module")
def sweep(ray_kill_hook, tmp_path_factory):
    """Run the sweep once for the module (the kill hook active for it)."""
    root = tmp_path_factory.mktemp("e2e")
    doc = tiny_config(name="e2e", variants=["cnn1d/m01"],
                      training={"epochs": 2, "lr": [1e-3, 1e6], "early_stopping": {"patience": 5}})
    config = write_yaml(root / "e2e.yaml", doc)
    outcome = run_sweep(config, storage=root / "runs")
    return outcome, config, root


def _trial(outcome, lr):
    trials = outcome.trials
    match = trials[[json.loads(h)["lr"] == lr for h in trials.hparams]]
    assert len(match) == 1
    return match.iloc[0]


def test_outputs_have_every_contract_column(sweep):
    outcome, _, root = sweep
    exp = root / "runs" / "e2e"
    assert outcome.experiment_dir == exp
    for name in ("config.yaml", "data/panel.parquet", "trials.parquet", "leaderboard.parquet", "leaderboard.md"):
        assert (exp / name).is_file(), name
    trials = pd.read_parquet(exp / "trials.parquet")
    assert list(trials.columns) == TRIAL_COLUMNS and len(trials) == 2
    lb = pd.read_parquet(exp / "leaderboard.parquet")
    assert list(lb.columns) == LEADERBOARD_COLUMNS and len(lb[lb.family != "baseline"]) == 1
    # the baselines, on the same valid / select rows, listed after the ranked variant
    base = lb[lb.family == "baseline"].set_index("variant_id")
    assert set(base.index) == {f"baseline/{b}" for b in BASELINES} and (base.status == "baseline").all()
    assert base[["valid_ic_mean", "select_ic_mean"]].notna().all().all()
    row = lb.iloc[0]
    assert row.variant_id == "cnn1d/m01" and row.family == "cnn1d" and row.status == "ok"
    assert row.n_seeds == 1 and row.n_ok == 1 and row.params > 0
    assert math.isfinite(row.valid_ic_mean) and math.isfinite(row.samples_per_s) and row.samples_per_s > 0
    assert math.isfinite(row.select_ic_mean)  # the selection split's figure at the epoch valid chose
    assert math.isfinite(row.seed_ic) and math.isfinite(row.seed_pnl)
    assert not Path(row.best_checkpoint).is_absolute()  # relative to the experiment: it may be moved
    ckpt = exp / row.best_checkpoint
    assert ckpt.is_dir() and (ckpt / "best.pt").is_file() and (ckpt / "meta.json").is_file()
    assert str(ckpt).startswith(str(exp / "train"))  # persisted by Ray Train in the experiment's storage
    meta = json.loads((ckpt / "meta.json").read_text())
    assert meta["variant_id"] == "cnn1d/m01" and meta["panel"] == str(exp / "data" / "panel.parquet")
    resolved = yaml.safe_load((exp / "config.yaml").read_text())
    assert resolved["name"] == "e2e" and resolved["resolved"]["n_trials"] == 2
    md = (exp / "leaderboard.md").read_text()
    assert "`cnn1d/m01`" in md and "lr=0.001" in md
    # Tune's own logs are kept next to the trials
    trial_dirs = sorted(p for p in (exp / "tune").iterdir() if p.is_dir())
    assert [p.name for p in trial_dirs] == ["t000", "t001"]
    assert all((p / "progress.csv").is_file() and (p / "result.json").is_file() for p in trial_dirs)


def test_diverged_trial_is_reported_and_never_ranked(sweep):
    outcome, _, _ = sweep
    bad = _trial(outcome, 1e6)
    assert bad.status == "diverged" and "non-finite" in bad.reason
    assert math.isnan(bad.valid_ic)
    good = _trial(outcome, 1e-3)
    assert outcome.leaderboard.best_checkpoint[0] == good.checkpoint
    assert outcome.leaderboard.valid_ic_mean[0] == pytest.approx(good.valid_ic)


def test_killed_worker_resumes_from_its_checkpoint_and_matches_an_uninterrupted_run(sweep):
    outcome, config, root = sweep
    good = _trial(outcome, 1e-3)
    assert good.status == "ok" and good.epochs_run == 2 and good.resumed_from_epoch == 1
    reports = read_results_json(root / "runs" / "e2e" / "tune" / good.trial_id)
    assert [r["epoch"] for r in reports] == [1, 2]
    assert reports[0]["worker_pid"] != reports[1]["worker_pid"]  # epoch 2 ran in a new worker process
    assert good.threads == 1  # the quota: 1 CPU granted -> 1 torch thread

    # the same trial without Ray and without interruption (plain core, one thread like the worker)
    import torch

    from crnn_ray.data import Splits, load_panel
    from crnn_ray.sweep.config import load_config
    from crnn_ray.train import TrainConfig, train_one

    cfg = load_config(config)
    trial = next(t for t in cfg.grid() if t["key"] == good.trial_id)
    resolved = yaml.safe_load((root / "runs" / "e2e" / "config.yaml").read_text())["resolved"]
    panel = load_panel(resolved["panel"], labels=[cfg.data.label])
    from crnn_ray.data import make_splits

    splits = make_splits(panel.dates, cfg.data.splits, panel.horizon(cfg.data.label))
    assert isinstance(splits, Splits)
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        ref = train_one(trial["spec"], panel, splits, TrainConfig(**cfg.train_config_kwargs(trial)),
                        workdir=root / "ref")
    finally:
        torch.set_num_threads(threads)
    assert ref.status == "ok" and ref.best_epoch == good.best_epoch
    for key in ("valid_ic", "valid_rank_ic", "valid_icir", "valid_pnl_long_short", "valid_pnl_long"):
        assert good[key] == pytest.approx(ref.best_metrics[key], rel=1e-6, abs=1e-9), key


def test_resume_keeps_finished_trials(sweep):
    outcome, config, root = sweep
    exp = root / "runs" / "e2e"
    before = {p.name: len(read_results_json(p)) for p in (exp / "tune").iterdir() if p.is_dir()}
    again = run_sweep(None, storage=root / "runs", name="e2e", resume=True)
    after = {p.name: len(read_results_json(p)) for p in (exp / "tune").iterdir() if p.is_dir()}
    assert after == before  # nothing was trained again
    cols = ["trial_id", "status", "valid_ic", "checkpoint"]
    pd.testing.assert_frame_equal(again.trials[cols], outcome.trials[cols])
    # the resumed sweep continues its MLflow runs (one sweep run, one per model) and appends to its log
    from mlflow.tracking import MlflowClient

    from crnn_ray.tracking import tracking_uri

    client = MlflowClient(tracking_uri(exp))
    runs = client.search_runs([client.get_experiment_by_name("e2e").experiment_id])
    assert sorted(r.data.tags.get("crnn_ray.role", r.data.tags.get("crnn_ray.model")) for r in runs) == \
        sorted(["sweep", *outcome.trials.trial_id])
    assert all(r.info.status in ("FINISHED", "FAILED") for r in runs)
    log = (exp / "sweep.log").read_text()
    assert log.count("---- resumed ") == 1 and log.count("# Leaderboard") == 2
    # starting it again without --resume refuses instead of overwriting
    with pytest.raises(CliError, match="experiment exists; continue it with --resume"):
        run_sweep(config, storage=root / "runs")


def test_unsatisfiable_gpu_request_fails_fast(ray_local, tmp_path):
    """1 GPU per trial on a cluster with none: a one-line error before any trial starts, not a hang."""
    doc = tiny_config(name="nogpu", resources={"gpus_per_trial": 1})
    config = write_yaml(tmp_path / "nogpu.yaml", doc)
    with pytest.raises(CliError, match=r"^nogpu\.yaml: resources\.gpus_per_trial: a trial needs \{CPU: 1, GPU: 1\}"):
        run_sweep(config, storage=tmp_path / "runs")
    assert not (tmp_path / "runs" / "nogpu").exists()  # nothing written: no config.yaml, no panel


def test_a_copied_experiment_resumes_and_scores_from_its_own_folder(sweep, tmp_path):
    """Paths inside an experiment are relative: a copy resumes (training nothing) and scores with the
    original renamed away."""
    import shutil

    from crnn_ray.score.__main__ import main as score_main

    outcome, _, root = sweep
    exp = root / "runs" / "e2e"
    copy = tmp_path / "elsewhere" / "e2e"
    shutil.copytree(exp, copy)
    hidden = exp.with_name("e2e-renamed")
    exp.rename(hidden)
    try:
        before = {p.name: len(read_results_json(p)) for p in (copy / "tune").iterdir() if p.is_dir()}
        again = run_sweep(None, storage=copy.parent, name="e2e", resume=True)
        assert {p.name: len(read_results_json(p)) for p in (copy / "tune").iterdir() if p.is_dir()} == before
        stored = pd.read_parquet(copy / "trials.parquet").checkpoint.dropna()
        assert len(stored) == 2 and all(not Path(c).is_absolute() and (copy / c / "best.pt").is_file()
                                        for c in stored)
        assert list(again.trials.checkpoint) == list(outcome.trials.checkpoint)
        assert score_main(["--experiment", str(copy), "--out", str(tmp_path / "score")]) == 0
        assert (tmp_path / "score" / "metrics.json").is_file()
    finally:
        hidden.rename(exp)


def test_resume_of_a_corrupt_config_is_one_line_before_ray(sweep, tmp_path):
    import shutil

    _, _, root = sweep
    copy = tmp_path / "runs" / "e2e"
    shutil.copytree(root / "runs" / "e2e", copy)
    (copy / "config.yaml").write_text("name: e2e\ndata: {synth: {days: [\n")
    with pytest.raises(CliError, match=r"config\.yaml: corrupt \(not valid YAML") as err:
        run_sweep(None, storage=copy.parent, name="e2e", resume=True)
    assert "start again with --overwrite" in str(err.value) and "\n" not in str(err.value)


@pytest.mark.parametrize("damage", ["experiment_state", "tuner.pkl"])
def test_resume_with_damaged_tune_state_sets_it_aside_and_loses_nothing(sweep, tmp_path, capsys, damage):
    """A full disk can truncate Tune's own state: --resume sets it aside in one line and a new Tune run continues
    every pack from its checkpoints; every finished row comes back as it was, nothing is trained again."""
    import shutil

    outcome, _, root = sweep
    copy = tmp_path / "runs" / "e2e"
    shutil.copytree(root / "runs" / "e2e", copy)
    if damage == "experiment_state":
        state = sorted((copy / "tune").glob("experiment_state-*.json"))[-1]
        state.write_text(state.read_text()[: len(state.read_text()) // 2])
    else:
        pkl = copy / "tune" / "tuner.pkl"
        pkl.write_bytes(pkl.read_bytes()[:40])
    capsys.readouterr()
    again = run_sweep(None, storage=copy.parent, name="e2e", resume=True)
    out = capsys.readouterr().out
    assert "Tune's saved state is damaged" in out and "set aside" in out
    keep = ["trial_id", "status", "epochs_run", "best_epoch", "valid_ic", "select_ic"]
    pd.testing.assert_frame_equal(again.trials[keep].reset_index(drop=True),
                                  outcome.trials[keep].reset_index(drop=True))
