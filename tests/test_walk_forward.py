"""Walk-forward end to end on a real local Ray: a window x variant x seed sweep, `--resume` after one more
window trains only that window's trials, and the stitched scoring of every window's test part into one
out-of-sample record (which `python -m crnn_ray.evaluate` recomputes from signals + labels alone).

The config-level checks (bad walk_forward keys) need no Ray and run through the CLI's `--check`.
"""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pandas as pd
import pyarrow.parquet as pq
import pytest
import yaml

from conftest import read_results_json, write_yaml
from crnn_ray.io import CliError

WF = {"train": 150, "valid": 50, "step": 30, "windows": 3}


def _config(windows=3, **walk_forward) -> dict:
    return {
        "name": "wf",
        "data": {"synth": {"symbols": 60, "days": 330, "seed": 3, "horizon": 5}, "lookback": 10,
                 "walk_forward": {**WF, "windows": windows, **walk_forward}},
        "variants": ["cnn1d/m01", "cnn1d/m02"],
        "seeds": [0, 1],
        "training": {"epochs": 1, "batch_size": 128, "max_steps_per_epoch": 3, "eval_batch_size": 2048},
        "resources": {"cpus_per_trial": 1},
    }


# ------------------------------------------------------------------------------------------- config errors
def _check(tmp_path, doc, capsys) -> tuple[int, str, str]:
    from crnn_ray.sweep.__main__ import main

    rc = main(["--config", str(write_yaml(tmp_path / "wf.yaml", doc)), "--check"])
    out, err = capsys.readouterr()
    return rc, out, err


def test_check_prints_the_windows_as_dates(tmp_path, capsys):
    rc, out, err = _check(tmp_path, _config(), capsys)
    assert rc == 0, err
    lines = out.splitlines()
    windows = [ln for ln in lines if ln.startswith("w0") and "train" in ln]
    assert len(windows) == 3 and all("test" in ln and "select" in ln for ln in windows)
    assert "w00  train 2018-01-02.." in windows[0]  # rolling window 0 starts on the panel's first day
    assert [ln.split()[0] for ln in lines if ln.startswith("w02-")] == [f"w02-t00{i}" for i in range(4)]
    assert lines[-1].startswith(f"{tmp_path / 'wf.yaml'}: ok, 12 trial(s) (3 walk-forward window(s))")


@pytest.mark.parametrize("change, key", [
    ({"step": 0}, "data.walk_forward.step"),
    ({"step": -30}, "data.walk_forward.step"),
    ({"embargo": 2}, "walk_forward.embargo"),            # below the horizon: labels would overlap the next part
    ({"train": 400}, "walk_forward.train"),              # too little data for one window
    ({"first_test": "2018-03-01"}, "walk_forward.first_test"),
    ({"windows": 9}, "walk_forward.windows"),
    ({"every": 5}, "data.walk_forward.every"),
])
def test_a_bad_walk_forward_config_is_one_line_naming_the_key(tmp_path, capsys, change, key):
    rc, out, err = _check(tmp_path, _config(**change), capsys)
    assert rc == 2
    assert err.count("\n") == 1 and err.startswith("error: wf.yaml: ") and key in err, err


def test_splits_and_walk_forward_together_are_refused(tmp_path, capsys):
    doc = _config()
    doc["data"]["splits"] = {"fractions": [0.6, 0.2, 0.2]}
    rc, _, err = _check(tmp_path, doc, capsys)
    assert rc == 2 and "data.walk_forward: give either data.splits or data.walk_forward" in err


# ----------------------------------------------------------------------------------------------- the sweep
def _grown_config(panel: Path) -> dict:
    """The production path: `windows: all` on a panel file that gains days between runs."""
    doc = _config()
    doc["data"] = {"path": str(panel), "label": "y5", "lookback": 10,
                   "walk_forward": {**WF, "windows": "all", "first_test": "2018-10-23"}}
    return doc


@pytest.fixture(scope="module")
def experiment(ray_local, tmp_path_factory):
    """A panel of 315 days (four windows, the fourth's test part cut to 15 days by the panel's end), then
    --resume once it has 360: the fourth window's test part grows to 30 days and a fifth window is added.
    Returns (root, first outcome, resumed outcome, first trials, Tune's result rows per earlier pack)."""
    from crnn_ray.data import save_panel, synthesize
    from crnn_ray.sweep import run_sweep

    root = tmp_path_factory.mktemp("wf")
    df, meta = synthesize(n_symbols=60, n_days=360, seed=3, horizon=5)
    dates = np.sort(df["date"].unique())
    panel = root / "panel.parquet"
    save_panel(df[df["date"] <= dates[314]].reset_index(drop=True), panel, meta)
    first = run_sweep(write_yaml(root / "wf.yaml", _grown_config(panel)), storage=root / "runs")
    before = first.trials.copy()
    results_before = {p.name: len(read_results_json(p)) for p in (root / "runs" / "wf" / "tune").glob("p*")}
    save_panel(df, panel, meta)  # 45 new days at the end
    resumed = run_sweep(write_yaml(root / "wf.yaml", _grown_config(panel)), storage=root / "runs", resume=True)
    return root, first, resumed, before, results_before


