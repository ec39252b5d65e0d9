"""Provenance (crnn_ray/provenance.py) and where it is written, without Ray: the git state of a checkout (and None
outside one, or without git), the versions, the command line a cli_main records, metrics.json's stamp
(schema_version, panel_relative, provenance last) and config.yaml's `resolved.provenance` (kept across
--resume, its end time stamped by finish_experiment)."""

from __future__ import annotations

import json
import re
import subprocess
import sys
from pathlib import Path

import yaml

from conftest import tiny_config, write_yaml
from crnn_ray import provenance as prov
from crnn_ray.io import cli_main, command_line, to_json
from crnn_ray.score.job import METRICS_SCHEMA_VERSION, stamp_metrics
from crnn_ray.sweep.config import load_config
from crnn_ray.sweep.experiment import finish_experiment, prepare_experiment, write_experiment

ISO = re.compile(r"^\d{4}-\d\d-\d\dT\d\d:\d\d:\d\dZ$")


def _git(repo: Path, *args: str) -> str:
    return subprocess.run(["git", "-c", "user.name=t", "-c", "user.email=t@example.com", *args], cwd=repo,
                          check=True, capture_output=True, text=True).stdout


def _checkout(tmp_path: Path) -> Path:
    """A git checkout with a tracked package `pkg/` and one commit; returns the package directory."""
    repo = tmp_path / "repo"
    (repo / "pkg").mkdir(parents=True)
    (repo / "pkg" / "__init__.py").write_text("x = 1\n")
    _git(repo, "init", "-q")
    _git(repo, "add", ".")
    _git(repo, "commit", "-q", "-m", "one")
    return repo / "pkg"


def test_git_state_of_a_checkout_clean_and_dirty(tmp_path):
    pkg = _checkout(tmp_path)
    head = _git(pkg.parent, "rev-parse", "HEAD").strip()
    assert prov.git_state(pkg) == {"commit": head, "dirty": False}
    (pkg.parent / "notes.txt").write_text("an untracked file outside the package does not count\n")
    assert prov.git_state(pkg) == {"commit": head, "dirty": False}
    (pkg / "new_module.py").write_text("y = 2\n")  # code the commit cannot reproduce
    assert prov.git_state(pkg)["dirty"] is True
    (pkg / "new_module.py").unlink()
    (pkg / "__init__.py").write_text("x = 2\n")
    assert prov.git_state(pkg) == {"commit": head, "dirty": True}


def test_git_state_is_none_outside_a_checkout_or_without_git(tmp_path, monkeypatch):
    plain = tmp_path / "plain"
    plain.mkdir()
    (plain / "__init__.py").write_text("")
    assert prov.git_state(plain) == {"commit": None, "dirty": None}
    # a package that is not tracked by the checkout around it (a venv inside someone else's repository)
    pkg = _checkout(tmp_path)
    venv_pkg = pkg.parent / "venv" / "site" / "crnn_ray"
    venv_pkg.mkdir(parents=True)
    (venv_pkg / "__init__.py").write_text("")
    assert prov.git_state(venv_pkg) == {"commit": None, "dirty": None}
    assert prov.git_state(tmp_path / "missing") == {"commit": None, "dirty": None}
    monkeypatch.setenv("PATH", str(tmp_path / "no-bin"))  # no git at all
    assert prov.git_state(pkg) == {"commit": None, "dirty": None}


def test_git_timeout_gives_none(tmp_path, monkeypatch):
    pkg = _checkout(tmp_path)

    def slow(*args, **kwargs):
        assert kwargs["timeout"] == prov.GIT_TIMEOUT_S
        raise subprocess.TimeoutExpired(args[0], kwargs["timeout"])

    monkeypatch.setattr(prov.subprocess, "run", slow)
    assert prov.git_state(pkg) == {"commit": None, "dirty": None}


def test_the_block_names_versions_host_resources_and_times():
    started = prov.utc_now()
    block = prov.provenance(started, ended=prov.utc_now(), argv=["python", "-m", "x"])
    assert ISO.match(block["started"]) and ISO.match(block["ended"]) and block["started"] <= block["ended"]
    assert block["argv"] == ["python", "-m", "x"] and block["hostname"]
    assert set(block["versions"]) == {"crnn_ray", "python", "torch", "ray", "numpy", "pandas"}
    assert block["versions"]["python"] == ".".join(map(str, sys.version_info[:3]))
    assert set(block["git"]) == {"commit", "dirty"}
    if "ray" not in sys.modules or not sys.modules["ray"].is_initialized():  # Ray is never started for this
        assert block["resources"]["source"] == "local" and block["resources"]["CPU"] >= 1
    json.loads(to_json(block))  # plain JSON


