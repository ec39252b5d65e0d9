"""Ray's known-benign messages are silenced by exact pattern, nothing else (crnn_ray/ray_compat.py;
docs/operations.md, "Log lines we silence and why"). No Ray is started here: the sweep tests run the real thing."""

from __future__ import annotations

import json
import logging
import subprocess
import sys
import threading
from types import SimpleNamespace

import pytest

from crnn_ray import ray_compat as rc

CLEANER = ("Failed to query Ray Train Controller actor state. State API may be temporarily unavailable. "
           "Continuing to monitor.")
WATCHER = ("[2026-12-02 01:01:46,938 E 16160 16281] core_worker.cc:2465: Actor with class name: 'PreemptionWatcher' "
           "and ID: 'b7eed4b2d3eacaf4cfc002cd01000000' has constructor arguments in the object store and "
           "max_restarts > 0. If the arguments in the object store go out of scope or are lost, the actor restart "
           "will fail. See https://github.com/ray-project/ray/issues/53727 for more details.")


def pool(n: int, multiple: int) -> str:
    return (f"WARNING: {n} PYTHON worker processes have been started on node: cc4eb90698 with address: 192.0.2.2, "
            f"which is {multiple}x the maximum expected startup concurrency (2). This could be a result of ...")


def test_driver_drops_exactly_the_benign_lines(monkeypatch):
    from ray._private import worker as ray_worker

    printed = []
    monkeypatch.setattr(ray_worker, "print_to_stdstream", lambda data, ignore_prefix=False: printed.append(data))
    assert rc.install_driver_log_filter() and rc.install_driver_log_filter()  # twice: one wrapper
    ours = "[cnn1d/m01] epoch 1/1 loss 0.09661 valid IC +0.0983"
    ray_worker.print_to_stdstream({"lines": [CLEANER, ours, WATCHER], "pid": 1, "is_err": True}, ignore_prefix=False)
    ray_worker.print_to_stdstream({"lines": [pool(8, 4)], "pid": "raylet", "is_err": False}, ignore_prefix=False)
    ray_worker.print_to_stdstream({"lines": [pool(90, 45)], "pid": "raylet", "is_err": False}, ignore_prefix=False)
    assert [d["lines"] for d in printed] == [[ours], [pool(90, 45)]]  # 45x: more than a sweep explains
    for line in ("Failed to clean up placement group: x", "PreemptionWatcher: preemption detected — node x",
                 "core_worker.cc:2465: Actor with class name: 'MyActor' and ID: 'ab' has constructor arguments "
                 "in the object store and max_restarts > 0."):
        assert not rc.benign_driver_line(line), line


def test_worker_hook_filters_the_cleaner_record_and_its_thread_error(monkeypatch):
    monkeypatch.setattr(threading, "excepthook", threading.excepthook)
    log = logging.getLogger(rc.BENIGN_LOG_RECORDS[0][0])
    monkeypatch.setattr(log, "filters", [])
    records = []
    handler = logging.Handler()
    handler.emit = records.append
    log.addHandler(handler)
    try:
        rc.quiet_ray_worker()
        rc.quiet_ray_worker()
        assert len(log.filters) == 1
        log.warning(CLEANER)
        log.warning("Failed to clean up placement group: boom")  # a real problem still shows
    finally:
        log.removeHandler(handler)
    assert [r.getMessage() for r in records] == ["Failed to clean up placement group: boom"]

    assert getattr(threading.excepthook, "_crnn_quiet", False)
    handed_on = []
    hook = rc._quiet_excepthook(handed_on.append)
    for name, exc in (("PlacementGroupCleanerMonitor", ConnectionError("Found multiple active Ray instances: {}")),
                      ("PlacementGroupCleanerMonitor", ConnectionError("refused")),
                      ("other", ConnectionError("Found multiple active Ray instances: {}"))):
        hook(SimpleNamespace(thread=SimpleNamespace(name=name), exc_value=exc, exc_type=type(exc)))
    assert [(a.thread.name, str(a.exc_value)) for a in handed_on] == [
        ("PlacementGroupCleanerMonitor", "refused"), ("other", "Found multiple active Ray instances: {}")]


