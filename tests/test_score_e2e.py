"""The scorer end to end on a real tiny sweep (run once for the module on a real local Ray).

Covers: outputs and their agreement with `python -m crnn_ray.evaluate`, the oracle IC beside the ensemble's,
the three ensemble methods against a hand computation, byte-identical reruns, Ray Data == in-process, the
look-ahead refusal, corrupt / missing checkpoints, labels absent, the daily job adding one partition, and
--latest scoring only the panel's last date.
"""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import numpy as np
import pandas as pd
import pyarrow.parquet as pq
import pytest
from scipy.stats import rankdata

from conftest import tiny_config, write_yaml
from crnn_ray.baselines import BASELINES
from crnn_ray.score.__main__ import main as score_main
from crnn_ray.sweep import run_sweep

pytestmark = pytest.mark.ray


@pytest.fixture(scope="module")
def experiment(ray_local, tmp_path_factory) -> Path:
    """configs/sweeps/tiny.yaml run once: 2 members (convgru/m01, cnn1d/m01) on a synthetic market."""
    root = tmp_path_factory.mktemp("score")
    config = write_yaml(root / "tiny.yaml", tiny_config(name="tiny"))
    outcome = run_sweep(config, storage=root / "runs")
    return Path(outcome.experiment_dir)


def run(args: list[str], capsys) -> tuple[int, str, str]:
    capsys.readouterr()
    rc = score_main([str(a) for a in args])
    out, err = capsys.readouterr()
    return rc, out, err


def partitions(out: Path) -> dict[str, bytes]:
    return {str(p.relative_to(out)): p.read_bytes() for p in sorted((out / "signals").rglob("*.parquet"))}


def read_signals(out: Path) -> pd.DataFrame:
    """signals/ as a reader opens it: one plain pandas call, the date from the date=YYYY-MM-DD folders (an ISO
    string category there), columns in the documented order (date, symbol, signal, members)."""
    df = pd.read_parquet(out / "signals")
    df = df.assign(date=pd.to_datetime(df["date"].astype(str)))
    return df[["date", *[c for c in df.columns if c != "date"]]].sort_values(["date", "symbol"], ignore_index=True)


@pytest.fixture(scope="module")
def scored(experiment, tmp_path_factory):
    """The default command (mean, test period, auto path) and what it printed."""
    out = tmp_path_factory.mktemp("scored") / "out"
    rc = score_main(["--experiment", str(experiment), "--out", str(out), "--in-process"])
    assert rc == 0
    return out


