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
import json
import time
import urllib.request

from fastapi import Request, status
from fastapi.responses import JSONResponse, Response, StreamingResponse
from ray.exceptions import ActorUnavailableError, RayActorError
from ray.serve.exceptions import BackPressureError
# Ray's route table and app factory have no public name in ray.serve.llm.
from ray.llm._internal.serve.core.ingress.ingress import DEFAULT_ENDPOINTS, init
from ray.serve.llm.ingress import OpenAiIngress, make_fastapi_ingress
from vllm.entrypoints.generate.base.protocol import StreamOptions

from engine.config import ServingConfig

from . import drain
from .access import AccessGate, key_name
from .errors import OpenAIErrors, error_body
from .front_door import FrontDoor
from .quotas import Quotas
from .rejections import RequestRejected, count_rejection
from .replicas import healthy, replica_report
from .request_models import ChatRequest, CompletionsRequest, DetokenizeBody, TokenizeBody
from .usage import (MediaTally, StreamUsage, record, response_usage, set_gauge,
                    token_reservation)

HEALTH_TIMEOUT_S = 10.0
NO_ROOM_FOR_OUTPUT = "max_tokens must be at least 1, got 0"

SERVED_ENDPOINTS = ("models", "model_data", "completions", "chat", "tokenize", "detokenize")


def engine_lost(err: BaseException) -> bool:
    """The engine replica behind a request died: its actor, or vLLM's engine core inside it
    (``EngineDeadError``, which reaches us wrapped in Ray's ``RayTaskError``)."""
    return isinstance(err, (RayActorError, ActorUnavailableError)) or any(
        cls.__name__ == "EngineDeadError" for cls in type(err).__mro__)


def rejection_response(err: RequestRejected) -> JSONResponse:
    count_rejection(err.reason)
    headers = {"Retry-After": str(err.retry_after)} if err.retry_after else None
    return JSONResponse(error_body(err.status, err.message, param=err.param, code=err.code),
                        status_code=err.status, headers=headers)


