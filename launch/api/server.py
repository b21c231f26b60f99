"""The engine replica, which is also the API's ingress: one Python process before the engine core.

Ray Serve LLM's ``LLMServer`` owns one vLLM engine per replica (placement, tensor parallel,
health checks, graceful shutdown); wrapped by ``serve.ingress()`` it serves HTTP itself, with
the ASGI app built late, once the engine runs (``__serve_build_asgi_app__``). Ours is vLLM's
app inside the API of ``launch.api.routes`` (access gate, front door, quotas, accounting, errors).
With HAProxy (``server.ray_ha_proxy``) requests reach the replica's own HTTP server directly;
without it, through Ray's HTTP proxy.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import logging.handlers
import os

from ray.serve.llm.deployment import LLMServer

from engine import worker_start
from engine.config import ServingConfig
from launch.ray_compat import serve_http_in_place
from launch.router.affinity import INFLIGHT_STAT

from . import compact_tools, frames
from .routes import ApiState, make_api


class QwenVLServer(LLMServer):
    """One vLLM engine per replica, serving the API in front of it."""

    async def __init__(self, llm_config, *, serving_config: dict, **kwargs):
        cfg = ServingConfig.model_validate(serving_config)
        serve_http_in_place()  # before the replica starts its HTTP server (launch.ray_compat)
        frames.install()  # video files reach vLLM decoded (launch.api.frames)
        worker_start.mark_replica()  # the engine core may fork its worker (engine.worker_start)
        if cfg.engine.compact_json and cfg.tools.auto:
            compact_tools.register(cfg.tools.parser)  # before vLLM builds its serving objects
        with _serve_log_handlers_kept():
            await super().__init__(llm_config, **kwargs)
        self.api_state = ApiState(cfg, self, _replica_name())
        loop = asyncio.get_running_loop()
        self._watch_task = loop.create_task(self.api_state.watch())
        self.api_state.replicas.start()

    async def _start_engine(self):
        await super()._start_engine()
        # Ray's engine looks for vLLM's tokenization server under the app-state name vLLM used
        # to give it (``openai_serving_tokenization``); vLLM 0.32 names it
        # ``serving_tokenization``.
        engine = self.engine
        if getattr(engine, "_oai_serving_tokenization", None) is None:
            state = getattr(engine, "_app_state", None)
            engine._oai_serving_tokenization = getattr(state, "serving_tokenization", None)

    async def record_routing_stats(self) -> dict:
        """What Ray Serve's request router reads of this replica (every
        ``deployment.routing.load_report_s``): the engine's own stats and the requests the API
        holds (``launch.router.affinity``)."""
        stats = await super().record_routing_stats() or {}
        return {**stats, INFLIGHT_STAT: self.api_state.inflight}

    async def __serve_build_asgi_app__(self):
        return make_api(self.api_state, await super().__serve_build_asgi_app__())


@contextlib.contextmanager
def _serve_log_handlers_kept():
    """Ray Serve's log handlers of this replica, as they were, after vLLM configures logging.

    vLLM applies its logging config with ``logging.config.dictConfig`` when its engine starts,
    and dictConfig closes every handler of the process: Ray Serve's buffered file handler loses
    its target, so the replica's Serve log (access lines, our warnings) stops, and a restarted
    Serve controller, which asks each replica for that file when it recovers them, fails and
    replaces every replica. A closed file handler opens its file again on its next record, so
    putting the targets back restores both."""
    kept = [(h, h.target) for h in logging.getLogger("ray.serve").handlers
            if isinstance(h, logging.handlers.MemoryHandler) and h.target is not None]
    try:
        yield
    finally:
        for handler, target in kept:
            if handler.target is None:
                handler.setTarget(target)


def _replica_name() -> str:
    try:
        from ray import serve

        return serve.get_replica_context().replica_id.unique_id
    except Exception:
        return f"pid-{os.getpid()}"
