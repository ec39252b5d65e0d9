"""Bounded inputs and storage anywhere: what the sweep refuses in one line before Ray starts (a grid too large,
a panel without a cross-section, a name outside --storage, a damaged newest Tune state), what it accepts (a
damaged older Tune state), and a synthetic sweep whose --storage is another filesystem than $TMPDIR (a tmpfs
mounted for the test: the panel used to be renamed across filesystems and the sweep died with EXDEV)."""

from __future__ import annotations

import json
import subprocess
from pathlib import Path

import pandas as pd
import pytest

from conftest import tiny_config, write_yaml
from crnn_ray.data import save_panel
from crnn_ray.data.synth import synthesize
from crnn_ray.sweep.__main__ import main as sweep_main
from crnn_ray.sweep.run import _tune_state_usable


def one_line_error(capsys, argv: list[str]) -> str:
    capsys.readouterr()
    rc = sweep_main([str(a) for a in argv])
    err = capsys.readouterr().err
    assert rc == 2 and err.count("\n") == 1 and err.startswith("error: "), err
    return err


def test_a_grid_above_max_trials_is_refused_at_check_with_its_size(tmp_path, capsys):
    config = write_yaml(tmp_path / "big.yaml", tiny_config(name="big", seeds=[0, 1, 2],
                                                          resources={"cpus_per_trial": 1, "max_trials": 5}))
    err = one_line_error(capsys, ["--config", config, "--check"])
    assert ("resources.max_trials: the grid has 6 trials (2 variant(s) x 1 hyperparameter combination(s) x 3 "
            "seed(s)), more than 5") in err
    ok = write_yaml(tmp_path / "ok.yaml", tiny_config(name="ok", seeds=[0, 1, 2]))
    capsys.readouterr()
    assert sweep_main(["--check", "--config", str(ok)]) == 0
    assert "ok, 6 trial(s)" in capsys.readouterr().out


def _panel(path: Path, symbols: int, days: int) -> Path:
    """A synthetic panel cut to its first `symbols` symbols and last `days` dates."""
    df, meta = synthesize(n_symbols=20, n_days=260, seed=3)
    keep = sorted(df["symbol"].unique())[:symbols]
    dates = sorted(df["date"].unique())[-days:]
    save_panel(df[df["symbol"].isin(keep) & df["date"].isin(dates)].reset_index(drop=True), path, meta)
    return path


@pytest.mark.parametrize("symbols, days, needle", [
    (1, 260, "has 1 symbol(s); a cross-sectional IC needs at least 2"),
    (40, 14, "has 14 day(s), fewer than data.lookback (10) + the label horizon + 1 = 16"),
])
def test_a_panel_without_a_cross_section_or_history_is_refused_before_ray(tmp_path, capsys, symbols, days, needle):
    panel = _panel(tmp_path / "panel.parquet", symbols, days)
    cfg = tiny_config(name="small")
    cfg["data"] = {"path": str(panel), "lookback": 10, "label": "y5", "splits": {"fractions": [0.6, 0.2, 0.2]}}
    config = write_yaml(tmp_path / "small.yaml", cfg)
    err = one_line_error(capsys, ["--config", config, "--storage", tmp_path / "runs"])
    assert needle in err
    assert not (tmp_path / "runs" / "small").exists()


def test_resume_names_stay_inside_storage(tmp_path, capsys):
    (tmp_path / "x").mkdir()
    (tmp_path / "x" / "config.yaml").write_text("name: x\n")
    err = one_line_error(capsys, ["--resume", "--name", "../x", "--storage", tmp_path / "runs"])
    assert "--name: name: use letters, digits" in err


def test_only_the_newest_tune_state_must_be_whole_and_a_damaged_one_is_set_aside(tmp_path, capsys):
    """Tune restores from the newest experiment_state-*.json: a damaged older one (say, a full disk) changes
    nothing; a damaged newest one (or tuner.pkl) is set aside with one line, and the generation restarts as a
    new Tune run that continues every pack from its checkpoints (tests/test_sweep_e2e.py resumes one)."""
    import pickle

    tune = tmp_path / "tune"
    tune.mkdir()
    (tune / "tuner.pkl").write_bytes(pickle.dumps({"ok": 1}))
    (tune / "experiment_state-2026-01-01_00-00-00.json").write_text('{"trial_da')
    (tune / "experiment_state-2026-01-02_00-00-00.json").write_text(json.dumps({"trial_data": []}))
    assert _tune_state_usable(tune)
    (tune / "experiment_state-2026-01-03_00-00-00.json").write_text("{")
    capsys.readouterr()
    assert not _tune_state_usable(tune)
    out = capsys.readouterr().out
    assert out.count("\n") == 1 and "Tune's saved state is damaged (JSONDecodeError" in out and "set aside" in out
    assert not list(tune.glob("experiment_state-*.json"))
    assert len(list(tune.glob("experiment_state-*.json.set-aside"))) == 3


@pytest.fixture
def tmpfs(tmp_path):
    """A tmpfs mounted for the test (a second filesystem beside $TMPDIR's), unmounted after it."""
    mnt = tmp_path / "mnt"
    mnt.mkdir()
    subprocess.run(["mount", "-t", "tmpfs", "-o", "size=256m", "tmpfs", str(mnt)], check=True)
    try:
        yield mnt
    finally:
        subprocess.run(["umount", "-l", str(mnt)], check=False)


@pytest.mark.ray
def test_a_synthetic_sweep_on_another_filesystem(ray_local, tmp_path, tmpfs, capsys):
    assert tmpfs.stat().st_dev != Path(tmp_path).stat().st_dev  # really another filesystem
    config = write_yaml(tmp_path / "tiny.yaml", tiny_config(name="tiny", variants=["cnn1d/m01"]))
    capsys.readouterr()
    assert sweep_main(["--config", str(config), "--storage", str(tmpfs / "runs")]) == 0
    exp = tmpfs / "runs" / "tiny"
    assert (exp / "data" / "panel.parquet").is_file() and (exp / "trials.parquet").is_file()
    assert pd.read_parquet(exp / "trials.parquet")["status"].tolist() == ["ok"]
    assert sorted(p.name for p in (tmpfs / "runs").iterdir()) == ["tiny"]  # no staging folder left behind
