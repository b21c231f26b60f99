"""Derive the Ray Serve application from the one typed config.

One ``LLMConfig`` (Ray Serve LLM) and one deployment: each replica owns one vLLM engine and
serves the API in front of it (``launch.api.server``), so a request crosses one Python process
before the engine core. Everything here is derived from ``engine.config.ServingConfig``;
nothing is configured twice.
"""

from __future__ import annotations

from types import SimpleNamespace
from typing import Any

from engine.checkpoint_fit import check_checkpoint
from engine.config import ServingConfig, parse_config
from engine.vllm_args import engine_kwargs

QWEN2_VL_ARCHITECTURE = "Qwen2VLForConditionalGeneration"
ENGINE_PREFIX = "QwenVLServer:"  # the deployment's name: this prefix and the model's name

# Environment for every engine process (Ray replica, vLLM engine core and workers). The
# replica's user code runs on the event loop that serves HTTP, as ``vllm serve`` runs its app:
# the replica's server hands API requests to the app itself (``launch.ray_compat.
# serve_http_in_place``), which needs the app on that loop.
BASE_ENGINE_ENV = {
    "RAY_SERVE_RUN_USER_CODE_IN_SEPARATE_THREAD": "0",
    "TOKENIZERS_PARALLELISM": "false",
    "HF_HUB_DISABLE_TELEMETRY": "1",
    "VLLM_NO_USAGE_STATS": "1",
    "VLLM_DO_NOT_TRACK": "1",
}


def engine_env(cfg: ServingConfig) -> dict[str, str]:
    """Environment of every engine process: ours, then ``deployment.env`` (which wins).

    CPU thread placement. vLLM pins each engine's threads to the cores it finds free in its own
    process (``VLLM_CPU_OMP_THREADS_BIND=auto``) and keeps one core per worker out of the
    computation for its scheduler process.
    - One replica: vLLM's pinning, kept as it is. With no core kept
      (``VLLM_CPU_NUM_OF_RESERVED_CPU=0``) the engine decodes faster on few cores, but its
      spinning threads starve everything else on the node: behind one busy stream, small
      requests wait for seconds and ``qwen-vl stop`` is slow to raise the drain flag.
      Throughput-only nodes opt in through ``deployment.env`` (``configs/cpu-all-cores.yaml``).
    - More than one: each engine would pin the same cores, unaware of the others, and starve
      them (a replacement engine starts very slowly beside a busy one on few cores),
      so thread placement is left to the OS (``nobind``).
    Set either variable in ``deployment.env`` to choose."""
    d = cfg.deployment
    cpu = {"VLLM_CPU_OMP_THREADS_BIND": "nobind"} if d.device == "cpu" and d.most_replicas > 1 \
        else {}
    return {**BASE_ENGINE_ENV, **cpu, **d.env}


def deployment_config(cfg: ServingConfig) -> dict[str, Any]:
    d = cfg.deployment
    out: dict[str, Any] = {
        # The replica's API holds max_ongoing_requests at the engine and max_queued_requests
        # waiting, and answers every request past both with its own 503 (``launch.api.routes``):
        # Ray Serve admits one more than that, so the 503 is ours, and queues nothing itself
        # (its own refusal is a plain-text 503).
        "max_ongoing_requests": d.max_ongoing_requests + d.max_queued_requests + 1,
        "max_queued_requests": -1,
        "health_check_period_s": d.health_check_period_s,
        # The API writes one access-log line per request itself (key name, route, status,
        # tokens, duration: ``launch.api.usage.record``); Ray's own line would be a second log
        # record per request, written and flushed on the request path.
        "logging_config": {"enable_access_log": False},
        **drain_options(cfg),
    }
    if d.routing.image_affinity:
        out["request_router_config"] = request_router_config(cfg)
    if d.autoscaling is not None:
        a = d.autoscaling
        out["autoscaling_config"] = {
            "min_replicas": a.min_replicas,
            "initial_replicas": max(a.min_replicas, 1),
            "max_replicas": a.max_replicas,
            "target_ongoing_requests": a.target_ongoing_requests,
            "upscale_delay_s": a.upscale_delay_s,
            "downscale_delay_s": a.downscale_delay_s,
        }
    else:
        out["num_replicas"] = d.replicas
    return out