def test_outputs_agree_with_evaluate_and_show_oracle(experiment, scored, tmp_path, capsys):
    out = scored
    metrics = json.loads((out / "metrics.json").read_text())
    trials = pd.read_parquet(experiment / "trials.parquet")
    names = list(metrics["weights"])
    assert len(names) == int((trials["status"] == "ok").sum()) == 2
    sig = read_signals(out)
    assert list(sig.columns) == ["date", "symbol", "signal", *names]
    dirs = sorted(p.name for p in (out / "signals").iterdir())
    assert dirs == [f"date={d}" for d in sorted(pd.to_datetime(sig["date"]).dt.strftime("%Y-%m-%d").unique())]
    # the date lives in the folder names only: a copy inside the files breaks every hive reader's merge
    assert pq.read_schema(next((out / "signals").rglob("*.parquet"))).names == ["symbol", "signal", *names]
    assert all(len(list((out / "signals" / d).iterdir())) == 1 for d in dirs)
    test = json.loads((experiment / trials["checkpoint"].iloc[0] / "meta.json").read_text())["splits"]["test"]
    assert dirs[-1] == f"date={test[1]}" and dirs[0] >= f"date={test[0]}"

    # the same figures from the evaluate command on what the scorer wrote
    from crnn_ray.evaluate import main as evaluate_main

    check = tmp_path / "check.json"
    argv = metrics["recompute"].split()[3:]
    argv[argv.index("--json") + 1] = str(check)
    assert evaluate_main(argv) == 0
    recomputed = json.loads(check.read_text())
    assert set(recomputed) == set(metrics["ensemble"])
    assert recomputed["summary"] == metrics["ensemble"]["summary"]
    assert set(metrics["members"]) == set(names)
    assert metrics["members"][names[0]]["summary"]["ic"] != metrics["ensemble"]["summary"]["ic"]

    # the synthetic market's oracle IC is reported beside the ensemble's test IC
    assert 0.05 < metrics["oracle_ic"] < 0.6 and metrics["oracle_ic_panel"] > 0
    assert metrics["ic_vs_oracle"] == pytest.approx(metrics["ensemble"]["summary"]["ic"] / metrics["oracle_ic"])
    corr = pd.DataFrame(metrics["member_correlation"])
    assert list(corr.index) == [*names, "signal"] and np.allclose(np.diag(corr), 1.0)

    html = (out / "report.html").read_text()
    for fig in ("pnl.png", "ic_daily.png", "ic_hist.png", "quantiles.png", "turnover.png", "correlation.png"):
        assert f"figures/{fig}" in html and (out / "figures" / fig).read_bytes()[:4] == b"\x89PNG"
    assert "oracle RankIC / IC" in html and "Sweep leaderboard" in html and names[0] in html
    # the verdict first; every held return realised, the returns basis and the oracle's RankIC stated
    assert list(metrics)[:2] == ["schema_version", "verdict"] and metrics["verdict"].startswith("VERDICT ensemble at ")
    assert html.index("VERDICT ensemble") < html.index("Key numbers")
    assert metrics["held_returns"].startswith("every held move realised")
    assert metrics["returns_basis"]["basis"] == metrics["ensemble"]["summary"]["returns_basis"] \
        == "neutral (equal-weight market + trailing beta + group)" and "rank_ic" in metrics["returns_basis"]["total_returns"]
    assert metrics["rank_ic_vs_oracle"] == pytest.approx(metrics["ensemble"]["summary"]["rank_ic"] / metrics["oracle_rank_ic"])
    assert metrics["turnover_control"]["windows"][0]["days"] in (1, 2, 3, 5, 10)
    labels = pd.read_parquet(out / "labels.parquet")
    # the label and the 1-day forward returns that realise the pnl (a held name's return is kept on rows whose
    # H-day label is already unknown)
    assert list(labels.columns) == ["date", "symbol", "y5", "y1", "beta", "group"]
    assert labels[["y5", "y1"]].notna().any(axis=1).all()


def test_evaluate_takes_label_horizon_and_lag_from_the_signals_metadata(scored, tmp_path, capsys):
    """`python -m crnn_ray.evaluate` on the scorer's files without --label / --horizon / --label-lag evaluates at
    the signals' own horizon (it ran as horizon 1 before), giving metrics.json's figures to the last bit; a flag
    that contradicts the metadata is one line, exit 2, nothing written."""
    from crnn_ray.evaluate import main as evaluate_main

    metrics = json.loads((scored / "metrics.json").read_text())
    assert metrics["label"] == "y5" and metrics["horizon"] == 5
    meta = json.loads(pq.read_schema(next((scored / "signals").rglob("*.parquet"))).metadata[b"crnn_ray_signals"])
    assert (meta["label"], meta["horizon"], meta["label_lag"]) == ("y5", 5, metrics["label_lag"])
    argv = metrics["recompute"].split()[3:]
    bare = list(argv)
    for flag in ("--label", "--horizon", "--label-lag"):
        i = bare.index(flag)
        del bare[i:i + 2]
    bare[bare.index("--json") + 1] = str(tmp_path / "bare.json")
    capsys.readouterr()
    assert evaluate_main(bare) == 0
    printed = capsys.readouterr().out
    assert f"label y5, horizon 5, label_lag {metrics['label_lag']} from the signals' metadata" in printed
    got = json.loads((tmp_path / "bare.json").read_text())
    assert got["summary"] == metrics["ensemble"]["summary"] and got["params"] == metrics["ensemble"]["params"]

    wrong = list(argv)
    wrong[wrong.index("--horizon") + 1] = "1"
    wrong[wrong.index("--json") + 1] = str(tmp_path / "wrong.json")
    assert evaluate_main(wrong) == 2
    assert capsys.readouterr().err == ("error: --horizon 1 contradicts the signals' metadata (horizon 5, label y5): "
                                       "drop the flag or pass the matching value\n")
    assert not (tmp_path / "wrong.json").exists()


