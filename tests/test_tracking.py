"""Tracking, progress and the kept console, without a cluster: crnn_ray.tracking (MLflow runs read back with
MLflow's own client), crnn_ray.console (the tee, the log file, the progress line) and the sweep's SweepMonitor
(status line, ETA, one TensorBoard series per model) fed reports the way Tune hands them over."""

from __future__ import annotations

import io
import struct
import sys
import time

import pytest
from mlflow.tracking import MlflowClient
from tensorboardX.proto import event_pb2

from crnn_ray.console import ConsoleLog, Progress, console_log, duration, strip_ansi
from crnn_ray.sweep.monitor import SweepMonitor, model_params
from crnn_ray.tracking import DB_FILE, Tracker, TrackingConfig, tracking_uri

GRID = [{"key": f"t00{i}", "variant_id": v, "spec": f"spec-{v}", "seed": 0, "grid": {"lr": 1e-3},
         "train_config": {"epochs": 3, "lr": 1e-3, "batch_size": 256}}
        for i, v in enumerate(["convgru/m01", "cnn1d/m01", "convlstm/m1"])]


def report(key: str, epoch: int, status: str = "running", ic: float = 0.05) -> dict:
    return {"trial_key": key, "epoch": epoch, "status": status, "valid_ic": ic, "select_ic": ic / 2,
            "train_loss": 0.1 / epoch, "epoch_s": 1.5, "best_valid_ic": ic, "reason": "",
            "worker_t0": 1.0e9, "pid": 123}


def runs_of(exp_dir, name: str):
    client = MlflowClient(tracking_uri(exp_dir))
    experiment = client.get_experiment_by_name(name)
    return client, client.search_runs([experiment.experiment_id])


def test_one_run_per_model_nested_under_the_sweep_and_read_back_with_mlflow(tmp_path):
    tracker = Tracker(tmp_path, "exp")
    tracker.start_parent("sweep", "exp", params={"models": 2}, tags={"crnn_ray.git_commit": "abc"})
    for key in ("t000", "t001"):
        tracker.model_run(key, model_params(GRID[int(key[-1])]))
        for epoch in (1, 2, 3):
            tracker.log_epoch(key, report(key, epoch, ic=0.01 * epoch))
    tracker.end_model("t000", "ok", "completed 3 epochs", {"best_valid_ic": 0.03}, "train/exp-p0/ckpt/t000")
    tracker.end_model("t001", "diverged", "non-finite loss at epoch 3")
    tracker.end_parent("FINISHED", {"models_ok": 1})

    assert (tmp_path / DB_FILE).is_file()
    client, runs = runs_of(tmp_path, "exp")
    by_name = {r.info.run_name: r for r in runs}
    assert set(by_name) == {"exp", "t000", "t001"}
    parent = by_name["exp"]
    assert parent.info.status == "FINISHED" and parent.data.params["models"] == "2"
    assert parent.data.tags["crnn_ray.git_commit"] == "abc"
    good, bad = by_name["t000"], by_name["t001"]
    for run in (good, bad):
        assert run.data.tags["mlflow.parentRunId"] == parent.info.run_id
    assert good.data.params["spec"] == "spec-convgru/m01" and good.data.params["train.lr"] == "0.001"
    history = client.get_metric_history(good.info.run_id, "valid_ic")
    assert [(h.step, round(h.value, 6)) for h in sorted(history, key=lambda h: h.step)] == \
        [(1, 0.01), (2, 0.02), (3, 0.03)]
    assert "worker_t0" not in good.data.metrics and "pid" not in good.data.metrics  # stamps are not figures
    assert good.info.status == "FINISHED" and bad.info.status == "FAILED"
    assert good.data.tags["crnn_ray.checkpoint"] == "train/exp-p0/ckpt/t000"
    assert good.data.tags["crnn_ray.checkpoint_uri"].startswith("file://")
    assert bad.data.tags["crnn_ray.reason"] == "non-finite loss at epoch 3"


def test_a_resumed_sweep_continues_its_runs_without_logging_an_epoch_twice(tmp_path):
    first = Tracker(tmp_path, "exp")
    first.start_parent("sweep", "exp")
    first.model_run("t000", model_params(GRID[0]))
    first.log_epoch("t000", report("t000", 1))
    first.log_epoch("t000", report("t000", 2))
    # the driver dies here; the resumed one replays epoch 2 (a restarted worker reports it again) and goes on
    again = Tracker(tmp_path, "exp")
    again.start_parent("sweep", "exp")
    assert again.parent_id == first.parent_id and again.models == {"t000": first.models["t000"]}
    again.model_run("t000", model_params(GRID[0]))
    again.log_epoch("t000", report("t000", 2))
    again.log_epoch("t000", report("t000", 3, "ok"))
    again.end_model("t000", "ok")
    client, runs = runs_of(tmp_path, "exp")
    assert len(runs) == 2
    steps = [h.step for h in client.get_metric_history(first.models["t000"], "valid_ic")]
    assert sorted(steps) == [1, 2, 3]