class QwenVLIngress(OpenAiIngress):
    def __init__(self, llm_deployments, model_cards, *, serving_config: dict, **kwargs):
        super().__init__(llm_deployments, model_cards, **kwargs)
        self.cfg = ServingConfig.model_validate(serving_config)
        self.front_door = FrontDoor(self.cfg)
        self.quotas = Quotas(self.cfg.access, self.cfg.server.app_name)
        self._inflight = 0
        self._draining = False
        self._replica = _replica_name()
        try:  # Serve builds the replica inside its event loop
            self._drain_task = asyncio.get_running_loop().create_task(self._watch_drain())
        except RuntimeError:  # built outside Serve (tests of the class): no drain watch
            self._drain_task = None

    async def _watch_drain(self) -> None:
        """Follow the application's drain flag (``launch.drain``); report what we hold."""
        app = self.cfg.server.app_name
        while True:
            try:
                self._draining = await asyncio.to_thread(drain.is_draining, app)
                set_gauge("qwen_vl_draining", "1 while the application drains (qwen-vl stop, "
                          "SIGTERM): new requests get 503.", float(self._draining))
                set_gauge("qwen_vl_ingress_requests_in_flight", "Requests this ingress "
                          "replica holds (checked, at an engine, or streaming).", self._inflight)
                if self._draining:
                    await asyncio.to_thread(drain.report_inflight, app, self._replica,
                                            self._inflight)
            except Exception:  # GCS briefly unreachable: keep the last state, try again
                pass
            await asyncio.sleep(drain.POLL_S)

    def _unavailable(self, message: str, code: str) -> RequestRejected:
        return RequestRejected(503, message, code=code, reason=code,
                               retry_after=self.cfg.deployment.retry_after_s)

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

    async def chat(self, body: ChatRequest, request: Request):
        return await self._serve(body, request, super().chat, self.front_door.check_chat)

    async def completions(self, body: CompletionsRequest, request: Request):
        async def check(b, tally):
            self.front_door.check_completion(b)

        return await self._serve(body, request, super().completions, check)

    async def tokenize(self, body: TokenizeBody, request: Request):
        """A prompt or a chat, checked by the front door as a completion's prompt or a chat
        completion's messages are (a chat's images and videos loaded under the same policy),
        then tokenized (a chat rendered by the engine's chat template)."""
        async def check(b, tally):
            if hasattr(b, "messages"):
                await self.front_door.check_chat(b, tally)
            else:
                self.front_door.check_completion(b)

        return await self._serve(body, request, super().tokenize, check)

    async def detokenize(self, body: DetokenizeBody, request: Request):
        async def check(b, tally):
            self.front_door.check_detokenize(b)

        return await self._serve(body, request, super().detokenize, check)

    async def _serve(self, body, request, call, check):
        """Checks, the key's quota, then the engine call, counted in flight until the last byte
        is sent; every request, refused or served, is counted under its key's name.

        Refusals that say "come back later" (draining, overloaded, engine replica lost) are
        503 with Retry-After. A stream whose engine fails after it started ends with an OpenAI
        error event and ``[DONE]``: the client always sees an end, never a hang."""
        done = _Accounting(key_name(request.scope), request.scope["path"], self.quotas)
        try:
            if self._draining:
                raise self._unavailable("the server is shutting down; retry on another "
                                        "instance or after the restart", "draining")
            await self._check_model(body)
            await check(body, done.tally)
            if self.quotas.applies_to(done.key):
                done.lease = await self.quotas.acquire(
                    done.key, token_reservation(body, self.cfg, done.tally),
                    self.cfg.deployment.retry_after_s)
        except RequestRejected as err:
            done.finish(err.status)
            return rejection_response(err)
        self._inflight += 1
        streaming = False
        status_code = 500
        try:
            stream_usage = self._ask_stream_usage(body)
            try:
                response = await call(body, request)
            except BackPressureError:
                raise self._unavailable(
                    "the server is at capacity (deployment.max_queued_requests requests are "
                    "already waiting); retry later", "overloaded")
            except Exception as err:
                if NO_ROOM_FOR_OUTPUT in str(getattr(err, "message", "")):
                    # vLLM's words for a prompt of exactly max_model_len tokens: it sets
                    # max_tokens to the room left (0) and blames the client's max_tokens.
                    raise RequestRejected(
                        400, "the prompt fills the model's context (engine.max_model_len = "
                        f"{self.cfg.engine.max_model_len} tokens): no room is left for output "
                        "tokens; shorten the prompt", param="messages" if hasattr(
                            body, "messages") else "prompt", reason="context_length") from None
                if not engine_lost(err):
                    raise
                raise self._unavailable("the model replica serving this request failed; "
                                        "retry", "replica_failed") from None
            if isinstance(response, StreamingResponse):
                response.body_iterator = self._guarded_stream(response.body_iterator, done,
                                                              stream_usage)
                streaming = True
            else:
                status_code = response.status_code
                if status_code == 200:
                    done.usage = response_usage(response.body)
            return response
        except RequestRejected as err:
            status_code = err.status
            return rejection_response(err)
        finally:
            if not streaming:
                self._inflight -= 1
                done.finish(status_code)

    @staticmethod
    def _ask_stream_usage(body) -> StreamUsage | None:
        """A stream's usage is asked of the engine whether or not the client asked for it
        (quotas and per-key counters need it); the client gets the usage event only if it did."""
        if not getattr(body, "stream", False) or not hasattr(body, "stream_options"):
            return None
        asked = bool(body.stream_options and body.stream_options.include_usage)
        if not asked:
            body.stream_options = StreamOptions(include_usage=True)
        return StreamUsage(keep=asked)

    async def _guarded_stream(self, chunks, done: "_Accounting", usage: StreamUsage | None):
        try:
            async for chunk in chunks:
                yield usage.feed(chunk) if usage is not None else chunk
        except Exception as err:
            if not engine_lost(err):
                raise
            count_rejection("replica_failed")
            event = error_body(503, "the model replica serving this stream failed; retry",
                               code="replica_failed")
            yield f"data: {json.dumps(event)}\n\ndata: [DONE]\n\n"
        finally:
            self._inflight -= 1
            done.usage = usage.usage if usage is not None else None
            done.finish(200)

    async def _check_model(self, body) -> None:
        model = getattr(body, "model", None)
        if model is not None and model not in self._model_cards:
            raise RequestRejected(404, f"model {model!r} does not exist; available: "
                                  f"{', '.join(sorted(self._model_cards))}", param="model",
                                  reason="unknown_model")

    async def health(self) -> JSONResponse:
        """200 when every running replica (every engine) answers its health check, else 503
        with an OpenAI error body; either way the replicas, their nodes and health."""
        try:
            rows = await replica_report(self.cfg.server.app_name, HEALTH_TIMEOUT_S)
        except Exception as err:  # the controller is unreachable: say so, never "ok"
            rows, failure = [], f"replica states unavailable ({type(err).__name__})"
        else:
            failure = None if healthy(rows) else "an engine replica is unhealthy"
        if self._draining:
            failure = "draining"
        models = {model_id: "healthy" if failure is None else "unhealthy"
                  for model_id in self._model_cards}
        replicas = [{k: row[k] for k in ("deployment", "replica_id", "state", "node_ip",
                                          "node_id", "health")} for row in rows]
        if failure is None:
            return JSONResponse({"status": "ok", "models": models, "replicas": replicas})
        return JSONResponse(
            {**error_body(503, failure), "models": models, "replicas": replicas},
            status_code=status.HTTP_503_SERVICE_UNAVAILABLE,
            headers={"Retry-After": str(self.cfg.deployment.retry_after_s)},
        )


