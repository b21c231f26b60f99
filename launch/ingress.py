"""The OpenAI-compatible ingress: Ray Serve LLM's ``OpenAiIngress`` with the routes we serve.

Ray's ingress already implements the OpenAI protocol on top of vLLM's serving code
(``/v1/chat/completions`` with images, video and streaming, ``/v1/completions``,
``/v1/models``). We add ``/health`` (503 unless every model's engine answers its health check),
the front door (``launch.front_door``: limits checked before anything reaches an engine), the
access gate (``launch.access``: API keys, body cap), and drop the routes that make no sense for
Qwen2-VL (embeddings, audio, score).
"""

from __future__ import annotations

import asyncio

import urllib.request

from fastapi import Request, status
from fastapi.responses import JSONResponse, Response
from ray.llm._internal.serve.core.configs.openai_api_models import (
    ChatCompletionRequest,
    CompletionRequest,
)
from ray.llm._internal.serve.core.ingress.ingress import (
    DEFAULT_ENDPOINTS,
    OpenAiIngress,
    init,
    make_fastapi_ingress,
)

from engine.config import ServingConfig

from .access import AccessGate
from .errors import error_body, openai_errors_middleware
from .front_door import FrontDoor
from .rejections import RequestRejected, count_rejection

HEALTH_TIMEOUT_S = 10.0
SERVED_ENDPOINTS = ("models", "model_data", "completions", "chat", "tokenize", "detokenize")


def rejection_response(err: RequestRejected) -> JSONResponse:
    count_rejection(err.reason)
    return JSONResponse(error_body(err.status, err.message, param=err.param),
                        status_code=err.status)


class QwenVLIngress(OpenAiIngress):
    def __init__(self, llm_deployments, model_cards, *, serving_config: dict, **kwargs):
        super().__init__(llm_deployments, model_cards, **kwargs)
        self.cfg = ServingConfig.model_validate(serving_config)
        self.front_door = FrontDoor(self.cfg)

    async def metrics(self) -> Response:
        """The Prometheus text of this node's Ray metrics agent (vLLM's included)."""
        if self.cfg.access.metrics == "off":
            return JSONResponse(error_body(404, "Not Found"), status_code=404)
        url = f"http://127.0.0.1:{self.cfg.server.metrics_port}/metrics"

        def scrape() -> bytes:
            with urllib.request.urlopen(url, timeout=10) as r:
                return r.read()

        try:
            text = await asyncio.to_thread(scrape)
        except OSError:
            return JSONResponse(error_body(503, "metrics agent unavailable"), status_code=503)
        return Response(text, media_type="text/plain; version=0.0.4")

    async def chat(self, body: ChatCompletionRequest, request: Request):
        try:
            await self._check_model(body)
            await self.front_door.check_chat(body)
        except RequestRejected as err:
            return rejection_response(err)
        return await super().chat(body, request)

    async def completions(self, body: CompletionRequest, request: Request):
        try:
            await self._check_model(body)
            self.front_door.check_completion(body)
        except RequestRejected as err:
            return rejection_response(err)
        return await super().completions(body, request)

    async def _check_model(self, body) -> None:
        model = getattr(body, "model", None)
        if model is not None and model not in self._model_cards:
            raise RequestRejected(404, f"model {model!r} does not exist; available: "
                                  f"{', '.join(sorted(self._model_cards))}", param="model",
                                  reason="unknown_model")

    async def health(self) -> JSONResponse:
        """200 when every model's engine is healthy, else 503 with an OpenAI error body."""
        results = {}
        for model_id, handle in self._default_serve_handles.items():
            try:
                await asyncio.wait_for(handle.check_health.remote(), HEALTH_TIMEOUT_S)
                results[model_id] = "healthy"
            except Exception as err:  # any failure means unhealthy; details stay server-side
                results[model_id] = f"unhealthy: {type(err).__name__}"
        if all(v == "healthy" for v in results.values()):
            return JSONResponse({"status": "ok", "models": results})
        return JSONResponse(
            {**error_body(503, "engine unhealthy"), "models": results},
            status_code=status.HTTP_503_SERVICE_UNAVAILABLE,
        )


ENDPOINTS = {name: DEFAULT_ENDPOINTS[name] for name in SERVED_ENDPOINTS}
ENDPOINTS["health"] = lambda app: app.get("/health")
ENDPOINTS["metrics"] = lambda app: app.get("/metrics")


def make_ingress_class(cfg: ServingConfig):
    """The ``@serve.ingress``-wrapped class (a fresh FastAPI app each call)."""
    app = init()  # Ray's app: request ids, CORS, HTTP metrics, exception handling
    app.middleware("http")(openai_errors_middleware)  # every error leaves in one shape
    app.add_middleware(  # outermost: keys and body size before anything is parsed
        AccessGate, max_body_bytes=cfg.limits.max_body_bytes,
        api_keys_env=cfg.access.api_keys_env, api_keys_file=cfg.access.api_keys_file,
        open_paths=frozenset({"/metrics"} if cfg.access.metrics == "open" else ()))
    return make_fastapi_ingress(QwenVLIngress, endpoint_map=ENDPOINTS, app=app)
