"""Sweep config validation, grid expansion, placement planning and the leaderboard — no Ray started."""

from __future__ import annotations

import json
import math
import subprocess
import sys

import numpy as np
import pandas as pd
import pytest

from conftest import REPO, tiny_config, write_yaml
from crnn_ray.io import CliError
from crnn_ray.sweep.config import ResourcesConfig, load_config, parse_config
from crnn_ray.sweep.leaderboard import (LEADERBOARD_COLUMNS, TRIAL_COLUMNS, build_leaderboard, leaderboard_markdown,
                                        trial_row, trials_frame)
from crnn_ray.sweep.placement import plan_placement
from crnn_ray.zoo import load_zoo

SWEEPS = REPO / "configs" / "sweeps"


# ------------------------------------------------------------------------------------------ shipped configs
def test_shipped_configs_validate_and_expand():
    zoo = load_zoo()
    quick = load_config(SWEEPS / "quickstart.yaml")
    families = {zoo[v].family for v, _ in quick.resolved_variants}
    assert families == {"convgru", "convlstm", "cnn1d"}
    assert 5 <= len(quick.resolved_variants) <= 8 and quick.seeds == [0]
    assert quick.resources.gpus_per_trial == "auto"

    ablation = load_config(SWEEPS / "seed_ablation.yaml")
    assert len(ablation.resolved_variants) == len(zoo) == 46
    grid = ablation.grid()
    assert len(grid) == 46 * 3
    assert len({t["key"] for t in grid}) == len(grid)
    assert {(t["variant_id"], t["seed"]) for t in grid} == {(v, s) for v in zoo for s in (0, 1, 2)}

    tiny = load_config(SWEEPS / "tiny.yaml")
    assert tiny.training.epochs == 1 and 1 <= len(tiny.resolved_variants) <= 2


def test_grid_crosses_variants_seeds_and_hyperparameter_lists(tmp_path):
    doc = tiny_config(seeds=[0, 1], training={"lr": ["1e-3", 3e-4], "loss": ["mse", "ic"], "batch_size": 128})
    cfg = load_config(write_yaml(tmp_path / "grid.yaml", doc))
    grid = cfg.grid()
    n_variants = len(cfg.resolved_variants)
    assert len(grid) == n_variants * 2 * 2 * 2
    combos = {(t["variant_id"], t["seed"], t["hparams"]["lr"], t["hparams"]["loss"]) for t in grid}
    assert len(combos) == len(grid)
    assert {t["hparams"]["lr"] for t in grid} == {1e-3, 3e-4}  # YAML's string '1e-3' read as a number
    assert all(t["hparams"]["batch_size"] == 128 for t in grid)
    assert all(set(t["grid"]) == {"lr", "loss"} for t in grid)
    kwargs = cfg.train_config_kwargs(grid[-1])
    assert kwargs["seed"] == grid[-1]["seed"] and kwargs["lr"] == grid[-1]["hparams"]["lr"]
    assert kwargs["label"] == "y5" and kwargs["lookback"] == doc["data"]["lookback"]
    # stable keys: the same config expands to the same trial keys (resume relies on it)
    assert [t["key"] for t in load_config(tmp_path / "grid.yaml").grid()] == [t["key"] for t in grid]


def test_defaults_fill_a_minimal_config():
    cfg = parse_config({"variants": ["cnn1d/m01"]}, source="min.yaml")
    assert cfg.data.synth == {} and cfg.data.label == "y5" and cfg.data.lookback == 20
    assert cfg.training.epochs >= 1 and cfg.training.loss == "mse" and cfg.seeds == [0]
    assert cfg.resources.gpus_per_trial == "auto" and cfg.resources.cpus_per_trial == 1
    assert cfg.scheduler.type == "fifo" and cfg.schedule_metric == "valid_rank_ic"  # RankIC first
    assert parse_config({"variants": ["cnn1d/m01"], "seeds": 3}).seeds == [0, 1, 2]


