"""``launch.cluster.start``: which model sources need a download. Starting a real cluster is
test_local_cluster's and the e2e modules'."""

from __future__ import annotations

import pytest

from engine.config import parse_config
from launch.cluster import start


@pytest.mark.parametrize("source, download", [
    ("embedded:qwen2-vl-tiny", False), ("Qwen/Qwen2-VL-2B-Instruct", True)])
def test_only_hub_sources_need_a_download(source, download):
    cfg = parse_config({"model": {"source": source, "served_name": "m"}})
    assert start.needs_download(cfg) is download


@pytest.mark.parametrize("running_env, routing, refused", [
    ({"RAY_SERVE_ENABLE_HA_PROXY": "1"}, False, False),
    ({"RAY_SERVE_ENABLE_HA_PROXY": "1"}, True, True),
    ({"RAY_SERVE_ENABLE_HA_PROXY": "1", "RAY_SERVE_INGRESS_REQUEST_ROUTER_FORWARD_BODY": "1"},
     False, True),
])
def test_a_redeploy_that_switches_image_affinity_asks_for_a_stop(tmp_path, monkeypatch,
                                                                 running_env, routing, refused):
    """HAProxy's body forwarding is read when a Ray node starts: a redeploy onto a cluster whose
    nodes started without it (or with it) for a config that wants the other is refused, with
    the key named and what to do."""
    from launch.cluster.connect import LaunchError
    from launch.cluster.local_cluster import ClusterState, write_state

    monkeypatch.setenv("QWEN_VL_RUN_DIR", str(tmp_path))
    cfg = parse_config({"model": {"source": "embedded:qwen2-vl-tiny", "served_name": "m"},
                        "deployment": {"routing": {"image_affinity": routing}}})
    base = cfg.server.ray_env()
    running = {**{k: v for k, v in base.items() if k != "RAY_SERVE_ENABLE_HA_PROXY"},
               **running_env}
    write_state(ClusterState(address="127.0.0.1:1", temp_dir="", started_by_us=True,
                             metrics_port=0, http_host=cfg.server.host,
                             http_port=cfg.server.port, app_name="m"))
    monkeypatch.setattr(start, "cluster_processes", lambda state: [1])
    monkeypatch.setattr(start, "node_ray_env", lambda state: running)
    if refused:
        with pytest.raises(LaunchError, match=r"deployment.routing.image_affinity \(or where .*"
                                              r"\) differ from the running cluster's \("
                                              r"RAY_SERVE_INGRESS_REQUEST_ROUTER_FORWARD_BODY: "
                                              r"running .*, wanted .*\).*qwen-vl stop"):
            start.ensure_cluster(cfg)
    else:
        state, redeploy = start.ensure_cluster(cfg)
        assert redeploy is True
