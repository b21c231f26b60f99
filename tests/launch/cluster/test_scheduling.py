"""What an unplaceable replica waits for (``launch.cluster.scheduling``), on a real local Ray
cluster.

Ray Serve names a replica's placement group ``SERVE_REPLICA::<app>#<deployment>#<id>``; these
tests create such groups directly (no engine), which Ray's scheduler judges as it would a
replica's. The whole path through ``qwen-vl serve`` is tested in test_cli.py."""

import time

import pytest

from launch.cluster import scheduling
from tests.utils import config_with

pytestmark = pytest.mark.slow


@pytest.fixture(scope="module")
def ray_cluster():
    import ray

    ray.init(num_cpus=2, num_gpus=0, include_dashboard=False, log_to_driver=False,
             namespace="scheduling-test")
    yield
    ray.shutdown()


def group(name: str, bundles: list[dict]):
    from ray.util.placement_group import placement_group

    return placement_group(bundles, strategy="PACK", name=name)


def waiting_until(app: str, n: int) -> list:
    for _ in range(50):
        found = scheduling.waiting_replicas(app)
        if len(found) >= n:
            return found
        time.sleep(0.2)
    return scheduling.waiting_replicas(app)


def test_infeasible_and_busy_replicas_are_told_apart(ray_cluster):
    from ray.util.placement_group import remove_placement_group

    groups = [
        group("SERVE_REPLICA::app1#QwenVLServer:m#a1", [{"CPU": 1, "GPU": 1}]),
        group("SERVE_REPLICA::app1#QwenVLServer:m#a2", [{"CPU": 64}]),
        group("SERVE_REPLICA::other#QwenVLServer:m#b1", [{"GPU": 1}]),  # another app: not ours
        group("SERVE_REPLICA::app1#Ingress#c1", [{"CPU": 2}]),  # fits: placed
    ]
    groups[-1].wait(10)
    busy = group("SERVE_REPLICA::app1#QwenVLServer:m#a3", [{"CPU": 1}])  # the CPUs are taken
    try:
        found = waiting_until("app1", 3)
        by_demand = {w.demand(): w.infeasible for w in found}
        assert by_demand == {"{CPU: 1, GPU: 1}": True, "{CPU: 64}": True, "{CPU: 1}": False}
        assert {w.deployment for w in found} == {"QwenVLServer:m"}
        nodes = scheduling.alive_nodes()
        infeasible = [w for w in found if w.infeasible]
        assert sorted(scheduling.unmet(infeasible, nodes)) == ["CPU", "GPU"]
        gpu = [w for w in infeasible if "GPU" in w.bundles[0]]
        line = scheduling.infeasible_message(gpu, nodes, "10.0.0.1:6379")
        assert "QwenVLServer:m: each replica needs" in line and "GPU: 0" in line
        assert "qwen-vl join --address 10.0.0.1:6379 --num-gpus N" in line and "\n" not in line
    finally:
        for g in groups + [busy]:
            remove_placement_group(g)


def test_a_plain_head_has_no_autoscaler(ray_cluster):
    assert scheduling.autoscaler_present() is False


def test_advice_by_resource():
    assert "deployment.device: cpu" in scheduling.advice(["GPU"], "h:1")
    assert "deployment.cpus_per_replica" in scheduling.advice(["CPU"], "h:1")
    assert "qwen-vl join --address h:1" in scheduling.advice(["memory"], "h:1")
    assert scheduling.format_resources({"CPU": 2.0, "memory": 3 << 30, "node:x": 1}) == \
        "{CPU: 2, memory: 3.0 GiB}"


def test_with_an_autoscaler_serve_waits_and_says_for_what(ray_cluster, monkeypatch):
    """Where an autoscaler may add the node (KubeRay), `serve` keeps waiting, and its progress
    and timeout lines name the demand instead of a bare STARTING."""
    from ray.util.placement_group import remove_placement_group

    from engine.config import parse_config
    from launch.cluster.connect import LaunchError
    from launch.cluster.deploy import wait_healthy
    from launch.cluster.local_cluster import free_port

    monkeypatch.setattr(scheduling, "autoscaler_present", lambda: True)
    cfg = parse_config(config_with(server={"port": free_port(), "app_name": "scaled"}))
    g = group("SERVE_REPLICA::scaled#QwenVLServer:m#r1", [{"CPU": 1, "GPU": 1}])
    try:
        waiting_until("scaled", 1)
        with pytest.raises(LaunchError) as exc:
            wait_healthy(cfg, timeout_s=3, address="10.0.0.1:6379")
    finally:
        remove_placement_group(g)
    assert "not healthy after 3s" in str(exc.value)
    assert "waiting for resources: QwenVLServer:m: each replica needs {CPU: 1, GPU: 1}" in \
        str(exc.value)