def test_resources_come_from_ray_only_when_it_already_runs(monkeypatch):
    class FakeRay:
        up = True

        def is_initialized(self):
            return self.up

        def cluster_resources(self):
            return {"CPU": 16, "GPU": 2, "memory": 1e9, "node:10.0.0.1": 1.0, "node:10.0.0.2": 1.0,
                    "node:__internal_head__": 1.0, "accelerator_type:A10G": 2.0}

    fake = FakeRay()
    monkeypatch.setitem(sys.modules, "ray", fake)
    assert prov.cluster_resources() == {"source": "ray", "CPU": 16.0, "GPU": 2.0, "accelerator_type:A10G": 2.0,
                                        "memory": 1e9, "nodes": 2}
    fake.up = False  # imported but not started: never started for this
    assert prov.cluster_resources()["source"] == "local"

    def broken():
        raise ConnectionError("gone")

    fake.up, fake.cluster_resources = True, broken
    assert prov.cluster_resources() == {"source": "local", "CPU": prov.os.cpu_count()}


def test_cli_main_records_the_command_line():
    seen = []

    def main(argv):
        seen.append(command_line())
        return 0

    main.__module__ = "crnn_ray.score.__main__"
    assert cli_main(main)(["--out", "x"]) == 0
    assert seen == [[sys.executable, "-m", "crnn_ray.score", "--out", "x"]]
    assert command_line() == sys.argv  # outside a command: the process's own argv


def test_relative_to(tmp_path):
    assert prov.relative_to(tmp_path / "exp" / "data" / "panel.parquet", tmp_path / "exp") == "data/panel.parquet"
    assert prov.relative_to(tmp_path / "elsewhere.parquet", tmp_path / "exp") is None


def test_metrics_stamp_keeps_the_figures_and_adds_provenance_last(tmp_path):
    exp = tmp_path / "exp"
    doc = {"experiment": str(exp), "panel": str(exp / "data" / "panel.parquet"), "label": "y5", "ensemble": {}}
    out = stamp_metrics(doc, exp, prov.utc_now())
    assert list(out) == ["schema_version", "experiment", "panel", "panel_relative", "label", "ensemble",
                         "provenance"]
    assert out["schema_version"] == METRICS_SCHEMA_VERSION == 1
    assert out["panel"] == doc["panel"] and out["panel_relative"] == "data/panel.parquet"
    assert out["provenance"]["ended"] is not None
    # a panel outside the experiment (--data): no relative path
    assert stamp_metrics({**doc, "panel": str(tmp_path / "today.parquet")}, exp, "t")["panel_relative"] is None
    # the block is the last key of the file: a rerun's bytes differ only from there on
    text = to_json(out)
    assert text.index('"provenance"') > text.index('"ensemble"')


def test_config_yaml_records_provenance_keeps_it_on_resume_and_stamps_the_end(tmp_path):
    cfg = load_config(write_yaml(tmp_path / "p.yaml", tiny_config(name="p")))
    exp = tmp_path / "runs" / "p"
    prep = prepare_experiment(cfg, exp)
    write_experiment(prep, exp, replace=False)
    block = yaml.safe_load((exp / "config.yaml").read_text())["resolved"]["provenance"]
    assert ISO.match(block["started"]) and block["ended"] is None and "earlier" not in block
    assert block["versions"]["crnn_ray"] and block["resources"]["CPU"]
    finish_experiment(exp)
    first = yaml.safe_load((exp / "config.yaml").read_text())["resolved"]["provenance"]
    assert ISO.match(first["ended"]) and first["ended"] >= first["started"]

    again = prepare_experiment(load_config(write_yaml(tmp_path / "p.yaml", tiny_config(name="p"))), exp, resume=True)
    write_experiment(again, exp, replace=False)
    doc = yaml.safe_load((exp / "config.yaml").read_text())
    assert doc["resolved"]["provenance"]["ended"] is None
    assert doc["resolved"]["provenance"]["earlier"] == [first]
    # the saved config still reads back as a config (--resume drops `resolved`)
    from crnn_ray.sweep.experiment import _saved_config

    assert _saved_config(exp / "config.yaml", exp).name == "p"


def test_finish_experiment_never_fails(tmp_path):
    finish_experiment(tmp_path / "nothing")  # no config.yaml
    (tmp_path / "config.yaml").write_text(": not yaml [")
    finish_experiment(tmp_path)
    assert (tmp_path / "config.yaml").read_text() == ": not yaml ["

