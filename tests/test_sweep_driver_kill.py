"""A driver SIGKILL loses nothing: on a real local Ray, the `python -m crnn_ray.sweep` process is SIGKILLed
mid-sweep and `--resume` finishes it.

- Packs of two models, killed once each pack's first model has finished: every model keeps its row and its
  metrics (the finished ones are rebuilt from their checkpoints: Tune restarts a killed pack's trial with an
  empty result log), none of them is trained again, and the rows and the best.pt weights are bit-identical to an
  uninterrupted run's.
- Work stealing, killed right after a pack took over a model, then a `--resume` that adds a walk-forward
  window: every model is trained by exactly one pack (the claims survive in the queue's ledger and the packs'
  checkpoints; each generation's packs only take their own generation's models).

Without Ray, the pieces that make it so: a checkpoint persisted after the one Train registered is resumed
from, the claims ledger, the rows rebuilt from disk, Train's damaged record set aside.
"""

from __future__ import annotations

import json
import math
import os
import re
import signal
import subprocess
import sys
import time
from pathlib import Path

import pandas as pd
import pytest
import torch

from conftest import REPO, stop_session, write_yaml
from crnn_ray.schema import VALID_METRICS

START = re.compile(r"\[pack (\S+)\] model \d+ \(\d+ dealt\): (\S+) ")
DETERMINISTIC = ["trial_id", "variant_id", "spec", "family", "seed", "status", "reason", "epochs_run", "best_epoch",
                 *VALID_METRICS, "params", "threads", "hparams", "window", "line"]


def _config(name: str, windows: int, variants: list[str], training: dict, symbols: int = 40) -> dict:
    return {
        "name": name,
        "data": {"synth": {"symbols": symbols, "days": 300, "seed": 3, "horizon": 5}, "lookback": 10,
                 "walk_forward": {"train": 150, "valid": 50, "step": 30, "windows": windows}},
        "variants": variants,
        "seeds": [0],
        "training": {"batch_size": 128, "eval_batch_size": 2048, "early_stopping": {"patience": 5}, **training},
        "resources": {"cpus_per_trial": 1, "models_per_trial": 2},
    }


def _cli(args: list[str], log: Path, kill_when=None, timeout: float = 420) -> tuple[int, list[str]]:
    """Run `python -m crnn_ray.sweep ARGS` in a session of its own; its stdout lines (stderr goes to `log`).
    With `kill_when(lines)`: SIGKILL the driver as soon as it returns True."""
    env = {k: v for k, v in os.environ.items() if k != "RAY_ADDRESS"}
    with open(log, "w") as err:
        proc = subprocess.Popen([sys.executable, "-m", "crnn_ray.sweep", *args], cwd=REPO, env=env,
                                stdout=subprocess.PIPE, stderr=err, text=True, start_new_session=True)
        lines, deadline = [], time.monotonic() + timeout
        try:
            for line in proc.stdout:
                lines.append(line)
                if kill_when is not None and kill_when(lines):
                    proc.send_signal(signal.SIGKILL)
                    break
                if time.monotonic() > deadline:
                    break
            proc.wait(timeout=60)
        finally:
            time.sleep(2)
            stop_session(proc.pid)
    return proc.returncode, lines


def _starts(lines: list[str]) -> list[tuple[str, str]]:
    """(pack, model) of every "[pack p000] model k (n dealt): <model> ..." line."""
    return [m.groups() for m in map(START.search, lines) if m]


# ----------------------------------------------------------------------------------------------- packs
@pytest.fixture(scope="module")
def killed_and_resumed(ray_local, tmp_path_factory):
    from crnn_ray.sweep import run_sweep

    root = tmp_path_factory.mktemp("driver-kill")
    config = write_yaml(root / "dk.yaml", _config("dk", 2, ["cnn1d/m01", "cnn1d/m02"],
                                                  {"epochs": 3, "max_steps_per_epoch": 60}))
    reference = run_sweep(config, storage=root / "ref")  # uninterrupted, in this process's Ray

    def both_on_their_second_model(lines):
        return len({pack for line in lines if "model 2 (" in line for pack, _ in _starts([line])}) >= 2

    rc, first = _cli(["--config", str(config), "--storage", str(root / "runs")], root / "kill.err",
                     kill_when=both_on_their_second_model)
    assert rc == -signal.SIGKILL, "".join(first)[-3000:]
    rc, second = _cli(["--storage", str(root / "runs"), "--name", "dk", "--resume"], root / "resume.err")
    assert rc == 0, (root / "resume.err").read_text()[-3000:]
    return root, reference, first, second


