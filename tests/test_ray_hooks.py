"""Every hook of crnn_ray/ray_compat.py still attaches to the installed Ray.

ray_compat degrades to "do nothing" when a Ray upgrade moves what a hook reaches into (a private module, an
attribute, an environment variable Ray stops reading, a message Ray rewords): a sweep still runs, and the
noise, the extra processes or the slower hand-over come back unnoticed. These tests fail instead, one per
hook, naming what moved. What the hooks do once attached is tested in tests/test_ray_quiet.py and the sweep
tests. No Ray is started here.
"""

from __future__ import annotations

import ast
import functools
import importlib
import inspect
import logging
import os
import re
import threading
import types
from pathlib import Path

import ray

from crnn_ray import ray_compat as rc

RAY = Path(ray.__file__).resolve().parent


def _source(module_or_path) -> str:
    path = Path(module_or_path if isinstance(module_or_path, (str, Path)) else module_or_path.__file__)
    return path.read_text()


def _string_constants(source: str) -> list[str]:
    """The string literals of a module (implicitly concatenated ones joined, as Python joins them) and the
    literal head of each f-string."""
    out = []
    for node in ast.walk(ast.parse(source)):
        if isinstance(node, ast.Constant) and isinstance(node.value, str):
            out.append(node.value)
        elif isinstance(node, ast.JoinedStr) and node.values and isinstance(node.values[0], ast.Constant):
            out.append(str(node.values[0].value))
    return out


def _code_objects(code: types.CodeType):
    yield code
    for const in code.co_consts:
        if isinstance(const, types.CodeType):
            yield from _code_objects(const)


def _functions_naming(module, name: str) -> set[str]:
    """Functions of `module` (decorators unwrapped, nested code included) that look `name` up by name."""
    found = set()
    for attr, value in vars(module).items():
        fn = inspect.unwrap(value) if callable(value) else value
        if inspect.isfunction(fn) and fn.__module__ == module.__name__:
            if any(name in code.co_names for code in _code_objects(fn.__code__)):
                found.add(attr)
    return found


def _raises(source: str, kind: type, pattern: str) -> bool:
    """Whether the module raises kind(message...) with a literal message (head) matching `pattern`."""
    for node in ast.walk(ast.parse(source)):
        call = node.exc if isinstance(node, ast.Raise) else None
        if (isinstance(call, ast.Call) and isinstance(call.func, ast.Name) and call.func.id == kind.__name__
                and call.args and any(re.search(pattern, s) for s in _string_constants(ast.unparse(call.args[0])))):
            return True
    return False


@functools.lru_cache(maxsize=None)
def _binary(relative: str) -> bytes:
    path = RAY / relative
    assert path.is_file(), f"{path}: Ray's binary moved (the driver-line patterns are checked against it)"
    return path.read_bytes()


# ---------------------------------------------------------------------------------- autoscaler_node_types
def test_autoscaler_node_types_reads_the_v2_cluster_config_record(monkeypatch):
    from ray._private.state import state
    from ray.core.generated import autoscaler_pb2

    assert callable(getattr(state, "get_cluster_config", None)), "ray._private.state.state.get_cluster_config is gone"
    assert not inspect.signature(state.get_cluster_config).parameters, "get_cluster_config now takes arguments"
    fields = autoscaler_pb2.NodeGroupConfig.DESCRIPTOR.fields_by_name
    assert {"resources", "max_count"} <= set(fields), f"NodeGroupConfig fields: {sorted(fields)}"
    assert "node_group_configs" in autoscaler_pb2.ClusterConfig.DESCRIPTOR.fields_by_name

    record = autoscaler_pb2.ClusterConfig(node_group_configs=[
        autoscaler_pb2.NodeGroupConfig(name="gpu", resources={"CPU": 8, "GPU": 1}, max_count=4),
        autoscaler_pb2.NodeGroupConfig(name="cpu", resources={"CPU": 16}, max_count=2)])
    monkeypatch.setattr(state, "get_cluster_config", lambda: record)
    assert rc.autoscaler_node_types() == [({"CPU": 8.0, "GPU": 1.0}, 4), ({"CPU": 16.0}, 2)]


