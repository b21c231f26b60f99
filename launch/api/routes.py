"""The OpenAI-compatible API, served by each engine replica itself (one hop).

Every engine replica (``launch.api.server``) is a Serve ingress: HAProxy (or Ray's HTTP proxy)
forwards a request straight to one replica, whose HTTP app is built here around vLLM's own
app. The routes we serve pass the request through the access gate (``launch.api.access``: API keys,
body cap), the front door (``launch.api.front_door``: every limit), the key's quota
(``launch.api.quotas``) and then call vLLM's own route handler in the same process, on the
request model already parsed: no second hop, no re-serialization. ``/health`` and ``/metrics``
are ours; the routes that make no sense for Qwen2-VL (embeddings, audio, score) are not
served.
"""

from __future__ import annotations

import asyncio
import json
import time

from fastapi import FastAPI, Request, status
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse, Response, StreamingResponse
from vllm.entrypoints.openai.chat_completion.api_router import create_chat_completion
from vllm.entrypoints.openai.completion.api_router import create_completion
from vllm.entrypoints.openai.models.api_router import show_available_models
from vllm.entrypoints.generate.base.protocol import StreamOptions
from vllm.exceptions import VLLMError
from vllm.entrypoints.serve.exception_handling.error_response import create_error_response
from vllm.entrypoints.serve.tokenize.api_router import detokenize, tokenize

from engine.config import ServingConfig

from launch import drain
from launch.replicas import ReplicaView
from .access import AccessGate, key_name
from .errors import OpenAIErrors, error_body, validation_error_body
from .frames import STORE
from .front_door import FrontDoor
from .metric_records import flush_counters, set_gauge
from .metrics_route import metrics_text
from .quotas import Quotas
from .rejections import RequestRejected, count_rejection
from .request_models import ChatRequest, CompletionsRequest, DetokenizeBody, TokenizeBody
from .usage import MediaTally, StreamUsage, record, response_usage, token_reservation

HEALTH_TIMEOUT_S = 10.0
NO_ROOM_FOR_OUTPUT = "max_tokens must be at least 1, got 0"


def engine_lost(err: BaseException) -> bool:
    """vLLM's engine core behind this replica died (``EngineDeadError``)."""
    return any(cls.__name__ == "EngineDeadError" for cls in type(err).__mro__)


def rejection_response(err: RequestRejected) -> JSONResponse:
    count_rejection(err.reason)
    headers = {"Retry-After": str(err.retry_after)} if err.retry_after else None
    return JSONResponse(error_body(err.status, err.message, param=err.param, code=err.code),
                        status_code=err.status, headers=headers)


class ApiState:
    """What the request path of one replica holds: the config, the front door, the quota
    client, the requests in flight and the drain flag as last read."""

    def __init__(self, cfg: ServingConfig, server, replica: str):
        self.cfg = cfg
        self.server = server  # the engine replica (its health check)
        self.front_door = FrontDoor(cfg)
        self.quotas = Quotas(cfg.access, cfg.server.app_name)
        self.replicas = ReplicaView(cfg.server.app_name, HEALTH_TIMEOUT_S)
        self.model = cfg.model.served_name
        self.replica = replica
        self.inflight = 0
        self.waiting = 0  # of those in flight, waiting for a slot at the engine
        # deployment.max_ongoing_requests at the engine at once, max_queued_requests more
        # waiting for a slot (checked, media loaded); past both, 503 ``overloaded`` at once.
        d = cfg.deployment
        self.capacity = d.max_ongoing_requests + d.max_queued_requests
        self.slots = asyncio.Semaphore(d.max_ongoing_requests)
        self.draining = False

    async def watch(self) -> None:
        """Follow the application's drain flag (``launch.drain``); report what we hold and
        the requests counted since the last round (``metric_records.flush_counters``); keep
        the replica view fresh for ``/health`` (which never waits on the Serve controller)."""
        app = self.cfg.server.app_name
        while True:
            flush_counters()
            try:
                self.draining = await asyncio.to_thread(drain.is_draining, app)
                set_gauge("qwen_vl_draining", "1 while the application drains (qwen-vl stop, "
                          "SIGTERM): new requests get 503.", float(self.draining))
                set_gauge("qwen_vl_requests_in_flight", "Requests this engine replica "
                          "holds (checked, at the engine, or streaming).", self.inflight)
                set_gauge("qwen_vl_requests_waiting", "Requests this engine replica "
                          "holds waiting for a slot at its engine "
                          "(deployment.max_queued_requests at most).", self.waiting)
                if self.draining:
                    await asyncio.to_thread(drain.report_inflight, app, self.replica,
                                            self.inflight)
            except Exception:  # GCS briefly unreachable: keep the last state, try again
                pass
            await asyncio.sleep(drain.POLL_S)

    def unavailable(self, message: str, code: str) -> RequestRejected:
        return RequestRejected(503, message, code=code, reason=code,
                               retry_after=self.cfg.deployment.retry_after_s)


