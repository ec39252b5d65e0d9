"""Test-only fault injection, loaded by every Python process of a test's local Ray (through PYTHONPATH).

With CRNN_RAY_TEST_KILL_AFTER_EPOCH=N set, it wraps `ray.train.report` as soon as `ray.train` is imported:
right after a Train worker reported epoch N of a still-running trial (with its checkpoint), the worker
SIGKILLs itself, once per trial (a marker file in CRNN_RAY_TEST_KILL_MARKER_DIR remembers it); with
CRNN_RAY_TEST_KILL_TRIAL=t001 only after that trial's (model's) epoch. The production code knows nothing of
this; tests/test_sweep_e2e.py starts its Ray with it.
"""

import importlib.abc
import importlib.util
import os
import signal
import sys
import time
from pathlib import Path

KILL_AFTER_EPOCH = int(os.environ.get("CRNN_RAY_TEST_KILL_AFTER_EPOCH", "0") or 0)
KILL_TRIAL = os.environ.get("CRNN_RAY_TEST_KILL_TRIAL", "")


def _patch(module) -> None:
    report = module.report

    def report_then_die(metrics, *args, **kwargs):
        out = report(metrics, *args, **kwargs)
        if (metrics.get("epoch") == KILL_AFTER_EPOCH and metrics.get("status") == "running"
                and KILL_TRIAL in ("", metrics.get("trial_key"))):
            marker = Path(os.environ["CRNN_RAY_TEST_KILL_MARKER_DIR"]) / f"killed-{metrics.get('trial_key')}"
            if not marker.exists():
                marker.parent.mkdir(parents=True, exist_ok=True)
                marker.write_text(str(os.getpid()))
                time.sleep(5.0)  # let the controller register this checkpoint before the worker dies
                os.kill(os.getpid(), signal.SIGKILL)
        return out

    module.report = report_then_die


class _PatchRayTrain(importlib.abc.MetaPathFinder):
    """Finds nothing itself: it only hooks the loader of `ray.train` so the module is patched once loaded."""

    def find_spec(self, name, path=None, target=None):
        if name != "ray.train":
            return None
        sys.meta_path.remove(self)
        spec = importlib.util.find_spec(name)
        if spec is not None and spec.loader is not None:
            exec_module = spec.loader.exec_module

            def exec_and_patch(module):
                exec_module(module)
                _patch(module)

            spec.loader.exec_module = exec_and_patch
        return spec


if KILL_AFTER_EPOCH:
    sys.meta_path.insert(0, _PatchRayTrain())