# ---------------------------------------------------------------------------------- configure_train_driver
ENV_READ = r"(?:env_bool|env_float|env_integer|env_str|getenv|environ\.get)\(\s*{name}\b"


def _variables_set_by_configure_train_driver() -> dict[str, str]:
    names = [n for n in os.environ if n.startswith("RAY_TRAIN_")]
    saved = {n: os.environ.pop(n) for n in names}
    try:
        rc.configure_train_driver(60.0, private_ray=True)
        return {n: v for n, v in os.environ.items() if n.startswith("RAY_TRAIN_")}
    finally:
        for n in [n for n in os.environ if n.startswith("RAY_TRAIN_")]:
            del os.environ[n]
        os.environ.update(saved)


def test_configure_train_driver_sets_variables_ray_train_still_reads():
    from ray.train.v2._internal import constants as train_constants

    set_here = _variables_set_by_configure_train_driver()
    assert set(set_here) >= {"RAY_TRAIN_WORKER_GROUP_START_TIMEOUT_S", "RAY_TRAIN_ENABLE_PRINT_PATCH",
                             "RAY_TRAIN_ENABLE_PREEMPTION_WATCHER", "RAY_TRAIN_METRICS_ENABLED",
                             "RAY_TRAIN_HEALTH_CHECK_INTERVAL_S"}
    sources = {p: p.read_text() for p in (RAY / "train" / "v2").rglob("*.py") if "tests" not in p.parts}
    trainer_source = _source(RAY / "train" / "v2" / "api" / "data_parallel_trainer.py")
    for var in sorted(set_here):
        consts = [k for k, v in vars(train_constants).items() if v == var and k.isupper()]
        assert consts, f"{var}: no longer defined in ray.train.v2._internal.constants"
        read = [p for p, text in sources.items() for c in consts if re.search(ENV_READ.format(name=c), text)]
        assert read, f"{var} ({consts[0]}): nothing in ray/train/v2 reads it any more"
        # the trainer is built in the Tune trainable: the variable must either travel from there to the
        # TrainController and its workers, or be read where the trainer is built
        assert var in train_constants.ENV_VARS_TO_PROPAGATE or any(c in trainer_source for c in consts), (
            f"{var}: neither propagated to the Train controller nor read where the trainer is built")


# ---------------------------------------------------------------------------------- lean_torch_trainer
def test_lean_torch_trainer_drops_the_datasets_callback(tmp_path):
    from ray.train import RunConfig, ScalingConfig
    from ray.train.torch import TorchTrainer
    from ray.train.v2._internal.callbacks.datasets import DatasetsCallback

    lean = rc.lean_torch_trainer()
    assert lean is not TorchTrainer and issubclass(lean, TorchTrainer), (
        "TorchTrainer has no _create_default_callbacks: the DatasetManager actor is back in every Train run")
    assert DatasetsCallback.__name__ == "DatasetsCallback"  # the name lean_torch_trainer filters on

    def built(cls):  # constructing a trainer starts nothing; fit() would
        trainer = cls(lambda: None, scaling_config=ScalingConfig(num_workers=1),
                      run_config=RunConfig(name="hooks", storage_path=str(tmp_path)))
        return [type(c) for c in trainer._create_default_callbacks()]

    full, lean_callbacks = built(TorchTrainer), built(lean)
    assert DatasetsCallback in full, "Train no longer builds a DatasetsCallback: the hook is moot, drop it"
    assert lean_callbacks == [c for c in full if c is not DatasetsCallback]


