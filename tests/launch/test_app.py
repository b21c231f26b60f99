"""The Ray Serve application derived from the config, built but not started."""

import os

import pytest

from engine.config import ConfigError, haproxy_pages_binary, load_config, parse_config
from launch.app import build_app, build_from_args, deployment_config, llm_config_dict
from tests.utils import CONFIGS, config_with


def test_cpu_llm_config():
    cfg = load_config(CONFIGS / "default.yaml")
    d = llm_config_dict(cfg, model_path="/ckpt")
    assert d["model_loading_config"] == {"model_id": "qwen2-vl-tiny", "model_source": "/ckpt"}
    assert d["accelerator_config"] == {"kind": "cpu"}
    assert d["placement_group_config"] == {"bundles": [{"CPU": 1}]}
    assert "model" not in d["engine_kwargs"] and "served_model_name" not in d["engine_kwargs"]
    assert d["engine_kwargs"]["limit_mm_per_prompt"] == {"image": 4, "video": 1}
    # Ray Serve admits one more than the replica's API holds (32 at the engine, 64 waiting),
    # so the 503 past both is the API's own, and queues nothing itself.
    assert d["deployment_config"] == {
        "max_ongoing_requests": 32 + 64 + 1, "num_replicas": 1, "max_queued_requests": -1,
        "health_check_period_s": 5, "graceful_shutdown_timeout_s": 60,
        "graceful_shutdown_wait_loop_s": 1,
        "logging_config": {"enable_access_log": False}}  # the API writes its own access line
    assert d["log_engine_metrics"] is True


def test_resilience_settings_reach_ray_serve_deployments():
    """Admission bound, health period and drain timeout as Ray Serve's own deployment options
    on the one deployment."""
    from ray.serve.llm import LLMConfig, build_llm_deployment

    cfg = parse_config(config_with(deployment={"max_ongoing_requests": 5, "max_queued_requests": 7,
                                          "health_check_period_s": 3, "drain_timeout_s": 42}))
    llm = LLMConfig.model_validate(llm_config_dict(cfg, model_path="/ckpt"))
    dc = build_llm_deployment(llm)._bound_deployment._deployment_config
    assert (dc.max_ongoing_requests, dc.max_queued_requests, dc.health_check_period_s,
            dc.graceful_shutdown_timeout_s) == (13, -1, 3, 42)
    assert dc.logging_config["enable_access_log"] is False


def test_gpu_llm_config_takes_tp_gpus():
    cfg = load_config(CONFIGS / "qwen2-vl-7b-instruct.yaml")
    d = llm_config_dict(cfg, model_path="/ckpt")
    assert d["accelerator_config"] == {"kind": "gpu"}
    assert d["placement_group_config"]["bundle_per_worker"] == {"GPU": 1, "CPU": 1}
    assert d["engine_kwargs"]["tensor_parallel_size"] == 2
    assert d["engine_kwargs"]["gpu_memory_utilization"] == 0.9


@pytest.mark.parametrize("deployment, placement", [
    ({"cpus_per_replica": 64}, {"bundles": [{"CPU": 64}]}),
    ({"device": "gpu"}, {"bundle_per_worker": {"GPU": 1, "CPU": 1}, "strategy": "PACK"}),
])
def test_a_replica_asks_ray_for_its_devices(deployment, placement):
    """What Ray places per replica (Ray adds the replica actor's own CPU): a CPU replica's
    cores in one bundle, a GPU replica one GPU and a CPU per engine worker."""
    cfg = parse_config(config_with(deployment=deployment))
    assert llm_config_dict(cfg, model_path="/ckpt")["placement_group_config"] == placement


def test_autoscaling_maps_to_ray_serve():
    cfg = parse_config(config_with(deployment={"autoscaling": {
        "min_replicas": 1, "max_replicas": 4, "target_ongoing_requests": 6}}))
    dc = deployment_config(cfg)
    assert "num_replicas" not in dc
    assert dc["autoscaling_config"]["max_replicas"] == 4
    assert dc["autoscaling_config"]["target_ongoing_requests"] == 6


def test_ray_accepts_the_llm_config():
    from ray.serve.llm import LLMConfig

    cfg = load_config(CONFIGS / "default.yaml")
    llm = LLMConfig.model_validate(llm_config_dict(cfg, model_path=cfg.model_path()))
    assert llm.model_id == "qwen2-vl-tiny"