@pytest.mark.ray
def test_every_finished_model_keeps_its_row_and_is_not_trained_again(killed_and_resumed):
    root, _, first, second = killed_and_resumed
    trials = pd.read_parquet(root / "runs" / "dk" / "trials.parquet")
    assert len(trials) == 4 and (trials.status == "ok").all(), trials[["trial_id", "status", "reason"]]
    assert trials.valid_ic.map(math.isfinite).all() and trials.checkpoint.notna().all()
    started = _starts(first)
    finished = {model for pack, model in started
                if any(p == pack for p, _ in started[started.index((pack, model)) + 1:])}
    assert len(finished) == 2, started  # each pack's first model was over when the driver died
    again = {model for _, model in _starts(second)}
    assert not finished & again, (finished, again)  # ... and not trained again


@pytest.mark.ray
def test_rows_and_weights_are_those_of_an_uninterrupted_run(killed_and_resumed):
    root, reference, *_ = killed_and_resumed
    resumed = pd.read_parquet(root / "runs" / "dk" / "trials.parquet")
    pd.testing.assert_frame_equal(resumed[DETERMINISTIC], reference.trials[DETERMINISTIC], check_exact=True)
    for a, b in zip(reference.trials.itertuples(), resumed.itertuples()):
        wa = torch.load(root / "ref" / "dk" / a.checkpoint / "best.pt", weights_only=True)
        wb = torch.load(root / "runs" / "dk" / b.checkpoint / "best.pt", weights_only=True)
        assert wa.keys() == wb.keys() and all(torch.equal(wa[k], wb[k]) for k in wa), a.trial_id


# ---------------------------------------------------------------------------------------------- stealing
@pytest.mark.ray
def test_a_steal_a_driver_kill_and_a_new_window_train_each_model_once(ray_local, tmp_path):
    # one slow recurrent net and three CNNs in packs of two: the quick pack takes over the slow pack's CNN
    variants = ["convlstm/m4", "cnn1d/m01", "cnn1d/m02", "cnn1d/m06"]
    training = {"epochs": 2, "batch_size": 64, "max_steps_per_epoch": 150}
    config = write_yaml(tmp_path / "st.yaml", _config("st", 1, variants, training, symbols=80))
    rc, first = _cli(["--config", str(config), "--storage", str(tmp_path / "runs")], tmp_path / "kill.err",
                     kill_when=lambda lines: "(taken over" in lines[-1])
    assert rc == -signal.SIGKILL and "(taken over" in first[-1], "".join(first)[-3000:]

    grown = write_yaml(tmp_path / "st2.yaml", _config("st", 2, variants, training, symbols=80))
    rc, second = _cli(["--config", str(grown), "--storage", str(tmp_path / "runs"), "--name", "st", "--resume"],
                      tmp_path / "resume.err")
    assert rc == 0, (tmp_path / "resume.err").read_text()[-3000:]

    trials = pd.read_parquet(tmp_path / "runs" / "st" / "trials.parquet")
    assert len(trials) == 8 and (trials.status == "ok").all(), trials[["trial_id", "status", "reason"]]
    packs_of: dict[str, set] = {}
    for pack, model in _starts(first) + _starts(second):
        packs_of.setdefault(model, set()).add(pack)
    assert sorted(packs_of) == sorted(trials.trial_id) and all(len(p) == 1 for p in packs_of.values()), packs_of
    for model, (pack,) in packs_of.items():  # a generation's packs train their own generation's models only
        assert pack.startswith("g2p") == model.startswith("w01-"), (model, pack)
    over: dict[str, list] = {}  # the packs' own records agree: each model is over in one pack
    for run in sorted((tmp_path / "runs" / "st" / "train").glob("st-*")):
        newest = max(d for d in run.glob("checkpoint_*") if d.is_dir())
        for model in json.loads((newest / "pack.json").read_text())["over"]:
            over.setdefault(model, []).append(run.name)
    assert sorted(over) == sorted(trials.trial_id) and all(len(p) == 1 for p in over.values()), over


# ------------------------------------------------------------------------------------------ without Ray
def _checkpoint(directory: Path, epoch: int, status: str = "running", reports: list | None = None) -> Path:
    from crnn_ray.train.checkpoint import META_KEYS, write_checkpoint

    meta = {k: None for k in META_KEYS} | {"spec": "x", "epoch": epoch, "best_epoch": epoch, "status": status,
                                            "valid_metrics": {"valid_ic": 0.01 * epoch}, "params": 7}
    write_checkpoint(directory, best_state={"w": torch.full((2,), float(epoch))}, last_state={"w": torch.zeros(2)},
                     train_state={"epoch": epoch, "optimizer": {}, "early_stopping": {}, "history": [],
                                  "status": status}, meta=meta)
    if reports is not None:
        (directory / "reports.json").write_text(json.dumps(reports))
    return directory