def test_a_plain_pandas_merge_of_the_outputs_gets_every_labelled_row(scored):
    """signals/ (the date from the date= folders: ISO strings in pandas) and labels.parquet (date32, declared text
    for pandas) merge on (date, symbol) in one plain pandas call."""
    labels = pd.read_parquet(scored / "labels.parquet")
    merged = pd.read_parquet(scored / "signals").merge(labels, on=["date", "symbol"])
    labelled = labels.dropna(subset=["y5"])
    assert len(labelled) > 0 and merged["y5"].notna().sum() == len(labelled)
    assert merged["signal"].notna().all()
    keys = merged.dropna(subset=["y5"]).sort_values(["date", "symbol"])[["date", "symbol"]].astype(str)
    assert keys.to_numpy().tolist() == labelled.sort_values(["date", "symbol"])[["date", "symbol"]].astype(
        str).to_numpy().tolist()


def hand_signal(sig: pd.DataFrame, names: list[str], method: str, weights: np.ndarray) -> np.ndarray:
    """Per-date z-scores (or scaled ranks) by a plain loop, combined with the weights."""
    out = np.full(len(sig), np.nan)
    preds = sig[names].to_numpy(np.float64)
    for _, idx in sig.groupby("date").indices.items():
        p = preds[idx]
        if method == "rank_mean":
            n = len(idx)
            cols = np.column_stack([(rankdata(p[:, k]) - 1) / (n - 1) - 0.5 for k in range(len(names))])
        else:
            cols = (p - p.mean(axis=0)) / p.std(axis=0)
        out[idx] = cols @ weights
    return out


@pytest.mark.parametrize("method", ["mean", "ic_weighted", "rank_mean"])
def test_ensemble_equals_hand_computation(experiment, scored, method, tmp_path, capsys):
    if method == "mean":
        out = scored
    else:
        out = tmp_path / method
        rc, _, err = run(["--experiment", experiment, "--out", out, "--method", method, "--in-process"], capsys)
        assert rc == 0, err
    metrics = json.loads((out / "metrics.json").read_text())
    names = list(metrics["weights"])
    trials = pd.read_parquet(experiment / "trials.parquet").set_index("trial_id")
    # ic_weighted weighs by the selection figure (select_by: the split that chose nothing), not valid_ic
    chosen = np.array([trials.loc[metrics["member_info"][n]["trial_id"], metrics["select_by"]] for n in names])
    if method == "ic_weighted":
        weights = np.clip(chosen, 0, None) / np.clip(chosen, 0, None).sum()
    else:
        weights = np.full(len(names), 1.0 / len(names))
    assert np.allclose([metrics["weights"][n] for n in names], weights)
    sig = read_signals(out)
    np.testing.assert_allclose(sig["signal"].to_numpy(), hand_signal(sig, names, method, weights), atol=1e-12)


def but_provenance(data: bytes) -> bytes:
    """metrics.json's bytes up to its `provenance` block: the last key, the one block a rerun changes (its
    times, the command line)."""
    return data[:data.index(b'\n  "provenance": ')]