def test_build_app_without_starting():
    """Builds the application: one deployment, whose replicas are our engine server serving
    HTTP themselves (a Serve ingress built late); nothing is deployed (Ray's builder does
    start a local Ray runtime in this process, which is shut down here)."""
    import ray
    from ray.serve.deployment import Application

    from launch.api.server import QwenVLServer

    cfg = load_config(CONFIGS / "default.yaml")
    try:
        app = build_app(cfg)
        assert isinstance(app, Application)
        dep = app._bound_deployment
        assert dep.name == "QwenVLServer:qwen2-vl-tiny"
        assert issubclass(dep.func_or_class, QwenVLServer)
        assert dep.func_or_class.__serve_build_asgi_app__ is \
            QwenVLServer.__serve_build_asgi_app__  # the late-built app is ours
        assert dep.init_kwargs["serving_config"]["model"]["served_name"] == "qwen2-vl-tiny"
        dc = dep._deployment_config
        assert dc.num_replicas == 1 and dc.autoscaling_config is None
    finally:
        ray.shutdown()


def test_the_builder_refuses_a_checkpoint_that_cannot_run_here():
    """A deploy that is not `qwen-vl serve` (the chart's RayService) runs the checkpoint check
    in the application's builder: GPTQ-Int8 on CPU fails there, with the key named."""
    args = config_with(model={"source": "embedded:qwen2-vl-tiny-gptq-int8"})
    with pytest.raises(ConfigError, match="GPTQ-Int8, which cannot be served on CPU"):
        build_from_args(args)


def test_cpu_thread_placement_one_engine_pinned_several_not():
    def env(**deployment):
        cfg = parse_config(config_with(deployment=deployment))
        return llm_config_dict(cfg, model_path="/ckpt")["runtime_env"]["env_vars"]

    one = env()  # one replica: vLLM's pinning, one core kept for its scheduler and the rest
    assert not {"VLLM_CPU_OMP_THREADS_BIND", "VLLM_CPU_NUM_OF_RESERVED_CPU"} & set(one)
    assert env(env={"VLLM_CPU_NUM_OF_RESERVED_CPU": "0"})["VLLM_CPU_NUM_OF_RESERVED_CPU"] == "0"
    gpu = parse_config({"model": {"source": "Qwen/Qwen2-VL-2B-Instruct", "served_name": "m"},
                        "deployment": {"device": "gpu"}})
    assert not {"VLLM_CPU_NUM_OF_RESERVED_CPU", "VLLM_CPU_OMP_THREADS_BIND"} & set(
        llm_config_dict(gpu, model_path="/ckpt")["runtime_env"]["env_vars"])
    assert env(replicas=2)["VLLM_CPU_OMP_THREADS_BIND"] == "nobind"
    assert env(autoscaling={"min_replicas": 1, "max_replicas": 3})[
        "VLLM_CPU_OMP_THREADS_BIND"] == "nobind"
    assert env(replicas=2, env={"VLLM_CPU_OMP_THREADS_BIND": "0-1"})[
        "VLLM_CPU_OMP_THREADS_BIND"] == "0-1"  # deployment.env wins
    assert env(replicas=2)["VLLM_NO_USAGE_STATS"] == "1"


def test_cpu_all_cores_config_is_the_default_with_no_core_kept():
    """configs/cpu-all-cores.yaml is a copy of default.yaml plus one setting: nothing else drifts."""
    default = load_config(CONFIGS / "default.yaml").model_dump()
    all_cores = load_config(CONFIGS / "cpu-all-cores.yaml").model_dump()
    assert all_cores["deployment"].pop("env") == {"VLLM_CPU_NUM_OF_RESERVED_CPU": "0"}
    default["deployment"].pop("env")
    assert all_cores == default


