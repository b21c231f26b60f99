"""The API's ``/metrics`` route: the node's Prometheus text, as Ray's metrics agent serves it.

The agent renders every series of the node (vLLM's, Ray Serve's, the stack's own); the route
puts it behind the API's access policy (``access.metrics``: off, open, or behind a key).
"""

from __future__ import annotations

import asyncio
import urllib.request

from fastapi.responses import JSONResponse, Response

from engine.config import ServingConfig

from .errors import error_body


async def metrics_text(cfg: ServingConfig) -> Response:
    """The Prometheus text of this node's Ray metrics agent (vLLM's included)."""
    if cfg.access.metrics == "off":
        return JSONResponse(error_body(404, "Not Found"), status_code=404)
    url = f"http://127.0.0.1:{cfg.server.metrics_port}/metrics"

    def scrape() -> bytes:
        with urllib.request.urlopen(url, timeout=10) as r:
            return r.read()

    try:
        text = await asyncio.to_thread(scrape)
    except OSError:
        return JSONResponse(error_body(503, "metrics agent unavailable"), status_code=503)
    return Response(text, media_type="text/plain; version=0.0.4")
