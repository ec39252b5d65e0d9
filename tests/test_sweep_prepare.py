"""Every check of a sweep runs before anything is written (no Ray needed for these): a failed run leaves the
experiment as it was, a stale synthetic panel is never reused, short parts and empty columns are named."""

from __future__ import annotations

import numpy as np
import pytest

from conftest import tiny_config, write_yaml
from crnn_ray.data import load_panel, save_panel, synthesize
from crnn_ray.io import CliError
from crnn_ray.sweep import run_sweep
from crnn_ray.sweep.config import load_config, synth_kwargs
from crnn_ray.sweep.experiment import prepare_experiment


def test_a_data_error_leaves_no_experiment_behind(tmp_path):
    config = write_yaml(tmp_path / "bad.yaml", tiny_config(name="bad", data={"lookback": 500}))
    with pytest.raises(CliError, match=r"^bad\.yaml: data: .*panel\.parquet has 260 day\(s\), fewer than "
                                       r"data\.lookback \(500\) \+ the label horizon \+ 1 = 506"):
        run_sweep(config, storage=tmp_path / "runs")
    assert not (tmp_path / "runs" / "bad").exists()  # no panel, no config.yaml, no folder
    assert list((tmp_path / "runs").iterdir()) == []  # and no staging folder
    config = write_yaml(tmp_path / "bad2.yaml", tiny_config(name="bad2", data={"lookback": 200}))
    with pytest.raises(CliError, match=r"^bad2\.yaml: data\.lookback: 200 leaves no train sample"):
        run_sweep(config, storage=tmp_path / "runs")


def test_a_stale_synthetic_panel_is_regenerated_and_refused_on_resume(tmp_path):
    doc = tiny_config(name="stale")
    cfg = load_config(write_yaml(tmp_path / "stale.yaml", doc))
    exp = tmp_path / "runs" / "stale"
    other = {**synth_kwargs(cfg.data.synth), "seed": 11}
    df, meta = synthesize(**other)
    save_panel(df, exp / "data" / "panel.parquet", meta)  # left by a failed run of another config
    prep = prepare_experiment(cfg, exp)
    assert prep.new_panel is not None and prep.new_panel.is_file()  # made afresh, not yet moved in
    assert load_panel(prep.new_panel).meta["params"]["seed"] == cfg.data.synth.get("seed", 0)
    assert load_panel(exp / "data" / "panel.parquet").meta["params"]["seed"] == 11  # untouched so far
    with pytest.raises(CliError, match=r"^stale\.yaml: data\.synth: .* other parameters .* --overwrite"):
        prepare_experiment(cfg, exp, resume=True)
    # the config's own panel is reused as it is
    df, meta = synthesize(**synth_kwargs(cfg.data.synth))
    save_panel(df, exp / "data" / "panel.parquet", meta)
    assert prepare_experiment(cfg, exp).new_panel is None


def test_short_parts_and_empty_feature_columns_are_named(tmp_path):
    short = tiny_config(name="short", data={"splits": {"fractions": [0.8, 0.1, 0.1]}})
    with pytest.raises(CliError, match=r"data\.splits: the valid part has \d+ days, fewer than "
                                       r"data\.min_part_days \(20\)"):
        run_sweep(write_yaml(tmp_path / "short.yaml", short), storage=tmp_path / "runs")

    df, meta = synthesize(n_symbols=30, n_days=300, seed=0)
    df["char_b"] = np.nan  # a feature column with nothing in it
    save_panel(df, tmp_path / "nan.parquet", meta)
    doc = tiny_config(name="nan", data={"path": str(tmp_path / "nan.parquet"), "synth": None, "label": "y5"})
    doc["data"].pop("synth")
    with pytest.raises(CliError, match=r"data\.features: column 'char_b' has no finite value in the train part"):
        run_sweep(write_yaml(tmp_path / "nan.yaml", doc), storage=tmp_path / "runs")
    assert not (tmp_path / "runs" / "nan").exists()


def test_usage_errors_are_one_line_and_exit_2(capsys):
    from crnn_ray.score.__main__ import main as score_main
    from crnn_ray.sweep.__main__ import main as sweep_main

    assert score_main(["--experiment", "x", "--out", "y", "--method", "bogus"]) == 2
    err = capsys.readouterr().err
    assert err.startswith("error: python -m crnn_ray.score: --method: expected one of mean, ic_weighted, rank_mean, "
                          "stack, got 'bogus'") and err.count("\n") == 1
    assert sweep_main(["--config", "x.yaml", "--resume", "--overwrite"]) == 2
    err = capsys.readouterr().err
    assert err.startswith("error: python -m crnn_ray.sweep: argument --overwrite: not allowed with argument --resume")