def test_rerun_is_byte_identical_and_ray_equals_in_process(experiment, scored, tmp_path, capsys):
    """A rerun writes the same bytes, except metrics.json's provenance (when and how it ran): everything before
    that block, the signals, labels, figures and report.html are identical."""
    first = partitions(scored)
    files = {n: (scored / n).read_bytes() for n in ("metrics.json", "report.html", "labels.parquet",
                                                    "figures/pnl.png")}
    files["metrics.json"] = but_provenance(files["metrics.json"])
    rc, _, err = run(["--experiment", experiment, "--out", scored, "--in-process"], capsys)
    assert rc == 0, err
    assert partitions(scored) == first
    reread = {n: (scored / n).read_bytes() for n in files}
    reread["metrics.json"] = but_provenance(reread["metrics.json"])
    assert reread == files
    again = tmp_path / "again"
    rc, _, err = run(["--experiment", experiment, "--out", again, "--in-process"], capsys)
    assert rc == 0, err
    for name in ("metrics.json", "report.html", "labels.parquet", "figures/pnl.png"):
        new, old = (again / name).read_bytes(), (scored / name).read_bytes()
        if name == "metrics.json":
            new, old = but_provenance(new), but_provenance(old)
        assert new == old.replace(str(scored).encode(), str(again).encode()), name
    assert partitions(again) == first
    block = json.loads((again / "metrics.json").read_text())["provenance"]
    assert block["argv"][1:3] == ["-m", "crnn_ray.score"] and str(again) in block["argv"]
    assert block["started"] <= block["ended"] and block["versions"]["torch"]

    # Ray Data: 4 batches over 2 actors (fractional CPUs), rows back in any order, vs the in-process path
    # with the same model chunk but one big batch -> the same bytes
    small = write_yaml(tmp_path / "small.yaml", {"chunk_rows": 128, "batch_rows": 256})
    big = write_yaml(tmp_path / "big.yaml", {"chunk_rows": 128})
    on_ray, in_proc = tmp_path / "ray", tmp_path / "in_process"
    rc, out, err = run(["--experiment", experiment, "--out", on_ray, "--ray", "--config", small], capsys)
    assert rc == 0, err
    assert "on the ray path" in out and "2 actors x 0.5 CPU" in out
    assert json.loads((on_ray / "metrics.json").read_text())["path"] == "ray"
    rc, out, err = run(["--experiment", experiment, "--out", in_proc, "--in-process", "--config", big], capsys)
    assert rc == 0, err
    assert partitions(on_ray) == partitions(in_proc)
    assert not list(tmp_path.glob(".score-keys-*"))  # the staged keys are gone


def test_in_sample_dates_are_refused(experiment, tmp_path, capsys):
    trials = pd.read_parquet(experiment / "trials.parquet")
    splits = json.loads((experiment / trials["checkpoint"].iloc[0] / "meta.json").read_text())["splits"]
    out = tmp_path / "in_sample"
    rc, _, err = run(["--experiment", experiment, "--out", out, "--start", splits["valid"][0],
                      "--end", splits["valid"][1]], capsys)
    assert rc == 2 and not out.exists()
    line = err.strip()
    assert "\n" not in line and line.startswith("error: look-ahead") and "--allow-in-sample" in line
    assert "@seed0" in line and splits["valid"][1] in line
    # a date after the valid window but inside the embargo is refused too
    after_valid = pd.Timestamp(splits["valid"][1]) + pd.Timedelta(days=1)
    rc, _, err = run(["--experiment", experiment, "--out", out, "--start", after_valid.date(),
                      "--end", splits["test"][1]], capsys)
    assert rc == 2 and "embargo" in err and not out.exists()

    rc, stdout, err = run(["--experiment", experiment, "--out", out, "--start", splits["valid"][0],
                           "--end", splits["valid"][1], "--allow-in-sample"], capsys)
    assert rc == 0, err
    assert "WARNING in-sample" in stdout
    assert set(json.loads((out / "metrics.json").read_text())["in_sample"]) == {
        n for n in json.loads((out / "metrics.json").read_text())["weights"]}