# ------------------------------------------------------------------------------------------------ bad input
BAD = [
    ({"training": {"lr": "abc"}}, "bad.yaml: training.lr: expected a positive number, got 'abc'"),
    ({"training": {"lr": [1e-3, -1]}}, "bad.yaml: training.lr[1]: expected a positive number"),
    ({"training": {"lrr": 1e-3}}, "bad.yaml: training.lrr: unknown key"),
    ({"training": {"loss": "mae"}}, "bad.yaml: training.loss: expected one of mse, ic"),
    ({"training": {"early_stopping": {"metric": "sharpe"}}}, "bad.yaml: training.early_stopping.metric"),
    ({"variants": ["convgru/m99"]}, "bad.yaml: variants[0]: unknown zoo id 'convgru/m99'"),
    ({"variants": ["convgru/m01", "gru/*"]}, "bad.yaml: variants[1]:"),
    ({"variants": ["convgru(conv+)x2[b1k3,b1k3]"]}, "bad.yaml: variants[0]:"),
    ({"data": {"splits": {"fractions": [0.7, 0.3, 0.2]}}}, "bad.yaml: data.splits.fractions: fractions sum to 1.2"),
    ({"data": {"path": "x.parquet", "synth": {"days": 100}}}, "bad.yaml: data: give either data.path or"),
    ({"data": {"synth": {"days": 10}}}, "bad.yaml: data.synth.days: expected an integer >= 60"),
    ({"data": {"lookback": 1}}, "bad.yaml: data.lookback"),
    ({"resources": {"gpus_per_trial": 1.5}}, "bad.yaml: resources.gpus_per_trial: fractions are allowed below 1"),
    ({"resources": {"cpus_per_trial": 0}}, "bad.yaml: resources.cpus_per_trial: expected a positive number"),
    ({"scheduler": {"type": "pbt"}}, "bad.yaml: scheduler.type: expected one of fifo, asha"),
    ({"seeds": [0, 0]}, "bad.yaml: seeds: duplicate seeds"),
    ({"resources": {"models_per_trial": 0}}, "bad.yaml: resources.models_per_trial: expected"),
    ({"resources": {"models_per_trial": 3}, "scheduler": {"type": "asha"}},
     "bad.yaml: resources.models_per_trial: 3 models per Train run cannot run under scheduler.type asha"),
    ({"training": {"select_scoring": "end"}, "scheduler": {"type": "asha"}},
     "bad.yaml: training.select_scoring: end scores the select part after the last epoch, which a trial pruned"),
    ({"sedes": [0]}, "bad.yaml: sedes: unknown key"),
]


@pytest.mark.parametrize("override,message", BAD, ids=[m.split(": ")[1] for _, m in BAD])
def test_bad_config_names_the_key(tmp_path, override, message):
    doc = tiny_config(**override)
    with pytest.raises(CliError) as err:
        load_config(write_yaml(tmp_path / "bad.yaml", doc))
    text = str(err.value)
    assert message in text
    assert "\n" not in text


def test_yaml_syntax_error_is_one_line(tmp_path):
    path = tmp_path / "broken.yaml"
    path.write_text("variants: [convgru/m01\ntraining: {lr: 1e-3}\n")
    with pytest.raises(CliError, match=r"^broken\.yaml: not valid YAML \(line \d+\)") as err:
        load_config(path)
    assert "\n" not in str(err.value)


def test_cli_rejects_bad_config_before_ray_starts(tmp_path):
    """Exit 2, one `error:` line naming file and key, no experiment directory, no Ray session."""
    bad = write_yaml(tmp_path / "bad.yaml", tiny_config(training={"lr": "abc"}))
    storage = tmp_path / "runs"
    proc = subprocess.run([sys.executable, "-m", "crnn_ray.sweep", "--config", str(bad), "--storage", str(storage)],
                          capture_output=True, text=True, timeout=120, cwd=REPO)
    assert proc.returncode == 2
    lines = proc.stderr.strip().splitlines()
    assert lines == ["error: bad.yaml: training.lr: expected a positive number, got 'abc'"]
    assert not storage.exists()
    assert "Started a local Ray instance" not in proc.stdout + proc.stderr


def test_cli_rejects_missing_data_file_before_ray_starts(tmp_path):
    doc = tiny_config()
    doc["data"] = {"path": str(tmp_path / "nope.parquet"), "lookback": 10}
    cfg = write_yaml(tmp_path / "nodata.yaml", doc)
    proc = subprocess.run([sys.executable, "-m", "crnn_ray.sweep", "--config", str(cfg), "--storage",
                           str(tmp_path / "runs")], capture_output=True, text=True, timeout=120, cwd=REPO)
    assert proc.returncode == 2
    assert proc.stderr.strip() == f"error: nodata.yaml: data.path: file not found: {tmp_path / 'nope.parquet'}"
    assert not (tmp_path / "runs").exists()