def test_a_store_that_fails_turns_tracking_off_with_one_line(tmp_path, capsys):
    blocked = tmp_path / "file"
    blocked.write_text("not a folder")
    tracker = Tracker(blocked / "exp", "exp", TrackingConfig(uri=f"sqlite:///{blocked}/sub/mlflow.db"))
    tracker.start_parent("sweep", "exp")
    tracker.model_run("t000", {})
    tracker.log_epoch("t000", report("t000", 1))
    out = capsys.readouterr().out
    assert not tracker.enabled
    assert out.count("MLflow tracking off") == 1 and "\n" == out[-1]


def test_tracking_off_writes_no_store(tmp_path):
    tracker = Tracker(tmp_path, "exp", TrackingConfig(mlflow=False))
    tracker.start_parent("sweep", "exp")
    tracker.model_run("t000", {})
    assert not (tmp_path / DB_FILE).exists() and tracker.models == {}


def test_the_environment_names_the_store(tmp_path, monkeypatch):
    monkeypatch.setenv("MLFLOW_TRACKING_URI", "http://mlflow.internal:5000")
    assert tracking_uri(tmp_path) == "http://mlflow.internal:5000"
    assert tracking_uri(tmp_path, "sqlite:////x.db") == "sqlite:////x.db"
    monkeypatch.delenv("MLFLOW_TRACKING_URI")
    assert tracking_uri(tmp_path) == f"sqlite:///{tmp_path.resolve() / DB_FILE}"


# ---- the console kept with the run -------------------------------------------------------------------------
class FakeTerminal(io.StringIO):
    def isatty(self):
        return True


def test_the_log_has_every_line_without_ansi_and_the_lines_before_the_folder_existed(tmp_path, monkeypatch):
    console = io.StringIO()
    monkeypatch.setattr(sys, "stdout", console)
    with console_log() as log:
        print("experiment: before the folder exists")
        log.attach(tmp_path / "sweep.log")
        print("\x1b[36m(RayTrainWorker pid=42)\x1b[0m [cnn1d/m01] epoch 1/3")
        print("a warning", file=sys.stderr)
    assert sys.stdout is console
    text = (tmp_path / "sweep.log").read_text()
    assert text.splitlines() == ["experiment: before the folder exists", "(RayTrainWorker pid=42) [cnn1d/m01] epoch 1/3",
                                 "a warning"]
    assert "\x1b" not in console.getvalue()  # a console that is not a terminal gets no colour codes either


def test_a_terminal_keeps_its_colours_and_a_resumed_log_is_appended(tmp_path, monkeypatch):
    (tmp_path / "sweep.log").write_text("first run\n")
    terminal = FakeTerminal()
    monkeypatch.setattr(sys, "stdout", terminal)
    with console_log() as log:
        log.attach(tmp_path / "sweep.log", append=True)
        print("\x1b[36mcoloured\x1b[0m")
    assert "\x1b[36m" in terminal.getvalue()
    lines = (tmp_path / "sweep.log").read_text().splitlines()
    assert lines[0] == "first run" and lines[2].startswith("---- resumed ") and lines[3] == "coloured"


def test_the_unattached_log_holds_the_text_and_strip_ansi_leaves_plain_text():
    log = ConsoleLog()
    log.write("\x1b[1;32mok\x1b[0m\n")
    assert log.text() == "ok\n"
    assert strip_ansi("a\x1b[2Kb\x1b(Bc") == "abc"


def test_progress_is_quiet_on_short_steps_and_says_rate_and_eta_on_long_ones(capsys):
    quick = Progress("score", 1000, every_s=60)
    for _ in range(10):
        quick.add(100)
    assert capsys.readouterr().out == ""
    slow = Progress("score", 1000, every_s=0.0)
    slow.t0 -= 10.0  # 10 s ago
    slow.add(250)
    line = capsys.readouterr().out.strip()
    assert line.startswith("[score] rows 25 % (250/1,000), 25 rows/s, ETA 30s"), line
    assert duration(3725) == "1h02m" and duration(250) == "4m10s" and duration(7) == "7s"


# ---- the sweep's monitor -----------------------------------------------------------------------------------
def read_scalars(folder) -> dict[str, list[tuple[int, float]]]:
    """Every scalar in a TensorBoard event folder (TFRecord framing: length, crc, event, crc)."""
    out: dict[str, list] = {}
    for path in folder.glob("events.out.tfevents.*"):
        data = path.read_bytes()
        pos = 0
        while pos < len(data):
            (length,) = struct.unpack("<Q", data[pos:pos + 8])
            event = event_pb2.Event.FromString(data[pos + 12:pos + 12 + length])
            pos += 12 + length + 4
            for value in event.summary.value:
                out.setdefault(value.tag, []).append((event.step, value.simple_value))
    return out


