"""Atomic output and one-line errors: the guarantees every command leans on."""

import json

import numpy as np
import pandas as pd
import pyarrow.parquet as pq
import pytest

import errno
import os

from crnn_ray.io import CliError, atomic_path, cli_main, updated_dir, write_json_atomic, write_parquet_atomic


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



def test_cli_main_turns_a_file_os_error_into_one_line(capsys):
    """A full disk or an unwritable --out at write time: `error: <path>: <reason>`, exit 2, no traceback."""
    def full(argv):
        raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC), "/mnt/out/metrics.json")

    assert cli_main(full)([]) == 2
    assert capsys.readouterr().err == "error: /mnt/out/metrics.json: No space left on device\n"

    def socket(argv):  # not a file's failure: not summarised
        raise OSError(errno.ECONNREFUSED, "refused")

    with pytest.raises(OSError):
        cli_main(socket)([])


def test_updated_dir_keeps_old_files_swaps_whole_and_restores_a_stranded_folder(tmp_path):
    out = tmp_path / "out"
    (out / "signals" / "date=2024-01-02").mkdir(parents=True)
    (out / "signals" / "date=2024-01-02" / "part-0.parquet").write_bytes(b"old day")
    (out / "metrics.json").write_text("old")
    with updated_dir(out) as stage:  # a new date and new metrics; the old date kept (hard links)
        (stage / "signals" / "date=2024-01-03").mkdir()
        (stage / "signals" / "date=2024-01-03" / "part-0.parquet").write_bytes(b"new day")
        write_json_atomic(stage / "metrics.json", {"new": 1})
        assert (out / "metrics.json").read_text() == "old"  # nothing visible before the swap
    assert (out / "signals" / "date=2024-01-02" / "part-0.parquet").read_bytes() == b"old day"
    assert (out / "signals" / "date=2024-01-03" / "part-0.parquet").read_bytes() == b"new day"
    assert json.loads((out / "metrics.json").read_text()) == {"new": 1}
    before = {p: p.read_bytes() for p in out.rglob("*") if p.is_file()}
    with pytest.raises(RuntimeError):  # a failure half-way: the folder as it was, no staging left behind
        with updated_dir(out) as stage:
            write_json_atomic(stage / "metrics.json", {"half": 1})
            raise RuntimeError("killed")
    assert {p: p.read_bytes() for p in out.rglob("*") if p.is_file()} == before
    assert sorted(p.name for p in tmp_path.iterdir()) == ["out"]
    # a kill between atomic_path's two renames leaves only `.out.old-*`: the next run puts it back first
    os.replace(out, tmp_path / ".out.old-deadbeef")
    with updated_dir(out) as stage:
        assert (stage / "metrics.json").exists()
    assert json.loads((out / "metrics.json").read_text()) == {"new": 1}
    assert sorted(p.name for p in tmp_path.iterdir()) == ["out"]