# ------------------------------------------------------------------------------------------------ placement
def _res(**kw) -> ResourcesConfig:
    r = ResourcesConfig()
    for k, v in kw.items():
        setattr(r, k, v)
    return r


def test_placement_follows_gpus_and_cpus():
    gpu_nodes = [{"CPU": 1.0}, {"CPU": 2.0, "GPU": 1.0}, {"CPU": 2.0, "GPU": 1.0}]
    p = plan_placement(_res(), 10, gpu_nodes, [])
    assert p.gpus_per_trial == 1.0 and p.use_gpu and p.max_concurrent_trials == 2
    assert p.worker_resources() == {"CPU": 1.0, "GPU": 1.0}
    p = plan_placement(_res(gpus_per_trial=0.5), 10, gpu_nodes, [])
    assert p.max_concurrent_trials == 4  # two trials share each GPU (CPUs allow 2 per GPU node)
    p = plan_placement(_res(), 10, [{"CPU": 2.0}], [])
    assert p.gpus_per_trial == 0.0 and not p.use_gpu and p.max_concurrent_trials == 2 and p.threads == 1
    p = plan_placement(_res(cpus_per_trial=2), 1, [{"CPU": 8.0}], [])
    assert p.max_concurrent_trials == 1 and p.threads == 2  # never more than the grid


def test_infeasible_request_fails_fast_with_the_key():
    with pytest.raises(CliError, match=r"^x\.yaml: resources\.gpus_per_trial: a trial needs \{CPU: 1, GPU: 1\}"):
        plan_placement(_res(gpus_per_trial=1), 2, [{"CPU": 2.0}], [], source="x.yaml")
    with pytest.raises(CliError, match=r"resources\.cpus_per_trial: a trial needs \{CPU: 4\}"):
        plan_placement(_res(cpus_per_trial=4), 2, [{"CPU": 2.0}, {"CPU": 2.0}], [])
    # an autoscaler node type that has the GPU makes the request feasible (the node comes up on demand)
    p = plan_placement(_res(), 6, [{"CPU": 2.0}], [({"CPU": 8.0, "GPU": 2.0}, 3)])
    assert p.gpus_per_trial == 1.0 and p.max_concurrent_trials == 6


def test_launcher_head_reads_gpu_node_types_from_its_bootstrap_config():
    """On a cluster-launcher head (autoscaler v1) the GPU types come from the launcher config, so a GPU sweep
    submitted while no GPU node is up yet is feasible and its concurrency follows the scalable GPUs."""
    from crnn_ray.sweep.placement import launcher_node_types

    types = launcher_node_types(REPO / "cluster" / "aws-gpu.yaml")
    assert sorted((t["GPU"], n) for t, n in types) == [(1.0, 8), (4.0, 2)]  # the head type is left out
    p = plan_placement(_res(gpus_per_trial=1), 100, [{"CPU": 0.0}], types)
    assert p.use_gpu and p.max_concurrent_trials == 8 * 1 + 2 * 4
    assert launcher_node_types(REPO / "no-such-config.yaml") == []


# ---------------------------------------------------------------------------------------------- leaderboard
def _trial(key, variant, seed, lr=1e-3):
    return {"key": key, "variant_id": variant, "spec": f"spec-{variant}", "seed": seed,
            "hparams": {"lr": lr, "batch_size": 256}, "grid": {"lr": lr}}


def _results(ic, status="ok", checkpoint="/ckpt", params=1000, epochs=3):
    """Epoch reports as the worker sends them: each carries the best epoch so far (`best_*`); the last one
    the trial's status."""
    rows = []
    for e in range(1, epochs + 1):
        v = ic - 0.01 * (epochs - e)
        best = {"valid_ic": v, "valid_rank_ic": v / 2, "valid_icir": v * 10, "valid_pnl_long_short": v * 3,
                "valid_pnl_long": v}
        rows.append({"epoch": e, **best, **{f"best_{k}": x for k, x in best.items()}, "best_epoch": e,
                     "status": status if e == epochs else "running", "reason": "r" if e == epochs else "",
                     "checkpoint_path": f"{checkpoint}/{e}", "params": params, "samples_per_s": 100.0,
                     "cpu_percent": 95.0, "threads": 1, "os_threads": 30.0, "worker_node_ip": "10.0.0.1",
                     "worker_node_id": "n1", "gpu_ids": '["0"]', "resumed_from_epoch": 0})
    return rows