def test_every_window_trains_its_own_trials_at_once(experiment):
    root, first, _, before, _ = experiment
    assert list(before.trial_id) == [f"w0{w}-t00{i}" for w in range(4) for i in range(4)]
    assert (before.status == "ok").all()
    assert list(before.window) == [w for w in range(4) for _ in range(4)]
    assert list(before.line) == [f"t00{i}" for _ in range(4) for i in range(4)]
    config = yaml.safe_load((root / "runs" / "wf" / "config.yaml").read_text())
    windows = config["resolved"]["windows"]
    assert windows[3]["test"][0] < windows[3]["test"][1] and len(windows) == 5  # (config.yaml after the resume)
    for row in before.itertuples():  # each model trained on its window's dates, recorded in its checkpoint
        meta = json.loads((root / "runs" / "wf" / row.checkpoint / "meta.json").read_text())
        assert meta["window"] == row.window and meta["line"] == row.line
        assert [meta["splits"][p] for p in ("train", "valid", "select")] == \
            [windows[row.window][p] for p in ("train", "valid", "select")]
        assert meta["splits"]["test"][0] == windows[row.window]["test"][0]
    # the fourth window was trained while the panel ended 15 days into its test part; it now has 30
    w3 = json.loads((root / "runs" / "wf" / before.checkpoint.iloc[-1] / "meta.json").read_text())["splits"]["test"]
    assert w3[1] < windows[3]["test"][1]
    # one Tune experiment: all windows were scheduled together, mixed into the same packs
    tune_trials = [p.name for p in (root / "runs" / "wf" / "tune").iterdir() if p.is_dir()]
    assert sorted(tune_trials) == ["p000", "p001"]


def test_resume_with_one_more_window_trains_only_that_window(experiment):
    root, first, resumed, before, results_before = experiment
    exp = root / "runs" / "wf"
    config = yaml.safe_load((exp / "config.yaml").read_text())
    generations = config["resolved"]["generations"]
    assert [g["tune"] for g in generations] == ["tune", "tune-2"]
    assert generations[1]["trials"] == [f"w04-t00{i}" for i in range(4)]
    assert len(config["resolved"]["windows"]) == 5
    trials = resumed.trials
    assert list(trials.trial_id) == [f"w0{w}-t00{i}" for w in range(5) for i in range(4)]
    assert (trials.status == "ok").all()
    old = trials[trials.window < 4].reset_index(drop=True)
    for col in ("valid_ic", "select_ic", "checkpoint", "best_epoch"):
        assert old[col].tolist() == before[col].tolist(), col
    # the earlier packs reported nothing new; the new window's Train runs are the new generation's only
    assert {p.name: len(read_results_json(p)) for p in (exp / "tune").glob("p*")} == results_before
    new_runs = sorted(p.name for p in (exp / "train").iterdir() if p.is_dir() and p.name.startswith("wf-g2"))
    assert new_runs and all(r.startswith("wf-g2p") for r in new_runs)
    new_ckpts = trials[trials.window == 4].checkpoint.tolist()
    assert all("/wf-g2p" in c for c in new_ckpts)


def test_resume_refuses_a_moved_window(experiment, tmp_path):
    from crnn_ray.sweep import run_sweep

    root = experiment[0]
    doc = _grown_config(root / "panel.parquet")
    doc["data"]["walk_forward"]["step"] = 25
    moved = write_yaml(tmp_path / "wf.yaml", doc)
    with pytest.raises(CliError, match="differs from the experiment's.*only `windows` may change"):
        run_sweep(moved, storage=root / "runs", resume=True)


# ----------------------------------------------------------------------------------------------- scoring
@pytest.fixture(scope="module")
def stitched(experiment):
    from crnn_ray.score import ScoreConfig, run_score

    root = experiment[0]
    out = root / "score"
    metrics = run_score(ScoreConfig(experiment=root / "runs" / "wf", out=out, top_k=1, seed_average=True,
                                     select_by="select_ic", path="in_process"))
    return root, out, metrics