def copy_experiment(experiment: Path, dest: Path) -> Path:
    """trials + leaderboard + checkpoints, with trials.parquet pointing at the copies."""
    dest.mkdir(parents=True)
    trials = pd.read_parquet(experiment / "trials.parquet")
    for i, row in trials.iterrows():
        if isinstance(row["checkpoint"], str):
            target = dest / "ckpt" / str(row["trial_id"])
            shutil.copytree(experiment / row["checkpoint"], target)
            trials.loc[i, "checkpoint"] = str(target)
    trials.to_parquet(dest / "trials.parquet")
    shutil.copy(experiment / "leaderboard.parquet", dest / "leaderboard.parquet")
    return dest


def test_corrupt_or_missing_checkpoint_fails_cleanly(experiment, tmp_path, capsys):
    exp = copy_experiment(experiment, tmp_path / "exp")
    trials = pd.read_parquet(exp / "trials.parquet").sort_values("valid_ic", ascending=False)
    best = exp / trials["checkpoint"].iloc[0] / "best.pt"
    best.write_bytes(b"not a torch file")
    out = tmp_path / "out"
    rc, stdout, err = run(["--experiment", exp, "--out", out], capsys)
    assert rc == 2 and not out.exists()
    assert err.count("\n") == 1 and str(best) in err and "corrupt" in err

    best.unlink()
    rc, _, err = run(["--experiment", exp, "--out", out], capsys)
    assert rc == 2 and not out.exists() and str(best) in err and "missing" in err

    # failed and diverged trials never join: the broken trial marked diverged -> the other one scores alone
    t = pd.read_parquet(exp / "trials.parquet")
    t.loc[t["checkpoint"] == str(best.parent), "status"] = "diverged"
    t.to_parquet(exp / "trials.parquet")
    rc, stdout, err = run(["--experiment", exp, "--out", out, "--top-k", "5"], capsys)
    assert rc == 0, err
    names = list(json.loads((out / "metrics.json").read_text())["weights"])
    assert names == [f"{trials['variant_id'].iloc[1]}@seed0"]

    rc, _, err = run(["--experiment", exp, "--out", tmp_path / "o2", "--select-by", "test_ic"], capsys)
    assert rc == 2 and "test metric" in err and not (tmp_path / "o2").exists()


def test_labels_absent_gives_signals_only(experiment, scored, tmp_path, capsys):
    from crnn_ray.data import save_panel

    src = experiment / "data" / "panel.parquet"
    meta = json.loads(pq.read_schema(src).metadata[b"crnn_ray"])
    df = pd.read_parquet(src)
    df = df.drop(columns=[c for c in df.columns if c == "y5" or c.startswith("oracle_")])
    panel = tmp_path / "nolabels.parquet"
    save_panel(df, panel, {**meta, "labels": [], "horizons": {}})
    dates = sorted(p.name[5:] for p in (scored / "signals").iterdir())
    out = tmp_path / "out"
    rc, stdout, err = run(["--experiment", experiment, "--out", out, "--data", panel,
                           "--start", dates[0], "--end", dates[-1]], capsys)
    assert rc == 0, err
    assert "labels absent" in stdout
    assert partitions(out) == partitions(scored)  # same rows, same predictions
    assert not (out / "metrics.json").exists() and not (out / "report.html").exists()


def test_new_day_adds_one_partition_and_touches_no_other(experiment, scored, tmp_path, capsys):
    dates = sorted(p.name[5:] for p in (scored / "signals").iterdir())
    out = tmp_path / "daily"
    rc, _, err = run(["--experiment", experiment, "--out", out, "--end", dates[-2]], capsys)
    assert rc == 0, err
    before = partitions(out)
    stamps = {p: (out / p).stat().st_mtime_ns for p in before}
    assert len(before) == len(dates) - 1

    rc, stdout, err = run(["--experiment", experiment, "--out", out, "--start", dates[-1], "--end", dates[-1]],
                          capsys)
    assert rc == 0, err
    assert "in-process path" in stdout  # one day: the auto choice skips Ray Data's start-up
    after = partitions(out)
    new = set(after) - set(before)
    assert new == {f"signals/date={dates[-1]}/part-0.parquet"}
    assert all(after[p] == before[p] and (out / p).stat().st_mtime_ns == stamps[p] for p in before)
    # a date's signal depends on that date only: the new partition equals the full run's
    assert after[next(iter(new))] == partitions(scored)[next(iter(new))]