def test_init_kwargs_add_the_hook_unless_the_job_has_one(monkeypatch):
    monkeypatch.setattr(rc, "install_driver_log_filter", lambda: True)
    monkeypatch.delenv("RAY_JOB_CONFIG_JSON_ENV_VAR", raising=False)
    kw = rc.quiet_init_kwargs(address="local", log_to_driver=True)
    assert kw == {"address": "local", "log_to_driver": True,
                  "runtime_env": {"worker_process_setup_hook": "crnn_ray.ray_compat.quiet_ray_worker"}}
    # ray job submit: ray.init merges this runtime_env into the job's (working_dir, pip, env_vars)
    job = {"runtime_env": {"working_dir": "gcs://x.zip", "env_vars": {"PYTHONUNBUFFERED": "1"}}}
    monkeypatch.setenv("RAY_JOB_CONFIG_JSON_ENV_VAR", json.dumps(job))
    assert rc.quiet_init_kwargs()["runtime_env"] == {"worker_process_setup_hook": rc.WORKER_SETUP_HOOK}
    from ray.runtime_env.runtime_env import _merge_runtime_env

    merged = _merge_runtime_env(job["runtime_env"], rc.quiet_init_kwargs()["runtime_env"])
    assert merged["working_dir"] == "gcs://x.zip" and merged["worker_process_setup_hook"] == rc.WORKER_SETUP_HOOK
    # a job that already names a hook (key or Ray's env var) keeps it: Ray refuses two
    for env in ({"worker_process_setup_hook": "other.hook"},
                {"env_vars": {"__RAY_WORKER_PROCESS_SETUP_HOOK_ENV_VAR": "other.hook"}}):
        monkeypatch.setenv("RAY_JOB_CONFIG_JSON_ENV_VAR", json.dumps({"runtime_env": env}))
        assert "runtime_env" not in rc.quiet_init_kwargs()


def test_the_hook_module_imports_without_torch():
    """Every Ray worker, Ray's own helper actors included, imports the hook's module: it must stay light."""
    code = ("import sys, importlib; m = importlib.import_module('crnn_ray.ray_compat'); "
            "m.quiet_ray_worker(); print('torch' in sys.modules, 'pandas' in sys.modules)")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120)
    assert out.returncode == 0, out.stderr
    assert out.stdout.split() == ["False", "False"]
    from crnn_ray.sweep import load_config, run_sweep  # the lazy re-exports still work

    assert callable(run_sweep) and callable(load_config)
    with pytest.raises(AttributeError):
        import crnn_ray.sweep as sweep

        sweep.no_such_name  # noqa: B018


def test_our_epoch_lines_are_never_folded_by_rays_deduplication():
    from ray._private import ray_logging

    from crnn_ray.ray_compat import never_deduplicate_our_lines

    assert never_deduplicate_our_lines() and never_deduplicate_our_lines()  # idempotent
    dedup = ray_logging.LogDeduplicator(5, ray_logging.stdout_deduplicator.allow_re.pattern, None,
                                        _timesource=lambda: 0.0)
    ours = "[convgru/m01] epoch 2/3 loss 0.08381 valid IC +0.1435"
    theirs = "Some Ray message from pid 12"
    printed = []
    for pid in (1, 2, 3):
        for batch in dedup.deduplicate({"ip": "x", "pid": pid, "lines": [ours.replace("0.08381", f"0.0{pid}"),
                                                                          theirs]}):
            printed += batch["lines"]
    assert sum(line.startswith("[convgru/m01] epoch 2/3") for line in printed) == 3  # one per worker
    assert sum(line == theirs for line in printed) == 1  # Ray's own lines are still folded