# ---------------------------------------------------------------------------------- tune_silent
def test_tune_silent_sets_the_variable_tune_reads_for_its_console_output(monkeypatch):
    import ray.tune.tune as tune_module
    import ray.tune.tuner as tuner_module
    from ray.tune.experimental.output import get_air_verbosity

    assert tune_module.get_air_verbosity is get_air_verbosity and tuner_module.get_air_verbosity is get_air_verbosity
    monkeypatch.delenv("RAY_AIR_NEW_OUTPUT", raising=False)
    assert get_air_verbosity(0) is not None  # Ray's default: the new console output
    with rc.tune_silent():
        assert get_air_verbosity(0) is None  # the legacy reporter, silent at verbose=0
    assert "RAY_AIR_NEW_OUTPUT" not in os.environ


# ---------------------------------------------------------------------------------- quiet_train_report_log
def test_quiet_train_report_log_reaches_the_logger_train_reports_through(monkeypatch):
    from ray.train.v2._internal.execution import context as train_context

    logger = getattr(train_context, "logger", None)
    assert isinstance(logger, logging.Logger), "ray.train.v2._internal.execution.context has no module logger"
    assert logger.name == train_context.__file__, f"Train's report logger is now named {logger.name!r}"
    assert re.search(r"\blogger\.info\(", _source(train_context)), "Train no longer logs reports at INFO there"
    monkeypatch.setattr(logger, "level", logger.level)
    rc.quiet_train_report_log()
    assert logger.level == logging.WARNING


# ---------------------------------------------------------------------------------- quiet_ray_worker
def test_worker_hook_filters_records_and_threads_ray_still_emits():
    for name, pattern in rc.BENIGN_LOG_RECORDS:
        module = importlib.import_module(name)  # the logger is named after its module (getLogger(__name__))
        assert getattr(getattr(module, "logger", None), "name", None) == name, f"{name}: its logger was renamed"
        assert any(re.search(pattern, s) for s in _string_constants(_source(module))), (
            f"{name} no longer logs a message matching {pattern!r}")
    private = [p.read_text() for p in (RAY / "_private").glob("*.py")]
    train = [p.read_text() for p in (RAY / "train" / "v2").rglob("*.py") if "tests" not in p.parts]
    for thread, kind, pattern in rc.BENIGN_THREAD_ERRORS:
        assert any(thread in _string_constants(text) for text in train if thread in text), (
            f"no thread of Ray Train is named {thread!r} any more")
        assert any(_raises(text, kind, pattern) for text in private if kind.__name__ in text), (
            f"ray._private no longer raises {kind.__name__} with a message matching {pattern!r}")


# ---------------------------------------------------------------------------------- quiet_init_kwargs
def test_the_setup_hook_ray_init_is_given_is_one_ray_workers_load_and_run(monkeypatch):
    from ray._private import ray_constants
    from ray._private.runtime_env.constants import RAY_JOB_CONFIG_JSON_ENV_VAR
    from ray._private.runtime_env.setup_hook import export_setup_func_module, load_and_execute_setup_hook
    from ray.runtime_env import RuntimeEnv

    # _job_has_setup_hook reads the job's runtime_env from this variable, looking for Ray's hook variable
    assert RAY_JOB_CONFIG_JSON_ENV_VAR == "RAY_JOB_CONFIG_JSON_ENV_VAR"
    assert ray_constants.WORKER_PROCESS_SETUP_HOOK_ENV_VAR == "__RAY_WORKER_PROCESS_SETUP_HOOK_ENV_VAR"
    assert RuntimeEnv(worker_process_setup_hook=rc.WORKER_SETUP_HOOK)["worker_process_setup_hook"] == \
        rc.WORKER_SETUP_HOOK
    exported = export_setup_func_module({"worker_process_setup_hook": rc.WORKER_SETUP_HOOK}, rc.WORKER_SETUP_HOOK)
    assert exported["env_vars"][ray_constants.WORKER_PROCESS_SETUP_HOOK_ENV_VAR] == rc.WORKER_SETUP_HOOK
    worker_main = _source(RAY / "_private" / "workers" / "default_worker.py")
    assert "WORKER_PROCESS_SETUP_HOOK_ENV_VAR" in worker_main and "load_and_execute_setup_hook" in worker_main

    # what a worker does with it: Ray's loader imports our hook and runs it (here, in this process)
    monkeypatch.setattr(threading, "excepthook", threading.excepthook)
    for name, _ in rc.BENIGN_LOG_RECORDS:
        monkeypatch.setattr(logging.getLogger(name), "filters", [])
    assert load_and_execute_setup_hook(rc.WORKER_SETUP_HOOK) is None
    assert getattr(threading.excepthook, "_crnn_quiet", False)
    assert all(logging.getLogger(name).filters for name, _ in rc.BENIGN_LOG_RECORDS)


