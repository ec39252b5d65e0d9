"""SIGTERM (what `ray job stop` sends) stops a sweep gracefully: exit 130 and one line saying how to resume."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time

import pytest

from conftest import REPO, tiny_config, write_yaml

pytestmark = pytest.mark.ray


def test_sigterm_prints_how_to_resume(tmp_path):
    config = write_yaml(tmp_path / "stopme.yaml", tiny_config(name="stopme", training={"epochs": 3}))
    env = {k: v for k, v in os.environ.items() if k != "RAY_ADDRESS"}
    proc = subprocess.Popen([sys.executable, "-m", "crnn_ray.sweep", "--config", str(config), "--storage",
                             str(tmp_path / "runs")], cwd=REPO, env=env, stdout=subprocess.PIPE,
                            stderr=subprocess.PIPE, text=True, start_new_session=True)
    try:
        deadline = time.monotonic() + 240
        seen = []
        for line in proc.stdout:  # wait until Tune runs the trials
            seen.append(line)
            if "[sweep] started" in line or time.monotonic() > deadline:
                break
        assert any("[sweep] started" in ln for ln in seen), "".join(seen)[-2000:]
        proc.send_signal(signal.SIGTERM)
        out, err = proc.communicate(timeout=240)
    finally:
        if proc.poll() is None:
            os.killpg(proc.pid, signal.SIGKILL)
            proc.wait()
    print(err[-3000:])
    assert proc.returncode == 130, err[-3000:]
    last = err.strip().splitlines()[-1]
    assert last.startswith("sweep interrupted") and f"--storage {tmp_path / 'runs'} --name stopme --resume" in last
    assert "Traceback" not in err
    assert (tmp_path / "runs" / "stopme" / "tune").is_dir()  # Tune's state is there to resume from
