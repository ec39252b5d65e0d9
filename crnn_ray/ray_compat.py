"""Every use of Ray internals (private modules, undocumented environment variables) in one place.

Ray 2.60's Train V2 has no public knob for these; when Ray changes, this file is the one to read. Each helper
degrades to "do nothing" rather than failing a sweep.
"""

from __future__ import annotations

import contextlib
import logging
import os
import re
import threading


def autoscaler_node_types() -> list[tuple[dict, int]]:
    """[(resources, max_count)] of the autoscaler v2 cluster-config record (KubeRay, local fake clusters);
    [] where there is none (a plain local cluster, a v1 cluster-launcher head)."""
    try:
        from ray._private.state import state

        config = state.get_cluster_config()
    except Exception:  # no autoscaler, or a Ray without the record
        return []
    if config is None:
        return []
    return [({k: float(v) for k, v in group.resources.items()}, int(group.max_count))
            for group in config.node_group_configs]


def configure_train_driver(start_timeout_s: float, private_ray: bool = False) -> None:
    """Environment the Train V2 controller reads (propagated from the process that builds the trainer).

    RAY_TRAIN_WORKER_GROUP_START_TIMEOUT_S bounds how long a worker group may wait for its placement group
    (start-up failures are then retried). RAY_TRAIN_ENABLE_PRINT_PATCH=0: train_one prints one line per epoch,
    and Train's print patch would log each line a second time.

    private_ray: the sweep started this Ray itself (one machine, no autoscaler, no dashboard). Then two
    per-run costs buy nothing and are turned off: the PreemptionWatcher actor (one process per Train run,
    ~190 MB, polling for node drains that only a cloud autoscaler sends) and Train's metrics callbacks
    (Prometheus gauges nobody scrapes without a dashboard); and the controller polls its worker every 0.5 s
    instead of 2 s, so a finished run hands its slot to the next one sooner (a poll is one local RPC). On a
    cluster Ray's defaults stand.
    """
    os.environ["RAY_TRAIN_WORKER_GROUP_START_TIMEOUT_S"] = str(start_timeout_s)
    os.environ.setdefault("RAY_TRAIN_ENABLE_PRINT_PATCH", "0")
    if private_ray:
        os.environ.setdefault("RAY_TRAIN_ENABLE_PREEMPTION_WATCHER", "0")
        os.environ.setdefault("RAY_TRAIN_METRICS_ENABLED", "0")
        os.environ.setdefault("RAY_TRAIN_HEALTH_CHECK_INTERVAL_S", "0.5")


def lean_torch_trainer():
    """TorchTrainer, less the DatasetsCallback when the run has no Ray Data datasets (ours never do: the panel
    travels through the object store). Train V2 builds that callback for every run, and it starts a
    DatasetManager actor whatever the datasets: one more process per Train run (~200 MB RSS, a Python start-up
    competing with the worker's on a small node) that nothing ever calls. With datasets, or on a Ray whose
    trainer lacks the hook this relies on, it is TorchTrainer unchanged."""
    from ray.train.torch import TorchTrainer

    if not hasattr(TorchTrainer, "_create_default_callbacks"):
        return TorchTrainer

    class LeanTorchTrainer(TorchTrainer):
        def _create_default_callbacks(self):
            callbacks = super()._create_default_callbacks()
            if getattr(self, "datasets", None):
                return callbacks
            return [c for c in callbacks if type(c).__name__ != "DatasetsCallback"]

    return LeanTorchTrainer


@contextlib.contextmanager
def tune_silent():
    """Tune's new console output prints its experiment box, the results path and a TensorBoard hint even at
    verbose=0; the legacy reporter (RAY_AIR_NEW_OUTPUT=0, read when fit() starts) prints nothing at verbose=0.
    The sweep prints its own lines (TrialProgress, the leaderboard, the experiment path). A value the user
    set is kept."""
    before = os.environ.get("RAY_AIR_NEW_OUTPUT")
    os.environ.setdefault("RAY_AIR_NEW_OUTPUT", "0")
    try:
        yield
    finally:
        if before is None:
            os.environ.pop("RAY_AIR_NEW_OUTPUT", None)


def quiet_train_report_log() -> None:
    """Train V2 logs every report (all metrics) at INFO under a logger named after its file, which
    LoggingConfig does not reach; train_one already prints one line per epoch."""
    try:
        from ray.train.v2._internal.execution import context as train_context
    except ImportError:  # a Ray without that module: nothing to quiet
        return
    logging.getLogger(train_context.__file__).setLevel(logging.WARNING)


# ---- known-benign Ray messages (docs/operations.md, "Log lines we silence and why") ------------------------
#
# Each entry is one exact message of Ray 2.60 that a sweep prints by construction and that asks nothing of the
# user. Python log records are stopped in the process that emits them (worker_process_setup_hook); lines that
# Ray's C++ core or the raylet write are dropped where the driver prints them. Everything else passes.