def test_latest_scores_only_the_panels_last_date(experiment, scored, tmp_path, capsys):
    """--latest (the daily job): start = end = the last date of the panel scored, the experiment's or --data's."""
    from crnn_ray.data import save_panel

    panel = experiment / "data" / "panel.parquet"
    df = pd.read_parquet(panel)
    days = sorted(pd.to_datetime(df["date"]).dt.strftime("%Y-%m-%d").unique())
    out = tmp_path / "latest"
    rc, stdout, err = run(["--experiment", experiment, "--out", out, "--latest"], capsys)
    assert rc == 0, err
    assert f"latest date in {panel}: {days[-1]}" in stdout
    assert list(partitions(out)) == [f"signals/date={days[-1]}/part-0.parquet"]
    assert partitions(out) == {p: b for p, b in partitions(scored).items() if days[-1] in p}

    # with --data, the last date of that panel (here: the same market one day shorter)
    meta = json.loads(pq.read_schema(panel).metadata[b"crnn_ray"])
    shorter = tmp_path / "shorter.parquet"
    save_panel(df[pd.to_datetime(df["date"]) < pd.Timestamp(days[-1])], shorter, meta)
    rc, stdout, err = run(["--experiment", experiment, "--out", out, "--data", shorter, "--latest"], capsys)
    assert rc == 0, err
    assert f"latest date in {shorter}: {days[-2]}" in stdout
    assert sorted(partitions(out)) == [f"signals/date={d}/part-0.parquet" for d in days[-2:]]

    # not with --start / --end: one line, nothing written
    for flag in ("--start", "--end"):
        rc, _, err = run(["--experiment", experiment, "--out", tmp_path / "bad", "--latest", flag, days[-1]],
                         capsys)
        assert rc == 2 and err.count("\n") == 1 and "--latest" in err and "--start/--end" in err
        assert not (tmp_path / "bad").exists()


def test_declared_gpu_takes_the_cuda_path_and_matches(experiment, scored, tmp_path):
    """A Ray with a (fake) GPU: one actor per GPU, device "cuda" requested, CPU tensors where CUDA is absent."""
    import subprocess
    import sys

    out = tmp_path / "gpu"
    script = (
        "import ray, sys\n"
        "from pathlib import Path\n"
        "from crnn_ray.score import ScoreConfig, run_score\n"
        "ray.init(address='local', num_cpus=2, num_gpus=1, include_dashboard=False, log_to_driver=False)\n"
        f"m = run_score(ScoreConfig(experiment=Path({str(experiment)!r}), out=Path({str(out)!r}), path='ray'))\n"
        "ray.shutdown()\n"
    )
    proc = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, timeout=300,
                          env={k: v for k, v in __import__("os").environ.items() if k != "RAY_ADDRESS"})
    assert proc.returncode == 0, proc.stderr[-2000:]
    assert "on the ray path" in proc.stdout and "1 actors x 0.5 CPU" in proc.stdout
    assert partitions(out) == partitions(scored)