def make_api(state: ApiState, vllm_app) -> FastAPI:
    """The replica's HTTP app: our routes, calling vLLM's handlers with vLLM's app state."""
    cfg = state.cfg
    app = FastAPI(title="qwen-vl-serving")
    app.state = vllm_app.state  # vLLM's handlers find their serving objects here

    @app.exception_handler(RequestValidationError)
    async def invalid(request: Request, exc: RequestValidationError):
        return JSONResponse(validation_error_body(exc.errors()), status_code=400)

    # vLLM's request models raise its own errors from their validators (not pydantic's), as
    # vLLM's handlers do: answered as vLLM's app answers them.
    for exc_type in (VLLMError, ValueError, TypeError, OverflowError):
        app.add_exception_handler(exc_type, lambda request, exc: _vllm_error_response(exc))

    @app.post("/v1/chat/completions")
    async def chat(body: ChatRequest, request: Request):
        return await _serve(state, body, request, create_chat_completion,
                            state.front_door.check_chat)

    @app.post("/v1/completions")
    async def completions(body: CompletionsRequest, request: Request):
        async def check(b, tally):
            await state.front_door.check_completion(b)

        return await _serve(state, body, request, create_completion, check)

    @app.post("/tokenize")
    async def tokenize_route(body: TokenizeBody, request: Request):
        """A prompt or a chat, checked by the front door as a completion's prompt or a chat
        completion's messages are (a chat's images and videos loaded under the same policy),
        then tokenized (a chat rendered by the engine's chat template)."""
        async def check(b, tally):
            if hasattr(b, "messages"):
                await state.front_door.check_chat(b, tally)
            else:
                await state.front_door.check_completion(b)

        return await _serve(state, body, request, tokenize, check)

    @app.post("/detokenize")
    async def detokenize_route(body: DetokenizeBody, request: Request):
        async def check(b, tally):
            state.front_door.check_detokenize(b)

        return await _serve(state, body, request, detokenize, check)

    async def model_cards(request: Request) -> dict:
        """vLLM's model list, each card with what a client needs to know of a vision model."""
        listing = json.loads((await show_available_models(request)).body)
        for card in listing["data"]:
            card["metadata"] = {"input_modality": "image",
                                "max_request_context_length": cfg.engine.max_model_len}
        return listing

    @app.get("/v1/models")
    async def models(request: Request):
        return JSONResponse(await model_cards(request))

    @app.get("/v1/models/{model:path}")
    async def model(model: str, request: Request):
        if model != state.model:
            return JSONResponse(error_body(404, f"model {model!r} does not exist",
                                           param="model"), status_code=404)
        return JSONResponse((await model_cards(request))["data"][0])

    @app.get("/health")
    async def health():
        return await _health(state)

    @app.get("/metrics")
    async def metrics():
        return await metrics_text(cfg)

    app.add_middleware(OpenAIErrors)  # every error leaves in one shape
    app.add_middleware(  # outermost: keys and body size before anything is parsed
        AccessGate, max_body_bytes=cfg.limits.max_body_bytes, access=cfg.access,
        open_paths=frozenset({"/metrics"} if cfg.access.metrics == "open" else ()))
    return app