def request_router_config(cfg: ServingConfig) -> dict[str, Any]:
    """Ray Serve's request router for the engine deployment: the image-affinity policy
    (``launch.router.affinity``), which the ingress request router asks for each request, and
    how often each replica reports the requests it holds."""
    from launch.router.affinity import ImageAffinityRouter

    r = cfg.deployment.routing
    return {
        "request_router_class": f"{ImageAffinityRouter.__module__}:{ImageAffinityRouter.__name__}",
        "request_router_kwargs": {"entries": r.affinity_entries,
                                  "max_load_gap": r.affinity_max_load_gap,
                                  "load_report_s": r.load_report_s},
        "request_routing_stats_period_s": r.load_report_s,
    }


def drain_options(cfg: ServingConfig) -> dict[str, Any]:
    """Ray Serve's graceful shutdown: a stopping replica (stop, redeploy, scale-down) finishes
    the requests it holds for up to ``deployment.drain_timeout_s``."""
    return {"graceful_shutdown_timeout_s": cfg.deployment.drain_timeout_s,
            "graceful_shutdown_wait_loop_s": 1}


def llm_config_dict(cfg: ServingConfig, model_path: str | None = None) -> dict[str, Any]:
    """The Ray Serve LLM ``LLMConfig`` as plain data (what a serve config file holds)."""
    d = cfg.deployment
    kwargs = engine_kwargs(cfg, model_path)
    source = kwargs.pop("model")
    kwargs.pop("served_model_name")  # Ray sets it from model_id
    out: dict[str, Any] = {
        "model_loading_config": {"model_id": cfg.model.served_name, "model_source": source},
        "engine_kwargs": kwargs,
        "deployment_config": deployment_config(cfg),
        "runtime_env": {"env_vars": engine_env(cfg)},
        "log_engine_metrics": True,
        # The model is local or on the Hub (vLLM fetches it): Ray's per-node fetch is a no-op.
        "callback_config": {"callback_class": "launch.ray_compat.SkipNodeInit"},
    }
    if d.device == "cpu":
        out["accelerator_config"] = {"kind": "cpu"}
        out["placement_group_config"] = {"bundles": [{"CPU": d.cpus_per_replica}]}
    else:
        out["accelerator_config"] = {"kind": "gpu"}
        out["placement_group_config"] = {
            "bundle_per_worker": {"GPU": 1, "CPU": 1},
            "strategy": "PACK",
        }
    return out


def build_app(cfg: ServingConfig):
    """The Ray Serve application: one deployment of engine replicas, each serving the API.
    A checkpoint that cannot run as configured fails the deploy here, with the key named."""
    from engine import process_hooks

    check_checkpoint(cfg)

    process_hooks.install()
    from ray import serve
    from ray.serve.llm import LLMConfig, build_llm_deployment

    from launch.api.server import QwenVLServer

    llm_config = LLMConfig.model_validate(llm_config_dict(cfg))
    # Marks the model as vision-capable (Ray does this only inside its own builder, by
    # downloading config.json). Every model we serve is a Qwen2-VL, so no download: building
    # the application needs no network (the chart's head pod, offline tests).
    llm_config.apply_checkpoint_info(
        llm_config.model_loading_config.model_source, hf_config=_checkpoint_info(cfg))
    app = build_llm_deployment(
        llm_config, name_prefix=ENGINE_PREFIX, deployment_cls=serve.ingress()(QwenVLServer),
        bind_kwargs={"serving_config": cfg.model_dump(mode="json")})
    if cfg.deployment.routing.image_affinity:
        from launch.ray_compat import with_ingress_router

        app = with_ingress_router(app, llm_config)
    return app


def _checkpoint_info(cfg: ServingConfig) -> SimpleNamespace:
    """What Ray reads from a checkpoint's config: a vision config and the architecture."""
    ckpt, _ = cfg.checkpoint_config()
    archs = (ckpt or {}).get("architectures") or [QWEN2_VL_ARCHITECTURE]
    return SimpleNamespace(vision_config=True, architectures=archs)


def serve_application(cfg: ServingConfig) -> dict[str, Any]:
    """The application entry of a Ray Serve config (what a RayService's ``serveConfigV2``
    lists): the builder and the serving config as its args. The Helm chart renders the same."""
    return {
        "name": cfg.server.app_name,
        "route_prefix": "/",
        "import_path": f"{build_from_args.__module__}:{build_from_args.__qualname__}",
        "args": cfg.model_dump(mode="json", exclude_unset=True),
    }


def build_from_args(args: dict[str, Any]):
    """Ray Serve application builder: ``args`` is the serving config (checked here, so a bad
    config fails the deployment with the key named)."""
    return build_app(parse_config(args, "(the Serve application's args)"))