# ---------------------------------------------------------------------------------- install_driver_log_filter
def test_driver_filter_wraps_the_function_ray_prints_worker_output_through(monkeypatch):
    from ray._private import worker as ray_worker

    original = getattr(ray_worker, "print_to_stdstream", None)
    assert callable(original), "ray._private.worker.print_to_stdstream is gone"
    params = list(inspect.signature(inspect.unwrap(original)).parameters)
    assert params[:2] == ["data", "ignore_prefix"], f"print_to_stdstream{params}"
    # both paths look it up by its module-level name when they start, so a wrapper put there before
    # ray.init is what they call: worker output (connect) and the raylet's error messages
    assert _functions_naming(ray_worker, "print_to_stdstream") >= {"connect", "listen_error_messages"}
    monkeypatch.setattr(ray_worker, "print_to_stdstream", original)
    assert rc.install_driver_log_filter() and getattr(ray_worker.print_to_stdstream, "_crnn_quiet", False)


def test_driver_line_patterns_match_the_messages_in_rays_binaries():
    # the raylet's worker-pool warning: its printf format, filled in as the raylet fills it
    fmt = re.search(rb"WARNING: %d %s worker processes have been started on node: [^\x00]*", _binary(
        "core/src/ray/raylet/raylet"))
    assert fmt, "the raylet no longer has its worker-pool warning"
    values = iter([b"12", b"PYTHON", b"cc4eb90698", b"192.0.2.2", b"6", b"2"])
    line = re.sub(rb"%[ds]", lambda m: next(values), fmt.group(0)).decode()
    assert rc.benign_driver_line(line), line
    assert not rc.benign_driver_line(line.replace("which is 6x", "which is 45x"))
    # the core worker's PreemptionWatcher warning is streamed together from these pieces
    core = _binary("_raylet.so")
    for piece in (b"with class name: '", b"' and ID: '",
                  b"' has constructor arguments in the object store and max_restarts > 0."):
        assert piece in core, f"_raylet.so no longer has {piece!r}"
    watcher = [p.read_text() for p in (RAY / "train" / "v2").rglob("*.py") if "tests" not in p.parts]
    assert any(re.search(r"^class PreemptionWatcher\b", text, re.M) for text in watcher), (
        "Ray Train has no PreemptionWatcher actor any more")


# ---------------------------------------------------------------------------------- never_deduplicate_our_lines
def test_dedup_allow_pattern_goes_to_the_deduplicators_the_driver_prints_through():
    from ray._private import ray_logging
    from ray._private import worker as ray_worker

    body = next(n for n in ast.walk(ast.parse(_source(ray_worker)))
                if isinstance(n, ast.FunctionDef) and n.name == "print_to_stdstream")
    used = {n.id for n in ast.walk(body) if isinstance(n, ast.Name)}
    for name in ("stdout_deduplicator", "stderr_deduplicator"):
        dedup = getattr(ray_logging, name, None)
        assert dedup is not None, f"ray._private.ray_logging.{name} is gone"
        assert getattr(ray_worker, name, None) is dedup, f"the driver no longer prints through ray_logging.{name}"
        assert name in used, f"print_to_stdstream no longer uses {name}"
        assert hasattr(dedup, "allow_re")
    assert "allow_re" in ray_logging.LogDeduplicator.deduplicate.__code__.co_names, (
        "LogDeduplicator.deduplicate no longer reads allow_re")