def test_stitched_signals_tile_the_out_of_sample_period(stitched):
    root, out, metrics = stitched
    windows = yaml.safe_load((root / "runs" / "wf" / "config.yaml").read_text())["resolved"]["windows"]
    panel_dates = pd.to_datetime(pq.read_table(root / "panel.parquet",
                                               columns=["date"]).column("date").to_pandas()).unique()
    parts = sorted((out / "signals").iterdir())
    dates = [p.name.split("=")[1] for p in parts]
    expected = [str(d.date()) for d in sorted(panel_dates)
                if pd.Timestamp(windows[0]["test"][0]) <= d <= pd.Timestamp(windows[-1]["test"][1])]
    assert dates == expected  # every test day of every window, once, in order
    trading = [str(d.date()) for d in sorted(panel_dates)]
    for part, date in zip(parts, dates):
        meta = json.loads(pq.read_schema(part / "part-0.parquet").metadata[b"crnn_ray_signals"])
        w = meta["window"]
        assert windows[w]["test"][0] <= date <= windows[w]["test"][1]
        for m in meta["members"]:  # scored only by models whose data ended at least the embargo before
            assert m["trial_id"].startswith(f"w{w:02d}-")
            assert trading.index(date) - trading.index(m["trained_through"]) > m["embargo"]
    doc = metrics["walk_forward"]
    assert doc["n_windows"] == 5 and doc["n_dates"] == len(dates)
    assert [w["window"] for w in doc["windows"]] == [0, 1, 2, 3, 4]


def test_stitched_metrics_recompute_from_signals_and_labels_alone(stitched, tmp_path):
    import shlex

    from crnn_ray.evaluate import main as evaluate_main

    _, out, metrics = stitched
    argv = shlex.split(metrics["recompute"])[3:]  # after `python -m crnn_ray.evaluate`
    argv[argv.index("--json") + 1] = str(tmp_path / "check.json")
    assert evaluate_main(argv) == 0
    check = json.loads((tmp_path / "check.json").read_text())
    assert check["summary"] == metrics["ensemble"]["summary"]
    assert metrics["ensemble"]["summary"]["pnl_method"] == "realised"


def test_walk_forward_leaderboard_states_differences_with_a_standard_error(stitched):
    _, out, metrics = stitched
    doc = metrics["walk_forward"]
    rows = {r["name"]: r for r in doc["leaderboard"]}
    assert {"cnn1d/m01", "cnn1d/m02", "ENSEMBLE", "baseline/ridge", "baseline/reversal"} <= set(rows)
    variants = [r for r in doc["leaderboard"] if r["kind"] == "variant"]
    # ranked by RankIC (the headline); the reference is ex ante: what selection alone picked in each window
    assert variants[0]["rank_ic"] >= variants[1]["rank_ic"]
    assert doc["reference"] == "PICK (ex ante)" and doc["reference_kind"].startswith("ex ante")
    assert rows[doc["reference"]]["rank_ic_diff"] is None and rows[doc["reference"]]["ic_diff"] is None
    other = variants[1]
    assert other["n_seeds"] == 2 and np.isfinite(other["rank_ic_diff"]) and np.isfinite(other["rank_ic_diff_tstat_hac"])
    assert np.isfinite(other["ic_diff_tstat_hac"]) and np.isfinite(other["rank_ic_tstat_nonoverlap"])
    assert all(f"ic_w0{w}" in other for w in range(5))
    # the variant's IC is the mean over its seeds of their own out-of-sample ICs
    seeds = [metrics["members"][f"{other['name']}@seed{s}"]["summary"]["ic"] for s in (0, 1)]
    assert other["ic"] == pytest.approx(np.mean(seeds), abs=0.02)
    table = pd.read_parquet(out / "walk_forward.parquet")
    assert list(table.name) == [r["name"] for r in doc["leaderboard"]]
    html = (out / "report.html").read_text()
    assert "Walk-forward leaderboard" in html and "Walk-forward windows" in html
    assert (out / "figures" / "wf_pnl.png").stat().st_size > 1000
    assert "Walk-forward leaderboard" in (out / "walk_forward.md").read_text()