def test_trial_rows_and_leaderboard_rank_only_healthy_trials():
    zoo = load_zoo()
    rows = [
        trial_row(_trial("t000", "convgru/m01", 0), _results(0.05, checkpoint="/a0"), None, "convgru"),
        trial_row(_trial("t001", "convgru/m01", 1), _results(0.03, checkpoint="/a1"), None, "convgru"),
        trial_row(_trial("t002", "cnn1d/m01", 0), _results(0.08, checkpoint="/b0"), None, "cnn1d"),
        trial_row(_trial("t003", "cnn1d/m01", 1), _results(float("nan"), status="diverged"), None, "cnn1d"),
        trial_row(_trial("t004", "cnn1d/m02", 0), _results(0.5, status="diverged"), None, "cnn1d"),
        trial_row(_trial("t005", "cnn1d/m02", 1), [], "RayTaskError: boom\nlast line", "cnn1d"),
    ]
    trials = trials_frame(rows)
    assert list(trials.columns) == TRIAL_COLUMNS
    assert list(trials.status) == ["ok", "ok", "ok", "diverged", "diverged", "failed"]
    assert math.isnan(trials.valid_ic[4])  # a diverged trial's numbers are never used
    assert trials.reason[5] == "last line" and trials.checkpoint[0] == "/a0/3"
    assert json.loads(trials.hparams[0]) == {"batch_size": 256, "lr": 1e-3}
    assert trials.node_ip[0] == "10.0.0.1" and trials.node_id[0] == "n1" and trials.gpu_ids[0] == '["0"]'

    lb = build_leaderboard(trials, zoo, "valid_ic")
    assert list(lb[LEADERBOARD_COLUMNS].columns) == LEADERBOARD_COLUMNS
    assert list(lb.variant_id) == ["cnn1d/m01", "convgru/m01", "cnn1d/m02"]
    gru = lb.set_index("variant_id").loc["convgru/m01"]
    assert gru.n_seeds == 2 and gru.n_ok == 2 and gru.status == "ok"
    assert gru.valid_ic_mean == pytest.approx(np.mean([0.05, 0.03]))
    assert gru.valid_ic_std == pytest.approx(np.std([0.05, 0.03], ddof=1))
    assert gru.best_checkpoint == "/a0/3" and gru.params == 1000
    assert gru.seed_ic == pytest.approx(zoo["convgru/m01"].seed_ic)
    cnn = lb.set_index("variant_id").loc["cnn1d/m01"]
    assert cnn.n_seeds == 2 and cnn.n_ok == 1 and cnn.valid_ic_mean == pytest.approx(0.08)
    assert math.isnan(cnn.valid_ic_std)  # one healthy seed: no spread to report
    dead = lb.set_index("variant_id").loc["cnn1d/m02"]
    assert dead.status == "diverged" and dead.n_ok == 0 and pd.isna(dead.best_checkpoint)
    assert math.isnan(dead.valid_ic_mean)

    md = leaderboard_markdown(lb, "Leaderboard", "valid_ic", grid_keys=["lr"])
    table = [ln for ln in md.splitlines() if ln.startswith("| ")]
    assert table[1].startswith("| 1 | `cnn1d/m01`") and table[2].startswith("| 2 | `convgru/m01`")
    assert table[3].startswith("| – | `cnn1d/m02`") and "diverged" in table[3]
    assert "+0.0400 ± 0.0141" in table[2]


