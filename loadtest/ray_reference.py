"""The overhead scenario's middle target: Ray Serve LLM's own OpenAI app, without our layer.

``ray.serve.llm.build_openai_app`` with the ``LLMConfig`` our config produces (``launch.app``:
same engine arguments, engine environment, replicas, placement and stream pacing) behind Ray's
own ``OpenAiIngress``, on a local cluster started the way ``qwen-vl serve`` starts one. What it
lacks is exactly what this project adds: the front door's limits, the access gate, the OpenAI
error mapping, ``/health``, drain. So in one run::

    stack / vllm-serve          = what a request pays for Ray Serve and for our layer together
    ray-serve-llm / vllm-serve  = what it pays for Ray Serve (proxy, ingress, engine replica)
    stack / ray-serve-llm       = what it pays for our layer alone

Run as ``python -m loadtest.ray_reference CONFIG`` with ``QWEN_VL_RUN_DIR`` set; it returns when
the application is running and leaves it running; ``qwen-vl stop`` (same run directory) ends it.
"""

from __future__ import annotations

import sys

from engine.config import load_config
from launch.app import llm_config_dict
from launch.cluster.connect import connect, use_token_auth
from launch.cluster.start import ensure_cluster
from launch.cluster.stop import shutdown


def reference_app(cfg):
    """Ray Serve LLM's stock OpenAI application for ``cfg``'s model."""
    from ray.serve.llm import LLMConfig, build_openai_app

    return build_openai_app({"llm_configs": [LLMConfig.model_validate(llm_config_dict(cfg))]})


def main(argv: list[str]) -> int:
    from engine import process_hooks

    process_hooks.install()
    use_token_auth()  # as qwen-vl: the same cluster set-up
    cfg = load_config(argv[0])
    cfg.model_path()  # builds the embedded model on first use
    state, _ = ensure_cluster(cfg)
    try:
        from ray import serve
        from ray.serve.config import HTTPOptions

        connect(state.address)
        serve.start(http_options=HTTPOptions(host=cfg.server.host, port=cfg.server.port),
                    proxy_location=cfg.server.proxy_location)
        serve.run(reference_app(cfg), name=cfg.server.app_name, route_prefix="/")  # until RUNNING
    except BaseException:
        shutdown(state, quiet=True)
        raise
    deployments = serve.status().applications[cfg.server.app_name].deployments
    print(f"ray-serve-llm: running on http://{cfg.server.host}:{cfg.server.port}; deployments: "
          f"{', '.join(sorted(deployments))}", flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