class _Accounting:
    """One request's key name, media, usage and quota lease, closed exactly once."""

    def __init__(self, key: str, route: str, quotas: Quotas):
        self.key, self.route, self.quotas = key, route, quotas
        self.tally = MediaTally()
        self.lease: int | None = None
        self.usage: tuple[int, int] | None = None
        self.started = time.monotonic()
        self._open = True

    def finish(self, status: int) -> None:
        if not self._open:
            return
        self._open = False
        # A request refused after admission (503: no engine capacity, engine lost) used
        # nothing: its quota is given back.
        self.quotas.settle(self.lease, sum(self.usage) if self.usage else None,
                           refund=status == 503 and self.usage is None)
        record(self.key, self.route, status, self.usage, self.tally,
               time.monotonic() - self.started)


def _replica_name() -> str:
    try:
        from ray import serve

        return serve.get_replica_context().replica_id.unique_id
    except Exception:
        import os

        return f"pid-{os.getpid()}"


ENDPOINTS = {name: DEFAULT_ENDPOINTS[name] for name in SERVED_ENDPOINTS}
ENDPOINTS["health"] = lambda app: app.get("/health")
ENDPOINTS["metrics"] = lambda app: app.get("/metrics")


def make_ingress_class(cfg: ServingConfig):
    """The ``@serve.ingress``-wrapped class (a fresh FastAPI app each call)."""
    app = init()  # Ray's app: request ids, CORS, HTTP metrics, exception handling
    app.add_middleware(OpenAIErrors)  # every error leaves in one shape
    app.add_middleware(  # outermost: keys and body size before anything is parsed
        AccessGate, max_body_bytes=cfg.limits.max_body_bytes,
        access=cfg.access,
        open_paths=frozenset({"/metrics"} if cfg.access.metrics == "open" else ()))
    return make_fastapi_ingress(QwenVLIngress, endpoint_map=ENDPOINTS, app=app)