async def _serve(state: ApiState, body, request: Request, call, check):
    """Checks, the key's quota, then vLLM's handler, counted in flight until the last byte
    is sent; every request, refused or served, is counted under its key's name.

    Refusals that say "come back later" (draining, overloaded, engine lost) are 503 with
    Retry-After. A stream whose engine fails after it started ends with an OpenAI error event
    and ``[DONE]``: the client always sees an end, never a hang."""
    entry = _LedgerEntry(key_name(request.scope), request.scope["path"], state.quotas)
    try:
        if state.draining:
            raise state.unavailable("the server is shutting down; retry on another "
                                    "instance or after the restart", "draining")
        if state.inflight >= state.capacity:
            raise state.unavailable(
                f"the server is at capacity ({state.capacity} requests running or waiting "
                "on this replica: deployment.max_ongoing_requests + max_queued_requests); "
                "retry later", "overloaded")
        _check_model(state, body)
        state.inflight += 1  # held from here: checks that load media take time
        entry.counted = True
        await check(body, entry.tally)
        if state.quotas.applies_to(entry.key):
            entry.lease = await state.quotas.acquire(
                entry.key, token_reservation(body, state.cfg, entry.tally),
                state.cfg.deployment.retry_after_s)
        state.waiting += 1
        try:
            await state.slots.acquire()
        finally:
            state.waiting -= 1
        entry.slot = True
    except RequestRejected as err:
        entry.finish(err.status, state)
        return rejection_response(err)
    except Exception:  # a fault of ours: the error middleware logs it, the client gets a 500
        entry.finish(500, state)
        raise
    except BaseException:
        entry.finish(499, state)  # cancelled: the client went away
        raise
    streaming = False
    status_code = 500
    try:
        stream_usage = _ask_stream_usage(body)
        try:
            response = await call(body, request)
        except Exception as err:
            refusal = _engine_refusal(state, body, err)
            if isinstance(refusal, RequestRejected):
                raise refusal from None
            response = _vllm_error_response(err)
        if response is None:  # vLLM's handler saw the client disconnect
            status_code = 499
            return Response(status_code=499)
        if isinstance(response, StreamingResponse):
            response.body_iterator = _guarded_stream(state, response.body_iterator, entry,
                                                     stream_usage)
            streaming = True
        else:
            status_code = response.status_code
            if status_code == 200:
                entry.usage = response_usage(response.body)
        return response
    except RequestRejected as err:
        status_code = err.status
        return rejection_response(err)
    finally:
        if not streaming:
            entry.finish(status_code, state)


def _vllm_error_response(err: Exception) -> JSONResponse:
    """What vLLM's own app answers for an exception (a ValueError from a check is a 400, a
    prompt over the context too); the error middleware gives it the API's shape, and a 5xx's
    text never reaches the client."""
    error = create_error_response(err)
    return JSONResponse(error.model_dump(), status_code=error.error.code)


def _engine_refusal(state: ApiState, body, err: Exception) -> RequestRejected | None:
    """The shaped refusal an exception from vLLM's handler becomes, if it is one of ours."""
    if NO_ROOM_FOR_OUTPUT in str(getattr(err, "message", err)):
        # vLLM's words for a prompt of exactly max_model_len tokens: it sets max_tokens to the
        # room left (0) and blames the client's max_tokens.
        return RequestRejected(
            400, "the prompt fills the model's context (engine.max_model_len = "
            f"{state.cfg.engine.max_model_len} tokens): no room is left for output tokens; "
            "shorten the prompt", param="messages" if hasattr(body, "messages") else "prompt",
            reason="context_length")
    if engine_lost(err):
        return state.unavailable("the model replica serving this request failed; retry",
                                 "replica_failed")
    return None


def _ask_stream_usage(body) -> StreamUsage | None:
    """A stream's usage is asked of the engine whether or not the client asked for it (quotas
    and per-key counters need it); the client gets the usage event only if it did."""
    if not getattr(body, "stream", False) or not hasattr(body, "stream_options"):
        return None
    asked = bool(body.stream_options and body.stream_options.include_usage)
    if not asked:
        body.stream_options = StreamOptions(include_usage=True)
    return StreamUsage(keep=asked)