#: (emitting Python logger, message regex): filtered in every worker / actor process of the job
BENIGN_LOG_RECORDS: tuple[tuple[str, str], ...] = (
    # Train V2's detached PlacementGroupCleaner polls the state API every second; without a dashboard (the
    # sweep's local Ray) every poll fails and logs this, ~half of a local sweep's lines
    ("ray.train.v2._internal.execution.controller.placement_group_cleaner",
     r"^Failed to query Ray Train Controller actor state\. State API may be temporarily unavailable\. "
     r"Continuing to monitor\.$"),
)

#: (thread name, exception type, message regex): an uncaught exception of that thread whose traceback
#: threading.excepthook would print, in every worker / actor process of the job
BENIGN_THREAD_ERRORS: tuple[tuple[str, type, str], ...] = (
    # the same cleaner on a machine that runs several Ray instances (parallel tests, a second sweep): the state
    # API client guesses the cluster from the machine instead of its own session, raises, and the monitor
    # thread dies with a ~30-line traceback. It could not have queried anything without a dashboard either.
    ("PlacementGroupCleanerMonitor", ConnectionError, r"^Found multiple active Ray instances: "),
)

#: a raylet "N PYTHON worker processes ... Kx the maximum expected startup concurrency" warning is dropped
#: up to this K: a running trial holds ~5 Ray processes by design (Tune trainable, Train controller, Train
#: worker, PlacementGroupCleaner, PreemptionWatcher), so a node running one trial per CPU reaches ~6x; a
#: larger multiple still prints (more processes than the sweep explains: a leak, or actors of one's own)
BENIGN_WORKER_POOL_MULTIPLE = 8

#: regexes of lines streamed to the driver (worker stderr, raylet errors) that it does not print
BENIGN_DRIVER_LINES: tuple[str, ...] = (
    # the same cleaner message, when it reaches the driver from a process the setup hook did not cover
    BENIGN_LOG_RECORDS[0][1].strip("^$"),
    # Ray core (C++) in each TrainController, once per worker-group start: the PreemptionWatcher actor is
    # created with max_restarts=-1 and actor handles among its arguments; Ray warns that a restart could
    # not rebuild them. The watcher only logs node drains (spot preemption) and is killed with its group.
    r"core_worker\.cc:\d+: Actor with class name: 'PreemptionWatcher' and ID: '[0-9a-f]+' has constructor "
    r"arguments in the object store and max_restarts > 0\.",
    # the raylet, relayed to every driver (see BENIGN_WORKER_POOL_MULTIPLE)
    r"^WARNING: \d+ PYTHON worker processes have been started on node: \S+ with address: \S+, which is "
    r"(?P<multiple>\d+)x the maximum expected startup concurrency \(\d+\)\.",
)

#: what ray.init's runtime_env names as the worker setup hook (importable wherever crnn_ray is)
WORKER_SETUP_HOOK = "crnn_ray.ray_compat.quiet_ray_worker"


class _MessageFilter(logging.Filter):
    """Drops the records of one logger whose message matches one exact pattern; every other record passes."""

    def __init__(self, pattern: str):
        super().__init__()
        self.pattern = re.compile(pattern)

    def filter(self, record: logging.LogRecord) -> bool:
        try:
            return self.pattern.search(record.getMessage()) is None
        except Exception:  # a record that cannot be formatted is not ours to judge
            return True


def quiet_ray_worker() -> None:
    """worker_process_setup_hook: install the BENIGN_LOG_RECORDS filters and the BENIGN_THREAD_ERRORS
    excepthook in this worker / actor process.

    Ray runs it in every process of the job before any task; a hook that raises would fail the worker, so
    nothing here may raise. Installing twice is harmless (a logger keeps one filter per pattern).
    """
    try:
        for name, pattern in BENIGN_LOG_RECORDS:
            log = logging.getLogger(name)
            if not any(isinstance(f, _MessageFilter) and f.pattern.pattern == pattern for f in log.filters):
                log.addFilter(_MessageFilter(pattern))
        import threading

        if not getattr(threading.excepthook, "_crnn_quiet", False):
            threading.excepthook = _quiet_excepthook(threading.excepthook)
    except Exception:
        pass


def _quiet_excepthook(previous):
    """threading.excepthook that stays silent for BENIGN_THREAD_ERRORS and hands every other error on."""
    def excepthook(args):
        thread = getattr(args.thread, "name", None)
        for name, kind, pattern in BENIGN_THREAD_ERRORS:
            if thread == name and isinstance(args.exc_value, kind) and re.search(pattern, str(args.exc_value)):
                return None
        return previous(args)

    excepthook._crnn_quiet = True
    return excepthook


def benign_driver_line(line: str) -> bool:
    """Whether the driver should leave out this streamed line (one of BENIGN_DRIVER_LINES)."""
    for pattern in BENIGN_DRIVER_LINES:
        found = re.search(pattern, line)
        if found is None:
            continue
        multiple = found.groupdict().get("multiple")
        return multiple is None or int(multiple) <= BENIGN_WORKER_POOL_MULTIPLE
    return False


