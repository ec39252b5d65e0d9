"""A corrupt checkpoint is not retried to death: the worker resumes from the newest intact older checkpoint,
or from epoch 0, with one warning line and no traceback.

The issue measured it on a real local Ray: a truncated `last.pt` of an unfinished trial failed 6 times with 8
tracebacks over 98 s, then the trial ended `failed` and its variant left the leaderboard, while an intact
older checkpoint went unused. The fallback (`crnn_ray.sweep.trial.resume_point`) is tested here without Ray
on real checkpoints, then once end to end: a sweep whose worker is killed after epoch 2 (the test hook of
tests/hooks), the newest persisted checkpoint truncated, and `--resume`.
"""

from __future__ import annotations

import math
import re
import shutil
from pathlib import Path

import pytest
import torch

from conftest import init_ray_with_kill_hook, tiny_config, write_yaml
from crnn_ray.data import load_panel, make_splits, save_panel, synthesize
from crnn_ray.sweep.trial import resume_point
from crnn_ray.train import TrainConfig, train_one

SPEC = "cnn1d(c3s1+batchnorm+relu+dropout+avgpool)"


def _truncate(path: Path) -> None:
    data = path.read_bytes()
    path.write_bytes(data[: len(data) // 3])


# ------------------------------------------------------------------------------------- without Ray
@pytest.fixture(scope="module")
def run(tmp_path_factory):
    """A 3-epoch run whose every checkpoint is kept under run_dir/checkpoint_<epoch> (as Train persists
    them), plus the panel and config to continue it."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    root = tmp_path_factory.mktemp("fallback")
    df, meta = synthesize(n_symbols=40, n_days=100, seed=0)
    save_panel(df, root / "panel.parquet", meta)
    panel = load_panel(root / "panel.parquet")
    splits = make_splits(panel.dates, {"fractions": [0.6, 0.2, 0.2]}, panel.horizon("y5"))
    cfg = TrainConfig(epochs=3, batch_size=64, max_steps_per_epoch=6, lr=3e-3, patience=5, eval_batch_size=512,
                      seed=1)
    run_dir = root / "train" / "exp-t000"

    def keep(metrics, directory):
        shutil.copytree(directory, run_dir / f"checkpoint_00000{metrics['epoch'] - 1}")

    full = train_one(SPEC, panel, splits, cfg, workdir=root / "w", on_epoch=keep)
    yield panel, splits, cfg, run_dir, full
    torch.set_num_threads(threads)


def _copy(run_dir: Path, tmp_path: Path) -> Path:
    copy = tmp_path / "train" / run_dir.name
    shutil.copytree(run_dir, copy)
    return copy


def test_an_intact_checkpoint_is_used_as_it_is(run, tmp_path):
    *_, run_dir, _ = run
    newest = run_dir / "checkpoint_000002"
    assert resume_point(newest, run_dir, str(newest), "[v] t000") == (newest, None)


def test_a_corrupt_checkpoint_falls_back_to_the_newest_intact_older_one(run, tmp_path):
    panel, splits, cfg, run_dir, full = run
    run_dir = _copy(run_dir, tmp_path)
    newest = run_dir / "checkpoint_000002"
    _truncate(newest / "last.pt")
    directory, line = resume_point(newest, run_dir, str(newest), "[cnn1d/m01] t000")
    print(line)
    assert directory == run_dir / "checkpoint_000001"
    assert re.fullmatch(
        rf"\[cnn1d/m01\] t000: checkpoint {re.escape(str(newest))} is corrupt \(last\.pt: corrupt checkpoint "
        r"file \(RuntimeError: [^()]+\)\); resuming from checkpoint_000001 \(epoch 2\)", line), line
    assert "\n" not in line and "Traceback" not in line
    # continuing from the older one ends exactly where the uninterrupted run did
    again = train_one(SPEC, panel, splits, cfg, workdir=tmp_path / "w", resume_from=directory)
    assert again.status == "ok" and len(again.history) == 3
    assert again.best_metrics["valid_ic"] == full.best_metrics["valid_ic"]
    a, b = (torch.load(d / "last.pt", weights_only=True) for d in (again.checkpoint_dir, full.checkpoint_dir))
    assert all(torch.equal(a[k], b[k]) for k in a)

    # the one before is damaged too (another file, another way): the oldest intact one
    (run_dir / "checkpoint_000001" / "state.pt").write_bytes(b"not a torch file")
    directory, line = resume_point(newest, run_dir, str(newest), "[cnn1d/m01] t000")
    assert directory == run_dir / "checkpoint_000000" and line.endswith("resuming from checkpoint_000000 (epoch 1)")


def test_no_intact_checkpoint_restarts_from_epoch_0(run, tmp_path):
    *_, run_dir, _ = run
    run_dir = _copy(run_dir, tmp_path)
    newest = run_dir / "checkpoint_000002"
    (newest / "meta.json").write_text("{ half a json")
    (run_dir / "checkpoint_000001" / "meta.json").unlink()
    _truncate(run_dir / "checkpoint_000000" / "best.pt")
    directory, line = resume_point(newest, run_dir, str(newest), "[v] t000")
    print(line)
    assert directory is None
    assert line.startswith(f"[v] t000: checkpoint {newest} is corrupt (meta.json: corrupt checkpoint meta "
                           "(JSONDecodeError")
    assert line.endswith("; no intact checkpoint: restarting from epoch 0") and "\n" not in line
    # a run directory that is not there (storage that is not a shared filesystem): epoch 0 as well
    assert resume_point(newest, tmp_path / "nowhere", str(newest), "[v] t000")[0] is None


def test_a_downloaded_copy_of_the_newest_is_not_taken_for_an_older_one(run, tmp_path):
    """Train may hand the newest checkpoint as a local copy (remote storage): it is skipped by name in the
    run directory, not tried a second time."""
    *_, run_dir, _ = run
    run_dir = _copy(run_dir, tmp_path)
    shown = run_dir / "checkpoint_000002"
    _truncate(shown / "last.pt")
    local = tmp_path / "download" / "tmpabc"
    shutil.copytree(shown, local)
    directory, line = resume_point(local, run_dir, str(shown), "[v] t000")
    assert directory == run_dir / "checkpoint_000001" and f"checkpoint {shown} is corrupt" in line


# ---------------------------------------------------------------------------------------- real Ray
@pytest.fixture(scope="module")
def ray_kill_after_2(tmp_path_factory):
    """A local Ray whose Train workers SIGKILL themselves once, right after reporting epoch 2 (the test hook of
    tests/hooks/sitecustomize.py); the workers' prints reach this process (log_to_driver)."""
    import ray

    init_ray_with_kill_hook(2, tmp_path_factory.mktemp("kill-markers"), log_to_driver=True)
    yield ray
    ray.shutdown()


@pytest.mark.ray
def test_a_corrupt_newest_checkpoint_resumes_from_the_older_one_without_retries(ray_kill_after_2, tmp_path, capfd):
    import json

    import pandas as pd

    from crnn_ray.sweep import run_sweep

    # run 1: the worker dies after epoch 2 and nothing restarts it, so the trial stays unfinished
    doc = tiny_config(name="rel", variants=["cnn1d/m01"], training={"epochs": 3, "early_stopping": {"patience": 5}},
                      fault_tolerance={"max_failures": 0, "trial_max_failures": 0})
    config = write_yaml(tmp_path / "rel.yaml", doc)
    first = run_sweep(config, storage=tmp_path / "runs")
    assert list(first.trials.status) == ["failed"]
    run_dir = tmp_path / "runs" / "rel" / "train" / "rel-t000"
    # each checkpoint holds the pack's model directories (here one: t000; next to them Train's
    # checkpoint_manager_snapshot.json)
    kept = {json.loads((d / "t000" / "meta.json").read_text())["epoch"]: d / "t000"
            for d in run_dir.glob("checkpoint_*") if d.is_dir()}
    assert sorted(kept) == [1, 2]  # Train keeps two
    _truncate(kept[2] / "last.pt")

    # run 2: --resume; the newest checkpoint is corrupt: one line, then the older one, never a retry
    capfd.readouterr()
    again = run_sweep(None, storage=tmp_path / "runs", name="rel", resume=True)
    out, err = capfd.readouterr()
    text = out + err
    print(text[-6000:])
    row = again.trials.iloc[0]
    assert row.status == "ok" and row.epochs_run == 3 and row.resumed_from_epoch == 1, row.to_dict()
    assert math.isfinite(row.valid_ic) and again.n_ranked == 1
    warnings = [line for line in text.splitlines() if "is corrupt" in line]
    assert len(warnings) == 1, warnings
    assert re.search(rf"\[cnn1d/m01\] t000: checkpoint \S*{re.escape(kept[2].parent.name)}/t000 is corrupt "
                     r"\(last\.pt: corrupt checkpoint file \(\w+: [^()]+\)\); resuming from "  # torch's error varies
                     rf"{re.escape(kept[1].parent.name)} \(epoch 1\)", warnings[0]), warnings[0]
    # no traceback of ours; Ray's own bookkeeping actors may print theirs under load (docs/sweep.md lists them),
    # and an actor Ray ends at shutdown can print its SIGTERM landing in a weakref callback ("Exception ignored
    # in ...": Ray's sigterm_handler, no code of ours)
    ray_noise = ("PlacementGroupCleaner", "PreemptionWatcher", "TrainController")
    lines = text.splitlines()
    ours = [ln for i, ln in enumerate(lines) if "Traceback" in ln and not any(a in ln for a in ray_noise)
            and not ("Exception ignored in" in lines[i - 1] and "sigterm_handler" in "\n".join(lines[i:i + 12]))]
    assert not ours and "CliError" not in text and "crnn_ray/train/checkpoint.py" not in text, ours
    assert pd.read_parquet(tmp_path / "runs" / "rel" / "trials.parquet").status.tolist() == ["ok"]