async def _guarded_stream(state: ApiState, chunks, entry: "_LedgerEntry",
                          usage: StreamUsage | None):
    lost = error_body(503, "the model replica serving this stream failed; retry",
                      code="replica_failed")
    try:
        async for chunk in chunks:
            # vLLM ends a stream whose engine died with its own error event (a 500); ours
            # says what happened and that a retry may succeed.
            if isinstance(chunk, str) and chunk.startswith('data: {"error"') and \
                    await _engine_dead(state):
                count_rejection("replica_failed")
                yield f"data: {json.dumps(lost)}\n\ndata: [DONE]\n\n"
                return
            yield usage.feed(chunk) if usage is not None else chunk
    except Exception as err:
        if not engine_lost(err):
            raise
        count_rejection("replica_failed")
        yield f"data: {json.dumps(lost)}\n\ndata: [DONE]\n\n"
    finally:
        entry.usage = usage.usage if usage is not None else None
        entry.finish(200, state)


async def _engine_dead(state: ApiState) -> bool:
    try:
        await asyncio.wait_for(state.server.check_health(), HEALTH_TIMEOUT_S)
        return False
    except Exception:
        return True


def _check_model(state: ApiState, body) -> None:
    model = getattr(body, "model", None)
    if model is not None and model != state.model:
        raise RequestRejected(404, f"model {model!r} does not exist; available: "
                              f"{state.model}", param="model", reason="unknown_model")


async def _health(state: ApiState) -> JSONResponse:
    """200 when this replica's engine answers its health check and every replica Serve knows
    of is healthy (as last seen: the view refreshes in the background), else 503 with an
    OpenAI error body; either way the replicas, their nodes and health."""
    own = None
    try:
        await asyncio.wait_for(state.server.check_health(), HEALTH_TIMEOUT_S)
        failure = None
    except Exception as err:
        own = f"unhealthy: {type(err).__name__}"
        failure = f"this replica's engine is {own}"
    rows, view_failure = state.replicas.latest()
    failure = failure or view_failure
    if state.draining:
        failure = "draining"
    models = {state.model: "healthy" if failure is None else "unhealthy"}
    replicas = [{k: row[k] for k in ("deployment", "replica_id", "state", "node_ip",
                                      "node_id", "health")} for row in rows]
    # This replica's own engine, as just asked: the view may be a refresh behind.
    for row in replicas if own else ():
        if row["replica_id"] == state.replica:
            row["health"] = own
    if failure is None:
        return JSONResponse({"status": "ok", "models": models, "replicas": replicas})
    return JSONResponse(
        {**error_body(503, failure), "models": models, "replicas": replicas},
        status_code=status.HTTP_503_SERVICE_UNAVAILABLE,
        headers={"Retry-After": str(state.cfg.deployment.retry_after_s)},
    )


class _LedgerEntry:
    """One request's key name, media, usage and quota lease, closed exactly once."""

    def __init__(self, key: str, route: str, quotas: Quotas):
        self.key, self.route, self.quotas = key, route, quotas
        self.tally = MediaTally()
        self.lease: int | None = None
        self.usage: tuple[int, int] | None = None
        self.started = time.monotonic()
        self.counted = False  # in the replica's in-flight count
        self.slot = False  # holds one of the replica's engine slots
        self._open = True

    def finish(self, status: int, state: ApiState) -> None:
        if not self._open:
            return
        self._open = False
        if self.counted:
            state.inflight -= 1
        if self.slot:
            state.slots.release()
        STORE.release(self.tally.frame_keys)
        # A request refused after admission (503: engine lost) used nothing: its quota is
        # given back.
        self.quotas.settle(self.lease, sum(self.usage) if self.usage else None,
                           refund=status == 503 and self.usage is None)
        record(self.key, self.route, status, self.usage, self.tally,
               time.monotonic() - self.started)
