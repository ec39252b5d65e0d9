"""The sweep's --storage is a directory path: a URI is refused in one line (no Ray, nothing created)."""

from __future__ import annotations

from pathlib import Path

from conftest import tiny_config, write_yaml


def test_storage_uri_is_refused_in_one_line(tmp_path, capsys):
    """--storage s3://... would otherwise become a local folder named `s3:`; refused before anything is made."""
    from crnn_ray.sweep.__main__ import main as sweep_main

    config = write_yaml(tmp_path / "s.yaml", tiny_config(name="s"))
    capsys.readouterr()
    assert sweep_main(["--config", str(config), "--storage", "s3://bucket/runs"]) == 2
    err = capsys.readouterr().err
    assert err.startswith("error: --storage s3://bucket/runs: expected a directory path") and err.count("\n") == 1
    assert not list(tmp_path.glob("s3*")) and not Path("s3:").exists()