def test_report_has_baselines_and_the_selected_member_comparison(experiment, scored, tmp_path, capsys):
    metrics = json.loads((scored / "metrics.json").read_text())
    assert set(metrics["baselines"]) == set(BASELINES)
    assert metrics["baselines"]["ridge"]["n_days"] == metrics["ensemble"]["summary"]["n_days"]
    vs = metrics["vs_selected_member"]
    trials = pd.read_parquet(experiment / "trials.parquet").sort_values(["select_rank_ic", "trial_id"],
                                                                        ascending=[False, True])  # the default
    assert vs["trial_id"] == trials["trial_id"].iloc[0] and vs["in_ensemble"]
    assert vs["ic_member"] == metrics["members"][vs["member"]]["summary"]["ic"]
    assert vs["ic_ensemble"] == metrics["ensemble"]["summary"]["ic"]
    # the defaults: top-K without seed averaging (the best measured rule, docs/scoring.md)
    assert metrics["seed_average"] is False and metrics["selection"]["rule"] == "top_k"
    html = (scored / "report.html").read_text()
    assert "vs selected member" in html and "baseline ridge" in html and "select IC" in html
    # greedy: chosen on the selection split; the selected member is predicted even when left out
    out = tmp_path / "greedy"
    rc, printed, _ = run(["--experiment", experiment, "--out", out, "--in-process", "--selection", "greedy"], capsys)
    assert rc == 0 and "greedy selection on " in printed and "ensemble vs selected member " in printed
    g = json.loads((out / "metrics.json").read_text())
    assert g["selection"]["rule"] == "greedy" and g["selection"]["trace"][0]["unit"] == g["selection"]["pool"][0]
    assert g["selection"]["split"][1] < g["period"]["start"]
    assert list(read_signals(out).columns)[3:] == list(g["weights"])  # one column per ensemble trial only


def test_a_copied_experiment_scores_its_own_panel_and_refuses_a_swapped_one(experiment, tmp_path, capsys):
    """A copy of an experiment is self-contained: it scores its own data/panel.parquet (found relative to the
    copy), even when the original's path holds another market now; a panel swapped for another file under the
    same name is refused in one line (the checkpoints' fingerprint of the data they saw), with nothing written."""
    copy = tmp_path / "copy" / experiment.name
    shutil.copytree(experiment, copy)
    rc, out, err = run(["--experiment", copy, "--out", tmp_path / "a", "--in-process"], capsys)
    assert rc == 0, err
    metrics = json.loads((tmp_path / "a" / "metrics.json").read_text())
    assert metrics["panel"] == str((copy / "data" / "panel.parquet").resolve())
    meta = json.loads(next(copy.rglob("meta.json")).read_text())
    assert len(meta["seen_data"]["fingerprint"]) == 16 and meta["panel"] == str(experiment / "data" / "panel.parquet")

    from crnn_ray.data import save_panel
    from crnn_ray.data.synth import synthesize

    df, other = synthesize(n_symbols=40, n_days=260, seed=8)  # the same shape, another market
    save_panel(df, copy / "data" / "panel.parquet", other)
    rc, out, err = run(["--experiment", copy, "--out", tmp_path / "b", "--in-process"], capsys)
    assert rc == 2 and err.count("\n") == 1 and "not the data member" in err and "was trained on" in err, err
    assert not (tmp_path / "b").exists()


def test_the_output_folder_is_swapped_whole(experiment, scored, tmp_path, monkeypatch, capsys):
    """A failure while writing (here a full disk at the report) leaves the output folder as it was -- no new
    partitions beside an old metrics.json -- and says so in one line naming the file."""
    import errno
    import os

    from crnn_ray.score import report

    out = tmp_path / "out"
    shutil.copytree(scored, out)
    before = {p: p.read_bytes() for p in out.rglob("*") if p.is_file()}

    def full(path, *args, **kwargs):
        raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC), str(path / "metrics.json"))

    monkeypatch.setattr(report, "write_report", full)
    rc, _, err = run(["--experiment", experiment, "--out", out, "--in-process", "--top-k", "1"], capsys)
    assert rc == 2 and err.startswith("error: ") and err.strip().endswith("metrics.json: No space left on device")
    assert {p: p.read_bytes() for p in out.rglob("*") if p.is_file()} == before
    assert sorted(p.name for p in tmp_path.iterdir()) == ["out"]  # no staging folder left