#: set when the sweep was told to stop (run._graceful_stop): from then on the driver prints none of its
#: workers' output. Tune stops every trial, and a Train run caught starting its worker group logs the
#: worker's death as a startup-failure traceback; the stop is what the user asked for, the resume line
#: follows, and the session's log files keep every line.
STOPPING = threading.Event()


def install_driver_log_filter() -> bool:
    """Leave BENIGN_DRIVER_LINES out of what this driver prints of its workers' and the raylet's output.

    Both paths (worker stdout/stderr streamed with log_to_driver, and the raylet's error messages) go through
    ray._private.worker.print_to_stdstream; wrapping it before ray.init puts the filter ahead of Ray's
    deduplication, so a dropped line is not "[repeated Nx]" either. The lines stay in the session's log files.
    Returns whether the filter is in place (False: a Ray without that function; nothing changes).
    """
    try:
        from ray._private import worker as ray_worker
    except ImportError:
        return False
    original = getattr(ray_worker, "print_to_stdstream", None)
    if original is None:
        return False
    if getattr(original, "_crnn_quiet", False):
        return True

    def print_to_stdstream(data, *args, **kwargs):
        lines = data.get("lines") if isinstance(data, dict) else None
        if lines and STOPPING.is_set():  # Ctrl-C / SIGTERM: what the actors say while they die is the stop's
            return None
        if lines:
            kept = [line for line in lines if not benign_driver_line(line)]
            if not kept:
                return None
            if len(kept) != len(lines):
                data = {**data, "lines": kept}
        return original(data, *args, **kwargs)

    print_to_stdstream._crnn_quiet = True
    ray_worker.print_to_stdstream = print_to_stdstream
    return True


#: our own worker lines: `[convgru/m01] epoch 2/3 ...`, `[pack p000] model 2/3: ...`, `[cnn1d/m01] t000: ...`
OUR_LINES = r"^\[[^\]\s]+(?: [^\]\s]+)?\] "


def never_deduplicate_our_lines() -> bool:
    """Ray's driver folds lines that look alike across processes into "[repeated Nx across cluster]" — which
    swallowed one epoch line in three of a packed sweep. Its deduplicators keep an allow pattern (read from
    RAY_DEDUP_LOGS_ALLOW_REGEX at import, so set here): our own lines always print; Ray's are still folded."""
    import re

    try:
        from ray._private import ray_logging
    except ImportError:
        return False
    done = False
    for name in ("stdout_deduplicator", "stderr_deduplicator"):
        dedup = getattr(ray_logging, name, None)
        if dedup is None or not hasattr(dedup, "allow_re"):
            continue
        old = dedup.allow_re.pattern if dedup.allow_re is not None else None
        if old is None or OUR_LINES not in old:
            dedup.allow_re = re.compile(OUR_LINES if old is None else f"(?:{old})|{OUR_LINES}")
        done = True
    return done


def quiet_init_kwargs(**init_kwargs) -> dict:
    """ray.init keyword arguments with the known-benign Ray messages silenced (call it right before ray.init).

    Installs the driver-side filter now and adds WORKER_SETUP_HOOK to the runtime_env. Under `ray job submit`
    ray.init merges this runtime_env with the job's (working_dir, pip, env_vars), so the hook reaches every
    worker of the job; when the job's runtime_env already names a setup hook, it is left alone (Ray refuses two).
    """
    install_driver_log_filter()
    never_deduplicate_our_lines()
    runtime_env = dict(init_kwargs.get("runtime_env") or {})
    if "worker_process_setup_hook" not in runtime_env and not _job_has_setup_hook():
        runtime_env["worker_process_setup_hook"] = WORKER_SETUP_HOOK
    if runtime_env:
        init_kwargs["runtime_env"] = runtime_env
    return init_kwargs


def _job_has_setup_hook() -> bool:
    """Whether this driver runs under `ray job submit` with a runtime_env that already has a setup hook."""
    import json

    try:
        from ray._private.runtime_env.constants import RAY_JOB_CONFIG_JSON_ENV_VAR
    except ImportError:
        RAY_JOB_CONFIG_JSON_ENV_VAR = "RAY_JOB_CONFIG_JSON_ENV_VAR"
    text = os.environ.get(RAY_JOB_CONFIG_JSON_ENV_VAR)
    if not text:
        return False
    try:
        runtime_env = (json.loads(text) or {}).get("runtime_env") or {}
    except (ValueError, AttributeError):
        return False
    # the key itself, or the env var Ray turns it into (a job supervisor may have done so already)
    return ("worker_process_setup_hook" in runtime_env
            or "__RAY_WORKER_PROCESS_SETUP_HOOK_ENV_VAR" in (runtime_env.get("env_vars") or {}))
