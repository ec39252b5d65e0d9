"""Trial placement on a multi-node cluster with fake GPUs (ray.cluster_utils.Cluster, all on this machine).

Two worker nodes each declare one GPU and two CPUs; the torch build is CPU-only, so the Train workers take
the gloo / CPU path while Ray still accounts for (and hands out) the GPUs. Two seeds -> two concurrent
trials, one per (node, GPU), each with a torch thread count equal to its 2-CPU grant.
"""

from __future__ import annotations

import json

import pytest

from conftest import tiny_config, write_yaml
from crnn_ray.sweep import run_sweep

pytestmark = pytest.mark.ray


@pytest.fixture(scope="module")
def gpu_cluster():
    import ray
    from ray.cluster_utils import Cluster

    if ray.is_initialized():  # another module's local Ray: this test needs its own cluster
        pytest.fail("a Ray session is already connected in this process")
    # Cluster() would record its address in /tmp/ray/ray_current_cluster, where any plain `ray.init()` on this
    # machine (other tests, other users) would then attach to it: keep that shared file untouched.
    with pytest.MonkeyPatch.context() as mp:
        mp.setattr(ray._private.utils, "write_ray_address", lambda *args, **kwargs: None)
        cluster = Cluster(initialize_head=True, head_node_args={"num_cpus": 1, "include_dashboard": False})
    for _ in range(2):
        cluster.add_node(num_cpus=2, num_gpus=1)
    cluster.wait_for_nodes()
    ray.init(address=cluster.address, log_to_driver=False)
    try:
        yield cluster
    finally:
        ray.shutdown()
        cluster.shutdown()


def test_two_trials_land_on_distinct_gpus_with_their_cpu_quota(gpu_cluster, tmp_path):
    doc = tiny_config(name="gpus", variants=["cnn1d/m01"], seeds=[0, 1], resources={"cpus_per_trial": 2})
    outcome = run_sweep(write_yaml(tmp_path / "gpus.yaml", doc), storage=tmp_path / "runs")
    trials = outcome.trials
    assert list(trials.status) == ["ok", "ok"]
    # gpus_per_trial "auto" -> 1 on a cluster with GPUs; each worker got exactly one (fake) GPU
    assert all(json.loads(g) == ["0"] for g in trials.gpu_ids)  # each node numbers its single GPU 0
    assert trials.node_id.nunique() == 2  # ... so the two trials were on two different nodes
    head_id = gpu_cluster.head_node.node_id
    assert head_id not in set(trials.node_id)  # the head has no GPU: no trial there
    assert list(trials.threads) == [2, 2]  # torch threads == the 2 CPUs granted
    assert all(ip for ip in trials.node_ip)