def test_walk_forward_is_judged_ex_ante_against_the_pick_and_the_best_baseline(stitched):
    """vs_selected_member is each window's ex-ante pick (the trial ranked first by select_by on that window's
    selection part, found here from trials.parquet alone); the best baseline is chosen on the selection part; the
    ablation verdict compares cnn1d/m02 with its family's model 1 and says what picking the best is worth."""
    root, out, metrics = stitched
    trials = pd.read_parquet(root / "runs" / "wf" / "trials.parquet")
    ok = trials[trials.status.isin(["ok", "pruned"]) & trials.select_ic.notna()]
    first = ok.sort_values(["window", "select_ic", "trial_id"], ascending=[True, False, True]).groupby("window").head(1)
    names = {r.line: f"{r.variant_id}@seed{int(r.seed)}" for r in trials.itertuples()}
    vs = metrics["vs_selected_member"]
    assert [(p["window"], p["line"]) for p in vs["picks"]] == [(int(r.window), names[r.line]) for r in first.itertuples()]
    rows = {r["name"]: r for r in metrics["walk_forward"]["leaderboard"]}
    assert rows["PICK (ex ante)"]["rank_ic"] == pytest.approx(vs["rank_ic_member"])
    assert vs["rank_ic_ensemble"] == pytest.approx(metrics["ensemble"]["summary"]["rank_ic"])
    best = metrics["best_baseline"]
    assert best["chosen_by"].startswith("mean daily RankIC on the selection part")
    vb = metrics["vs_best_baseline"]
    assert vb["baseline"] == best["name"]
    assert {r["name"] for r in vb["rows"]} == {"ENSEMBLE", "PICK (ex ante)", "cnn1d/m01", "cnn1d/m02"}
    ens = next(r for r in vb["rows"] if r["name"] == "ENSEMBLE")
    assert ens["diff"] == pytest.approx(metrics["ensemble"]["summary"]["rank_ic"]
                                        - metrics["baselines"][best["name"]]["rank_ic"], abs=2e-3)
    ab = metrics["walk_forward"]["ablation"]
    assert ab["bases"] == {"cnn1d": "cnn1d/m01"} and [r["variant"] for r in ab["rows"]] == ["cnn1d/m02"]
    row = ab["rows"][0]
    assert row["p_holm"] == pytest.approx(row["p_value"], abs=1e-9)  # one comparison: Holm changes nothing
    assert 0 <= row["p_romano_wolf"] <= 1 and row["beats_base"] == (row["p_romano_wolf"] <= 0.05 and row["diff"] > 0)
    assert "pbo" in metrics["walk_forward"]["overfitting"]
    text = (out / "walk_forward.md").read_text()
    assert "Ablation verdict" in text and "probability of backtest overfitting" in text
    assert "Against the best baseline" in (out / "report.html").read_text()


def _copied_experiment(root: Path, tmp_path: Path) -> tuple[Path, dict]:
    """The experiment's tables and config.yaml in a copy whose checkpoints point back at the original (its
    windows to edit)."""
    import shutil

    exp = tmp_path / "wf"
    shutil.copytree(root / "runs" / "wf", exp, ignore=shutil.ignore_patterns("tune*", "train"))
    trials = pd.read_parquet(exp / "trials.parquet")
    trials["checkpoint"] = [str(root / "runs" / "wf" / c) for c in trials.checkpoint]
    trials.to_parquet(exp / "trials.parquet")
    return exp, yaml.safe_load((exp / "config.yaml").read_text())


def test_a_window_scored_before_its_members_data_ended_is_refused(stitched, tmp_path):
    """A config.yaml whose window 2 test part starts inside that window's selection part (a tampered or
    mis-built experiment): the scorer refuses instead of writing a look-ahead record."""
    from crnn_ray.score import ScoreConfig, run_score

    exp, config = _copied_experiment(stitched[0], tmp_path)
    config["resolved"]["windows"][2]["test"][0] = config["resolved"]["windows"][2]["select"][0]
    (exp / "config.yaml").write_text(yaml.safe_dump(config, sort_keys=False))
    with pytest.raises(CliError, match=r"window w02 .*look-ahead"):
        run_score(ScoreConfig(experiment=exp, out=tmp_path / "out", path="in_process"))
    assert not (tmp_path / "out").exists()


def test_latest_scores_with_the_newest_window(stitched, capsys):
    from crnn_ray.score import ScoreConfig, run_score

    root = stitched[0]
    run_score(ScoreConfig(experiment=root / "runs" / "wf", out=root / "latest", latest=True,
                           path="in_process"))
    out = capsys.readouterr().out
    assert "walk-forward: --latest uses the newest window w04" in out
    part = next((root / "latest" / "signals").iterdir())
    meta = json.loads(pq.read_schema(part / "part-0.parquet").metadata[b"crnn_ray_signals"])
    assert all(m["trial_id"].startswith("w04-") for m in meta["members"])
    assert Path(part).name.startswith("date=")


def test_a_day_after_every_test_part_is_scored_by_the_newest_window(stitched, tmp_path, capsys):
    """The daily job with a DATE past the recorded windows (the panel gained a day since the last retrain)."""
    from crnn_ray.score import ScoreConfig, run_score

    exp, config = _copied_experiment(stitched[0], tmp_path)
    last = config["resolved"]["windows"][-1]["test"][1]
    dates = sorted(p.name.split("=")[1] for p in (stitched[1] / "signals").iterdir())
    config["resolved"]["windows"][-1]["test"][1] = dates[-2]  # as if the panel's last day came after it
    (exp / "config.yaml").write_text(yaml.safe_dump(config, sort_keys=False))
    run_score(ScoreConfig(experiment=exp, out=tmp_path / "out", start=last, end=last, path="in_process"))
    assert "dates after every window's test part use the newest window w04" in capsys.readouterr().out
    assert [p.name for p in (tmp_path / "out" / "signals").iterdir()] == [f"date={last}"]
