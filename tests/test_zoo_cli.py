"""`python -m crnn_ray.zoo list | show | check`: output, exit codes, one-line errors."""

from __future__ import annotations

import json
import subprocess
import sys

import torch

from crnn_ray.zoo import build_model, count_params, load_zoo
from crnn_ray.zoo.__main__ import main


def run(capsys, *argv):
    threads = torch.get_num_threads()
    try:
        rc = main(list(argv))
    finally:
        torch.set_num_threads(threads)
    out, err = capsys.readouterr()
    return rc, out, err


def test_list_json_has_every_entry_with_params(capsys):
    rc, out, _ = run(capsys, "list", "--json")
    assert rc == 0
    rows = json.loads(out)
    zoo = load_zoo()
    assert [r["id"] for r in rows] == list(zoo)
    for r in rows:
        assert {"id", "family", "spec", "params", "seed_ic", "seed_pnl"} <= set(r)
        assert r["spec"] == zoo[r["id"]].spec and r["seed_ic"] == zoo[r["id"]].seed_ic
    m06 = next(r for r in rows if r["id"] == "convgru/m06")
    assert m06["params"] == count_params(build_model(m06["spec"], 8, 20))


def test_list_family_table(capsys):
    rc, out, _ = run(capsys, "list", "--family", "convlstm")
    lines = out.strip().splitlines()
    assert rc == 0 and len(lines) == 1 + 7 + 1
    assert lines[1].split()[0] == "convlstm/m1" and "convlstm(conv)x2[b1k3,b1k3]" in lines[1]
    assert lines[-1].startswith("7 models")


def test_show_prints_tree_and_params(capsys):
    rc, out, _ = run(capsys, "show", "cnn1d/m09b")
    params = count_params(build_model(load_zoo()["cnn1d/m09b"].spec, 8, 20))
    assert rc == 0 and "Conv1d(8, 32, kernel_size=(5,)" in out and "AdaptiveAvgPool1d" in out
    assert out.strip().endswith(f"params: {params}")
    rc, out, err = run(capsys, "show", "convgru/*")
    assert rc == 2 and "matches 25" in err


def test_check_runs_models_and_fails_on_bad_ones(capsys):
    rc, out, _ = run(capsys, "check", "convgru/m2?", "cnn1d(c3s1*2+avgpool)", "--lookback", "12")
    assert rc == 0
    assert out.count("\nok ") + out.startswith("ok ") == 7 and "7/7 models ok" in out
    rc, out, _ = run(capsys, "check", "convlstm/m7", "cnn1d(c5s1*3+c5s1){pad=valid}", "--lookback", "14")
    assert rc == 1
    assert "FAIL cnn1d(c5s1*3+c5s1){pad=valid}" in out and "below 1" in out and "1/2 models ok" in out


def test_cli_errors_are_one_line_with_status_2(capsys):
    for argv, words in [(["check", "convgru/m99"], "unknown zoo id 'convgru/m99'"),
                        (["check", "--batch", "1", "convgru/m01"], "--batch"),
                        (["show", "convgru(relu)x1[b1k3]"], "needs a conv (it makes the gates) at position 8")]:
        rc, out, err = run(capsys, *argv)
        assert rc == 2 and err.startswith("error: ") and words in err and err.count("\n") == 1


def test_module_entry_point_exit_codes():
    ok = subprocess.run([sys.executable, "-m", "crnn_ray.zoo", "check", "convgru/m01", "--lookback", "8"],
                        capture_output=True, text=True, timeout=120)
    assert ok.returncode == 0, ok.stderr
    assert "ok   convgru/m01" in ok.stdout
    bad = subprocess.run([sys.executable, "-m", "crnn_ray.zoo", "show", "nosuch"],
                         capture_output=True, text=True, timeout=120)
    assert bad.returncode == 2 and bad.stderr.strip() == \
        "error: unknown zoo id 'nosuch' (see `python -m crnn_ray.zoo list`)"
