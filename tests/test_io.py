"""Atomic output and one-line errors: the guarantees every command leans on."""

import json

import numpy as np
import pandas as pd
import pyarrow.parquet as pq
import pytest

from crnn_ray.io import CliError, atomic_path, cli_main, write_json_atomic, write_parquet_atomic


def test_atomic_file_left_untouched_on_failure(tmp_path):
    target = tmp_path / "out.json"
    write_json_atomic(target, {"a": 1})
    with pytest.raises(RuntimeError):
        with atomic_path(target) as tmp:
            tmp.write_text("half")
            raise RuntimeError("boom")
    assert json.loads(target.read_text()) == {"a": 1}
    assert sorted(p.name for p in tmp_path.iterdir()) == ["out.json"]


def test_atomic_directory_replaced_whole(tmp_path):
    target = tmp_path / "signals"
    with atomic_path(target) as tmp:
        tmp.mkdir()
        (tmp / "a.txt").write_text("1")
    with atomic_path(target) as tmp:
        tmp.mkdir()
        (tmp / "b.txt").write_text("2")
    assert sorted(p.name for p in target.iterdir()) == ["b.txt"]
    assert sorted(p.name for p in tmp_path.iterdir()) == ["signals"]


def test_json_is_strict_and_numpy_aware(tmp_path):
    target = tmp_path / "m.json"
    write_json_atomic(target, {"x": np.float32(0.5), "n": np.int64(3), "bad": float("nan"), "v": np.arange(2)})
    assert json.loads(target.read_text()) == {"x": 0.5, "n": 3, "bad": None, "v": [0, 1]}


def test_parquet_metadata_round_trip(tmp_path):
    target = tmp_path / "t.parquet"
    write_parquet_atomic(pd.DataFrame({"a": [1, 2]}), target, metadata={"crnn_ray": {"k": [1, 2]}})
    meta = pq.read_schema(target).metadata
    assert json.loads(meta[b"crnn_ray"]) == {"k": [1, 2]}


def test_cli_main_turns_errors_into_one_line_and_exit_2(capsys):
    def main(argv):
        raise CliError("panel.parquet: column 'close'\n is missing")

    assert cli_main(main)([]) == 2
    err = capsys.readouterr().err
    assert err == "error: panel.parquet: column 'close' is missing\n"