def test_leaderboard_picks_each_variants_best_hyperparameters():
    rows = [
        trial_row(_trial("t000", "cnn1d/m01", 0, lr=1e-3), _results(0.02, checkpoint="/lo"), None, "cnn1d"),
        trial_row(_trial("t001", "cnn1d/m01", 0, lr=1e-2), _results(0.06, checkpoint="/hi"), None, "cnn1d"),
        trial_row(_trial("t002", "cnn1d/m01", 0, lr=1e6), _results(9.0, status="diverged"), None, "cnn1d"),
    ]
    lb = build_leaderboard(trials_frame(rows), load_zoo(), "valid_ic")
    assert len(lb) == 1
    assert lb.valid_ic_mean[0] == pytest.approx(0.06) and lb.best_checkpoint[0] == "/hi/3"
    assert json.loads(lb._hparams[0])["lr"] == 1e-2


def test_scheduler_pruned_trial_is_ranked_from_its_history():
    hist = _results(0.04, checkpoint="/p")
    hist[-1]["status"] = "running"  # the scheduler stopped it after epoch 3; its best epoch was 2
    hist[1]["valid_ic"], hist[1]["valid_rank_ic"] = 0.07, 0.01
    for r in hist[1:]:
        r["best_epoch"], r["best_valid_ic"], r["best_valid_rank_ic"] = 2, 0.07, 0.01
    row = trial_row(_trial("t000", "cnn1d/m01", 0), hist, None, "cnn1d")
    assert row["status"] == "pruned" and row["best_epoch"] == 2 and row["valid_ic"] == pytest.approx(0.07)
    assert row["checkpoint"] == "/p/3" and row["epochs_run"] == 3
    lb = build_leaderboard(pd.DataFrame([row], columns=TRIAL_COLUMNS), load_zoo(), "valid_ic")
    assert lb.status[0] == "ok" and lb.n_ok[0] == 1


def test_packs_fill_the_slots_evenly():
    from crnn_ray.sweep.placement import make_packs, pack_models, pack_size

    grid = [{"key": f"t{i:03d}"} for i in range(7)]
    assert [pack_size("auto", n, slots) for n, slots in ((6, 2), (18, 2), (18, 16), (7, 2), (3, 8), (5, 5))] == [
        3, 9, 2, 4, 1, 1]
    assert pack_size(4, 3, 2) == 3 and pack_size(1, 10, 2) == 1  # never more than the models there are
    packs = make_packs(grid, 3)  # ceil(7 / 3) = 3 packs, dealt round-robin
    assert [[m["key"] for m in p["models"]] for p in packs] == [
        ["t000", "t003", "t006"], ["t001", "t004"], ["t002", "t005"]]
    assert [p["key"] for p in packs] == ["p000", "p001", "p002"]
    ones = make_packs(grid[:2], 1)  # a pack of one keeps its model's key (its Train run is named after it)
    assert [p["key"] for p in ones] == ["t000", "t001"] and pack_models(ones[0]) == [grid[0]]
    assert pack_models(grid[0]) == [grid[0]]  # a Tune config from before packs: a pack of one


def test_asha_scheduler_prunes_on_the_epoch_axis(tmp_path):
    from ray.tune.schedulers import ASHAScheduler, FIFOScheduler

    from crnn_ray.sweep.run import _scheduler

    doc = tiny_config(training={"epochs": 6}, scheduler={"type": "asha", "grace_period": 2, "reduction_factor": 3,
                                                          "metric": "valid_rank_ic"})
    cfg = load_config(write_yaml(tmp_path / "asha.yaml", doc))
    sched = _scheduler(cfg)
    assert isinstance(sched, ASHAScheduler)
    assert sched._time_attr == "epoch" and sched._metric == "valid_rank_ic" and sched._mode == "max"
    assert sched._max_t == 6  # the last epoch: every report is an epoch's (no separate summary report)
    assert isinstance(_scheduler(load_config(SWEEPS / "tiny.yaml")), FIFOScheduler)
    assert cfg.models_per_trial == 1 and load_config(SWEEPS / "tiny.yaml").models_per_trial == "auto"
    # a pruned trial never reaches its last epoch: the select part is scored at each new best one
    assert cfg.training.select_scoring == "best" and load_config(SWEEPS / "tiny.yaml").training.select_scoring == "end"
    with pytest.raises(CliError, match=r"scheduler\.grace_period: 9 exceeds training\.epochs \(6\)"):
        doc["scheduler"]["grace_period"] = 9
        load_config(write_yaml(tmp_path / "asha.yaml", doc))