def test_ray_fast_paths_become_node_environment():
    """server.ray_* are Ray Serve's process-wide flags: environment for every Ray node."""
    srv = parse_config(config_with()).server
    # The one-hop path's default; a stopping replica stays reachable 5 s for HAProxy to learn.
    # A connection that closed before any response byte is retried on another replica.
    # The controller checks each node's proxy every 2 s (Ray's default: 10 s). Ray starts
    # HAProxy through the package's qwen-vl-haproxy (launch.proxy.pages), an executable file.
    assert srv.ray_env() == {"RAY_SERVE_ENABLE_HA_PROXY": "1",
                             "RAY_SERVE_PROXY_HEALTH_CHECK_PERIOD_S": "2",
                             "RAY_SERVE_DIRECT_INGRESS_MIN_DRAINING_PERIOD_S": "5",
                             "RAY_SERVE_HAPROXY_RETRY_ON": "conn-failure empty-response",
                             "RAY_SERVE_HAPROXY_BINARY_PATH": haproxy_pages_binary()}
    assert os.access(haproxy_pages_binary(), os.X_OK), haproxy_pages_binary()
    srv = parse_config(config_with(server={"ray_ha_proxy": False})).server
    assert srv.ray_env() == {"RAY_SERVE_PROXY_HEALTH_CHECK_PERIOD_S": "2"}
    srv = parse_config(config_with(server={
        "ray_throughput_optimized": True, "ray_ha_proxy": True,
        "replica_deregistration_s": 2.5, "proxy_check_s": 0.5})).server
    assert srv.ray_env() == {"RAY_SERVE_THROUGHPUT_OPTIMIZED": "1",
                             "RAY_SERVE_PROXY_HEALTH_CHECK_PERIOD_S": "0.5",
                             "RAY_SERVE_ENABLE_HA_PROXY": "1",
                             "RAY_SERVE_DIRECT_INGRESS_MIN_DRAINING_PERIOD_S": "2.5",
                             "RAY_SERVE_HAPROXY_RETRY_ON": "conn-failure empty-response",
                             "RAY_SERVE_HAPROXY_BINARY_PATH": haproxy_pages_binary()}


def test_rays_per_node_model_fetch_is_skipped():
    """The stack's model sources need no cloud-mirror fetch: the engine replica starts without
    Ray's per-node download task (launch.ray_compat.SkipNodeInit)."""
    import asyncio
    import importlib

    from ray.serve.llm import LLMConfig

    from launch.ray_compat import SkipNodeInit

    cfg = load_config(CONFIGS / "default.yaml")
    llm = LLMConfig.model_validate(llm_config_dict(cfg, model_path="/ckpt"))
    module, name = llm.callback_config.callback_class.rsplit(".", 1)
    assert getattr(importlib.import_module(module), name) is SkipNodeInit
    callback = SkipNodeInit(llm_config=llm)
    assert callback.ctx.run_init_node is True  # Ray's default: the task runs
    asyncio.run(callback.run_callback("on_before_node_init"))
    assert callback.ctx.run_init_node is False


def test_image_affinity_is_a_request_router_behind_rays_ingress_router():
    """deployment.routing.image_affinity: the engine deployment's request router is the
    affinity policy with the configured bounds, replicas report their load every
    load_report_s, Ray Serve LLM's ingress router is attached (HAProxy asks it), and every node
    forwards the request body to it."""
    import ray
    from ray.serve.llm import LLMConfig, build_llm_deployment

    from engine.config import ROUTER_BODY_ENV
    from launch.router.affinity import ImageAffinityRouter

    routing = {"image_affinity": True, "affinity_entries": 50, "affinity_max_load_gap": 3,
               "load_report_s": 0.5}
    cfg = parse_config(config_with(deployment={"routing": routing}))
    llm = LLMConfig.model_validate(llm_config_dict(cfg, model_path="/ckpt"))
    rc = build_llm_deployment(llm)._bound_deployment._deployment_config.request_router_config
    assert rc.get_request_router_class() is ImageAffinityRouter
    assert rc.request_router_kwargs == {"entries": 50, "max_load_gap": 3, "load_report_s": 0.5}
    assert rc.request_routing_stats_period_s == 0.5
    assert cfg.ray_env()[ROUTER_BODY_ENV] == "1"
    plain = parse_config(config_with())
    assert "request_router_config" not in deployment_config(plain)
    assert ROUTER_BODY_ENV not in plain.ray_env()
    try:
        assert build_app(cfg)._ingress_request_router is not None
        assert build_app(plain)._ingress_request_router is None
    finally:
        ray.shutdown()


def test_image_affinity_needs_haproxy():
    with pytest.raises(ConfigError, match="image_affinity needs server.ray_ha_proxy"):
        parse_config(config_with(deployment={"routing": {"image_affinity": True}},
                                 server={"ray_ha_proxy": False}))