def test_status_line_counts_models_and_gives_an_eta_from_the_measured_rate(tmp_path, capsys):
    monitor = SweepMonitor(GRID, tmp_path, costs=None, done={"t002": "ok"}, tensorboard=False)
    assert monitor.status_line().startswith("[sweep] 1/3 models done (1 ok), 0 running, 0s elapsed, ETA after")
    monitor.t0 -= 60.0
    monitor.report(report("t000", 1))
    line = monitor.status_line()
    # in 60 s this run did 1 of 3 epochs of one model (1/3 of a model's work); 2 - 1/3 models' work remain
    assert line.startswith("[sweep] 1/3 models done (1 ok), 1 running, 1m00s elapsed, ETA 5m00s"), line
    monitor.pack_started("p0")
    monitor.pack_started("p1")  # a pack whose model has not reported an epoch yet still runs it
    assert ", 2 running," in monitor.status_line()
    monitor.pack_ended("p1")
    monitor.report(report("t000", 3, "ok"))
    monitor.pack_ended("p0")
    monitor.report({"trial_key": "t001", "status": "failed", "reason": "boom"})
    printed = capsys.readouterr().out.splitlines()
    assert printed[-1].startswith("[sweep] 3/3 models done (2 ok, 1 failed), 0 running") and "ETA" not in printed[-1]


def test_costs_weigh_the_eta_and_ticks_print_on_time(tmp_path, capsys):
    costs = {"t000": 1.0, "t001": 1.0, "t002": 4.0}  # mean 2: weights 0.75, 0.75, 1.5
    monitor = SweepMonitor(GRID, tmp_path, costs=costs, tensorboard=False, every_s=3600)
    monitor.t0 -= 30.0
    monitor.report(report("t000", 3, "ok"))
    assert "ETA 1m30s" in monitor.status_line()  # 0.75 done in 30 s; 2.25 left
    capsys.readouterr()
    monitor.tick()
    assert capsys.readouterr().out == ""
    monitor.last_line = time.monotonic() - 3601
    monitor.tick()
    assert capsys.readouterr().out.startswith("[sweep] 1/3 models done")


def test_one_tensorboard_series_per_model(tmp_path):
    monitor = SweepMonitor(GRID, tmp_path, tensorboard=True)
    for epoch in (1, 2):
        monitor.report(report("t000", epoch, ic=0.01 * epoch))
        monitor.report(report("t001", epoch, ic=-0.01 * epoch))
    monitor.close()
    first = read_scalars(tmp_path / "tensorboard" / "t000")
    second = read_scalars(tmp_path / "tensorboard" / "t001")
    assert [(s, round(v, 6)) for s, v in first["valid_ic"]] == [(1, 0.01), (2, 0.02)]
    assert [(s, round(v, 6)) for s, v in second["valid_ic"]] == [(1, -0.01), (2, -0.02)]
    assert "pid" not in first


def test_the_monitor_feeds_the_tracker(tmp_path):
    tracker = Tracker(tmp_path, "exp")
    tracker.start_parent("sweep", "exp")
    monitor = SweepMonitor(GRID, tmp_path, tracker=tracker, tensorboard=False)
    monitor.report(report("t000", 1))
    monitor.report(report("t000", 2, "ok"))
    monitor.report({"trial_key": "not-in-grid", "epoch": 1})
    client, runs = runs_of(tmp_path, "exp")
    model = next(r for r in runs if r.info.run_name == "t000")
    assert model.info.status == "FINISHED" and model.data.params["variant_id"] == "convgru/m01"
    assert len(client.get_metric_history(model.info.run_id, "train_loss")) == 2
    assert len(runs) == 2


@pytest.mark.parametrize("status, expected", [("ok", "FINISHED"), ("diverged", "FAILED"), ("not run", "KILLED")])
def test_statuses_map_to_mlflow(tmp_path, status, expected):
    tracker = Tracker(tmp_path, "exp")
    tracker.start_parent("sweep", "exp")
    tracker.model_run("t000", {})
    tracker.end_model("t000", status)
    _, runs = runs_of(tmp_path, "exp")
    assert next(r for r in runs if r.info.run_name == "t000").info.status == expected


def test_a_copied_experiment_never_writes_into_the_original_folder(tmp_path):
    import shutil

    first = Tracker(tmp_path / "a", "exp")
    first.start_parent("score", "score")
    report = tmp_path / "a" / "report.html"
    report.write_text("<html></html>")
    first.end_parent("FINISHED", {}, [report])
    assert (tmp_path / "a" / "mlartifacts").is_dir()
    shutil.copytree(tmp_path / "a", tmp_path / "b")
    shutil.rmtree(tmp_path / "a" / "mlartifacts")
    again = Tracker(tmp_path / "b", "exp")
    again.start_parent("score", "score")
    again.end_parent("FINISHED", {}, [tmp_path / "b" / "report.html"])
    assert not (tmp_path / "a" / "mlartifacts").exists()  # the store names a's folder: nothing is written there
    client, runs = runs_of(tmp_path / "b", "exp")
    newest = max(runs, key=lambda r: r.info.start_time)
    assert newest.data.tags["crnn_ray.file.report.html"] == str((tmp_path / "b" / "report.html").resolve())