def test_an_unwritable_out_is_one_line(experiment, tmp_path, capsys):
    """--out on a read-only filesystem (a tmpfs mounted read-only for the test): one line, exit 2."""
    import subprocess

    ro = tmp_path / "ro"
    ro.mkdir()
    subprocess.run(["mount", "-t", "tmpfs", "-o", "ro,size=1m", "tmpfs", str(ro)], check=True)
    try:
        rc, _, err = run(["--experiment", experiment, "--out", ro / "score", "--in-process"], capsys)
    finally:
        subprocess.run(["umount", "-l", str(ro)], check=False)
    assert rc == 2 and err.count("\n") == 1 and err.startswith(f"error: {ro}") and "Read-only file system" in err


def test_the_experiment_keeps_its_runs_in_mlflow_and_its_console_in_logs(experiment, scored):
    """One MLflow run per model (nested under the sweep's run, its epochs as steps, its checkpoint named) and
    the scoring's run with its report, all read back with MLflow's client; sweep.log and score.log as printed,
    without ANSI codes; one TensorBoard series per model."""
    from mlflow.tracking import MlflowClient

    from crnn_ray.tracking import tracking_uri

    client = MlflowClient(tracking_uri(experiment))
    exp = client.get_experiment_by_name(experiment.name)
    runs = client.search_runs([exp.experiment_id])
    role = lambda r: r.data.tags.get("crnn_ray.role")  # noqa: E731
    sweep = [r for r in runs if role(r) == "sweep"]
    assert len(sweep) == 1 and sweep[0].info.status == "FINISHED"
    models = {r.data.tags["crnn_ray.model"]: r for r in runs if "crnn_ray.model" in r.data.tags}
    trials = pd.read_parquet(experiment / "trials.parquet")
    assert set(models) == set(trials.trial_id)
    for row in trials.itertuples():
        run = models[row.trial_id]
        assert run.data.tags["mlflow.parentRunId"] == sweep[0].info.run_id
        assert run.info.status == "FINISHED" and run.data.params["spec"] == row.spec
        assert run.data.tags["crnn_ray.checkpoint"] == row.checkpoint
        assert (experiment / row.checkpoint).is_dir()
        history = client.get_metric_history(run.info.run_id, "valid_ic")
        assert [h.step for h in history] == list(range(1, int(row.epochs_run) + 1))
        assert run.data.metrics["best_valid_ic"] == pytest.approx(row.valid_ic)
        assert (experiment / "tensorboard" / row.trial_id).is_dir()
    # one run per scoring of this folder (other tests score it again: the newest is what metrics.json holds)
    scoring = sorted([r for r in runs if role(r) == "score" and r.data.tags.get("crnn_ray.out") == str(scored.resolve())],
                     key=lambda r: r.info.start_time)[-1:]
    assert len(scoring) == 1
    metrics = json.loads((scored / "metrics.json").read_text())
    assert scoring[0].data.metrics["ensemble_ic"] == pytest.approx(metrics["ensemble"]["summary"]["ic"])
    assert {a.path for a in client.list_artifacts(scoring[0].info.run_id)} >= {"report.html", "metrics.json",
                                                                                "score.log"}
    sweep_log = (experiment / "sweep.log").read_text()
    assert sweep_log.startswith("experiment: ") and "\x1b" not in sweep_log
    assert f"[sweep] {len(trials)}/{len(trials)} models done" in sweep_log
    assert "[sweep] started " in sweep_log and "# Leaderboard" in sweep_log
    score_log = (scored / "score.log").read_text()
    assert score_log.startswith(f"experiment {experiment}") and "\x1b" not in score_log
    assert "wrote " in score_log
    # the member correlation matrix names its members: rows "[k] name", columns headed [k] and signal
    lines = score_log.splitlines()
    at = lines.index("member correlation (mean daily cross-sectional Pearson):")
    members = metrics["member_info"] if isinstance(metrics.get("member_info"), list) else metrics["members"]
    n = len(members)
    assert lines[at + 1].split() == [f"[{k}]" for k in range(1, n + 1)] + ["signal"]
    assert [line.split()[0] for line in lines[at + 2:at + 2 + n]] == [f"[{k}]" for k in range(1, n + 1)]
    assert lines[at + 2 + n].startswith("signal")
