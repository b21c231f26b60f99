"""The OpenAI-compatible ingress: Ray Serve LLM's ``OpenAiIngress`` with the routes we serve.

Ray's ingress already implements the OpenAI protocol on top of vLLM's serving code
(``/v1/chat/completions`` with images, video and streaming, ``/v1/completions``,
``/v1/models``). We add ``/health`` (503 unless every model's engine answers its health check)
and drop the routes that make no sense for Qwen2-VL (embeddings, audio, score).
"""

from __future__ import annotations

import asyncio

from fastapi import status
from fastapi.responses import JSONResponse
from ray.llm._internal.serve.core.ingress.ingress import (
    DEFAULT_ENDPOINTS,
    OpenAiIngress,
    init,
    make_fastapi_ingress,
)

from .errors import error_body, openai_errors_middleware

HEALTH_TIMEOUT_S = 10.0
SERVED_ENDPOINTS = ("models", "model_data", "completions", "chat", "tokenize", "detokenize")


class QwenVLIngress(OpenAiIngress):
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


def make_ingress_class():
    """The ``@serve.ingress``-wrapped class (a fresh FastAPI app each call)."""
    app = init()  # Ray's app: request ids, CORS, HTTP metrics, exception handling
    app.middleware("http")(openai_errors_middleware)  # outermost: every error leaves in one shape
    return make_fastapi_ingress(QwenVLIngress, endpoint_map=ENDPOINTS, app=app)