def test_check_looks_at_the_data_path_without_reading_the_data(tmp_path, capsys):
    from crnn_ray.data import save_panel, synthesize
    from crnn_ray.sweep.__main__ import main

    doc = tiny_config(data={"path": str(tmp_path / "nowhere.parquet"), "lookback": 10, "label": "y5"})
    doc["data"].pop("synth")
    bad = write_yaml(tmp_path / "bad.yaml", doc)
    assert main(["--config", str(bad), "--check"]) == 2
    assert f"error: bad.yaml: data.path: file not found: {tmp_path / 'nowhere.parquet'}" in capsys.readouterr().err

    df, meta = synthesize(n_symbols=12, n_days=80, seed=0)
    save_panel(df, tmp_path / "nowhere.parquet", meta)
    assert main(["--config", str(bad), "--check"]) == 0
    assert "bad.yaml: ok, 2 trial(s); data: " in capsys.readouterr().out
    doc["data"]["label"] = "y15"
    other = write_yaml(tmp_path / "other.yaml", doc)
    assert main(["--config", str(other), "--check"]) == 2
    assert "error: other.yaml: data.label: 'y15' is not a label of nowhere.parquet" in capsys.readouterr().err


def test_rows_say_what_each_net_saw_and_the_leaderboard_says_when_they_are_undertrained():
    from crnn_ray.sweep.leaderboard import trial_row, training_note

    grid = {"key": "t000", "variant_id": "cnn1d/m01", "spec": "cnn1d(c5s1*3)", "seed": 0}
    capped = [{"epoch": 3, "status": "ok", "reason": "completed 3 epochs", "samples_seen": 19_200,
               "train_rows": 48_000, "finished_by": "epochs"}]
    stopped = [{"epoch": 7, "status": "ok", "reason": "early stopped", "samples_seen": 336_000,
                "train_rows": 48_000, "finished_by": "early_stopping"}]
    row = trial_row(grid, capped, None, "cnn1d")
    assert (row["samples_seen"], row["train_rows"], row["finished_by"]) == (19_200, 48_000, "epochs")
    assert row["passes"] == pytest.approx(0.4)
    old = trial_row(grid, [{"epoch": 1, "status": "ok"}], None, "cnn1d")  # a report from before the keys
    assert old["samples_seen"] == -1 and math.isnan(old["passes"]) and old["finished_by"] == ""
    rows = lambda reports: pd.DataFrame([trial_row(grid, r, None, "cnn1d") for r in reports],  # noqa: E731
                                        columns=TRIAL_COLUMNS)
    note = training_note(rows([capped, capped, stopped]))
    assert note.startswith("undertrained: 2 of 3 models stopped at the epoch cap") and "0.40x" in note
    assert training_note(rows([stopped, stopped, capped])) is None


def test_stacks_group_consecutive_models_of_one_spec_up_to_the_size():
    from crnn_ray.sweep.placement import Placement
    from crnn_ray.sweep.trial import _stacks

    t = lambda key, spec, lookback=20: {"key": key, "spec": spec, "train_config": {"lookback": lookback}}  # noqa: E731
    trials = [t("a", "x"), t("b", "x"), t("c", "x"), t("d", "y"), t("e", "x", 10), t("f", "x", 10)]
    keys = lambda groups: [[m["key"] for m in g] for g in groups]  # noqa: E731
    assert keys(_stacks(iter(trials), 2)) == [["a", "b"], ["c"], ["d"], ["e", "f"]]
    assert keys(_stacks(iter(trials), 1)) == [[m["key"]] for m in trials]
    # a full group is handed over before the next model is asked for (asking claims it from the PackQueue)
    asked = []

    def claiming():
        for m in trials:
            asked.append(m["key"])
            yield m

    for group in _stacks(claiming(), 1):
        assert asked[-1] == group[-1]["key"]
    asked.clear()
    for group in _stacks(claiming(), 2):
        assert asked[-1] in (group[-1]["key"], *[m["key"] for m in trials[trials.index(group[-1]) + 1:][:1]])
    p = Placement(cpus_per_trial=1, gpus_per_trial=0, max_concurrent_trials=1)
    assert p.stack_size("cpu") == 1 and p.stack_size("cuda") == 8
    assert Placement(1, 1, 1, stack=4).stack_size("cpu") == 4