def test_a_checkpoint_persisted_after_the_registered_one_is_resumed_from(tmp_path):
    from crnn_ray.sweep.trial import resume_point

    run = tmp_path / "train" / "x-p000"
    given = _checkpoint(run / "checkpoint_1" / "t000", 1)
    newer = _checkpoint(run / "checkpoint_2" / "t000", 2)  # a driver kill before Train registered it
    _checkpoint(run / "checkpoint_3" / "t000", 3).joinpath("best.pt").write_bytes(b"torn")
    assert resume_point(given, run, str(given.parent), "[v] t000", sub="t000") == (newer, None)
    # a model Train's checkpoint does not hold at all is found there too, without a warning
    assert resume_point(run / "checkpoint_1" / "t001", run, str(given.parent), "[v] t001", sub="t001") == (None, None)


def test_claims_survive_in_the_ledger_and_the_checkpoints(tmp_path):
    from crnn_ray.sweep.placement import PackQueue, read_ledger
    from crnn_ray.sweep.trial import started_models

    models = [{"key": f"t00{i}"} for i in range(4)]
    ledger = tmp_path / "queue-tune.jsonl"
    q = PackQueue({"p000": models[:2], "p001": models[2:]}, claimed={}, ledger=str(ledger))
    assert q.claim("p000", "t000") and q.claim("p001", "t002") and q.claim("p001", "t003")
    assert q.steal("p001")["key"] == "t001" and not q.claim("p000", "t001")
    ledger.write_text(ledger.read_text() + '{"model": "t00')  # a line torn by the kill
    assert read_ledger(ledger) == {"t000": "p000", "t002": "p001", "t003": "p001", "t001": "p001"}
    # p000 had started t000 on disk only; the ledger wins where both speak
    _checkpoint(tmp_path / "train" / "x-p000" / "checkpoint_1" / "t000", 1)
    claimed = started_models(tmp_path / "train", "x", [{"key": "p000"}, {"key": "p001"}], ledger)
    again = PackQueue({"p000": models[:2], "p001": models[2:]}, claimed=claimed)
    assert [m["key"] for m in again.mine("p001")] == ["t001", "t002", "t003"] and not again.claim("p000", "t001")
    assert again.steal("p000") is None


def test_rows_lost_by_tune_come_back_from_the_checkpoints(tmp_path):
    from crnn_ray.sweep.collect import disk_reports

    train = tmp_path / "train"
    last = {"epoch": 2, "status": "ok", "best_valid_ic": 0.02, "trial_key": "t000"}
    _checkpoint(train / "x-p000" / "checkpoint_1" / "t000", 1)
    _checkpoint(train / "x-p000" / "checkpoint_2" / "t000", 2, "ok", reports=[{"epoch": 1}, last])
    _checkpoint(train / "x-p000" / "checkpoint_2" / "t001", 1)                  # still running: not over
    _checkpoint(train / "x-p001" / "checkpoint_1" / "t002", 3, "diverged")       # no reports.json: its meta
    (train / "x-p001" / "checkpoint_1" / "pack.json").write_text(json.dumps({"failed": {"t003": "ValueError: x"}}))
    found = disk_reports(train, "x", ["t000", "t001", "t002", "t003"])
    assert sorted(found) == ["t000", "t002", "t003"]
    assert found["t000"] == ([{"epoch": 1}, last], str(train / "x-p000" / "checkpoint_2" / "t000"))
    assert found["t002"][0][-1]["status"] == "diverged" and found["t002"][0][-1]["best_valid_ic"] == 0.03
    assert found["t003"] == ([{"status": "failed", "reason": "ValueError: x"}], None)


def test_a_train_record_a_full_disk_truncated_is_set_aside(tmp_path, capsys):
    from crnn_ray.sweep.trial import TRAIN_RECORD, _repair_train_record

    (tmp_path / TRAIN_RECORD).write_text('{"checkpoints": [{"pa')
    _repair_train_record(tmp_path)
    assert not (tmp_path / TRAIN_RECORD).exists() and (tmp_path / f"{TRAIN_RECORD}.damaged").exists()
    assert "damaged (a full disk?): set aside" in capsys.readouterr().out
    (tmp_path / TRAIN_RECORD).write_text("{}")
    _repair_train_record(tmp_path)  # a whole one stays
    assert (tmp_path / TRAIN_RECORD).read_text() == "{}"
