"""Every use of Ray internals (private modules, undocumented environment variables) in one place.

Ray 2.60's Train V2 has no public knob for these; when Ray changes, this file is the one to read. Each helper
degrades to "do nothing" rather than failing a sweep.
"""

from __future__ import annotations

import logging
import os


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
    (Prometheus gauges nobody scrapes without a dashboard). On a cluster Ray's defaults stand.
    """
    os.environ["RAY_TRAIN_WORKER_GROUP_START_TIMEOUT_S"] = str(start_timeout_s)
    os.environ.setdefault("RAY_TRAIN_ENABLE_PRINT_PATCH", "0")
    if private_ray:
        os.environ.setdefault("RAY_TRAIN_ENABLE_PREEMPTION_WATCHER", "0")
        os.environ.setdefault("RAY_TRAIN_METRICS_ENABLED", "0")


def quiet_train_report_log() -> None:
    """Train V2 logs every report (all metrics) at INFO under a logger named after its file, which
    LoggingConfig does not reach; train_one already prints one line per epoch."""
    try:
        from ray.train.v2._internal.execution import context as train_context
    except ImportError:  # a Ray without that module: nothing to quiet
        return
    logging.getLogger(train_context.__file__).setLevel(logging.WARNING)
