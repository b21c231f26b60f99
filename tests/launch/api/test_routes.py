"""The engine replica's request path (``launch.api.routes``) around a stand-in for vLLM's handler:
what is refused before the handler runs (draining, capacity, an unknown model), the slot and
in-flight count each request holds and gives back exactly once, what an exception from the
handler becomes (a dead engine: 503 ``replica_failed``, Retry-After, the quota refunded), the
stream guard (our error event and ``[DONE]`` when the engine dies mid-stream), the usage a
stream is asked for, and ``/health``'s answer. The same paths against a real engine are
test_serve_e2e.py, test_contract_e2e.py and test_scaleout_e2e.py."""

from __future__ import annotations

import asyncio
import json
from types import SimpleNamespace

import pytest
from fastapi.responses import JSONResponse, StreamingResponse

from engine.config import parse_config
from launch.api import routes as api
from launch.api.request_models import ChatRequest
from tests.utils import MODEL


class EngineDeadError(Exception):
    """Named as vLLM's: ``api.engine_lost`` recognises it by name anywhere in the MRO."""


class Engine:
    """The replica's health check: healthy until ``dead``."""

    def __init__(self):
        self.dead = False

    async def check_health(self):
        if self.dead:
            raise EngineDeadError("engine core died")


class Ledger:
    """The quota client's surface: every settle recorded."""

    def __init__(self):
        self.settled: list[tuple] = []

    def applies_to(self, key):
        return True

    async def acquire(self, key, tokens, retry_after):
        return 7

    def settle(self, lease, tokens, refund=False):
        self.settled.append((lease, tokens, refund))


@pytest.fixture
def state():
    cfg = parse_config({"model": {"source": "embedded:qwen2-vl-tiny", "served_name": MODEL},
                        "deployment": {"max_ongoing_requests": 1, "max_queued_requests": 1}})
    st = api.ApiState(cfg, Engine(), "replica-a")
    st.quotas = Ledger()
    return st


def body(**kw) -> ChatRequest:
    return ChatRequest.model_validate({"model": MODEL, "messages": [
        {"role": "user", "content": "hi"}], "max_tokens": 4, **kw})


REQUEST = SimpleNamespace(scope={"path": "/v1/chat/completions"})


async def passes(body, tally):
    return None


def serve(state, call, b=None):
    return asyncio.run(api._serve(state, b or body(), REQUEST, call, passes))


def error_of(response: JSONResponse) -> dict:
    return json.loads(response.body)["error"]


def test_a_served_request_holds_one_slot_and_gives_it_back(state):
    seen = {}

    async def handler(b, request):
        seen["inflight"], seen["free"] = state.inflight, state.slots._value
        return JSONResponse({"usage": {"prompt_tokens": 3, "completion_tokens": 4}})

    out = serve(state, handler)
    assert out.status_code == 200
    assert seen == {"inflight": 1, "free": 0}  # counted and holding the one engine slot
    assert state.inflight == 0 and state.slots._value == 1
    assert state.quotas.settled == [(7, 7, False)]  # the lease settled at the usage, once


@pytest.mark.parametrize("setup, status, code, param", [
    (lambda st: setattr(st, "draining", True), 503, "draining", None),
    (lambda st: setattr(st, "inflight", st.capacity), 503, "overloaded", None),
])
def test_refusals_before_the_handler_are_503_with_retry_after(state, setup, status, code, param):
    setup(state)
    held = state.inflight

    async def handler(b, request):
        raise AssertionError("the handler must not run")

    out = serve(state, handler)
    assert out.status_code == status and out.headers["Retry-After"] == str(
        state.cfg.deployment.retry_after_s)
    err = error_of(out)
    assert (err["code"], err["param"]) == (code, param)
    assert state.inflight == held and state.slots._value == 1


def test_an_unknown_model_is_404_naming_the_served_one(state):
    async def handler(b, request):
        raise AssertionError("the handler must not run")

    out = serve(state, handler, body(model="other"))
    err = error_of(out)
    assert out.status_code == 404 and err["param"] == "model"
    assert "'other' does not exist" in err["message"] and MODEL in err["message"]
    assert state.inflight == 0


def test_a_dead_engine_is_503_replica_failed_and_the_quota_is_refunded(state):
    async def handler(b, request):
        raise EngineDeadError("gone")

    out = serve(state, handler)
    assert out.status_code == 503 and out.headers["Retry-After"]
    assert error_of(out)["code"] == "replica_failed"
    assert state.quotas.settled == [(7, None, True)]
    assert state.inflight == 0 and state.slots._value == 1


def test_a_prompt_that_fills_the_context_is_400_on_messages(state):
    async def handler(b, request):
        raise ValueError(api.NO_ROOM_FOR_OUTPUT)

    out = serve(state, handler)
    err = error_of(out)
    assert out.status_code == 400 and err["param"] == "messages"
    assert f"engine.max_model_len = {state.cfg.engine.max_model_len}" in err["message"]


def test_other_handler_errors_get_vllms_status_in_the_api_shape(state):
    async def handler(b, request):
        raise ValueError("temperature is odd")

    out = serve(state, handler)
    assert out.status_code == 400
    assert set(error_of(out)) == {"message", "type", "param", "code"}


def stream_of(*chunks, fail: Exception | None = None):
    async def gen():
        for c in chunks:
            yield c
        if fail is not None:
            raise fail
    return StreamingResponse(gen(), media_type="text/event-stream")


def drain_stream(response) -> list[str]:
    async def read():
        return [c async for c in response.body_iterator]
    return asyncio.run(read())


def events_in(chunks: list[str]) -> list[str]:
    return [e[6:] for c in chunks for e in c.split("\n\n") if e.startswith("data: ")]


def test_a_stream_whose_engine_dies_ends_with_our_error_event_and_done(state):
    usage = {"prompt_tokens": 3, "completion_tokens": 1}
    vllm_error = 'data: {"error": {"message": "EngineCore died", "code": 500}}\n\n'
    state.server.dead = True  # the health check confirms the engine is gone

    async def handler(b, request):
        return stream_of('data: {"choices": [{"delta": {"content": "a"}}], "usage": '
                         + json.dumps(usage) + '}\n\n', vllm_error)

    out = serve(state, handler, body(stream=True))
    assert state.inflight == 1  # held until the last byte
    events = events_in(drain_stream(out))
    assert events[-1] == "[DONE]"
    assert json.loads(events[-2])["error"]["code"] == "replica_failed"
    assert "EngineCore" not in "".join(events)  # vLLM's 500 text is replaced
    assert state.inflight == 0 and state.slots._value == 1


def test_a_stream_raising_engine_dead_ends_the_same_way(state):
    async def handler(b, request):
        return stream_of('data: {"choices": []}\n\n', fail=EngineDeadError("gone"))

    events = events_in(drain_stream(serve(state, handler, body(stream=True))))
    assert events[-1] == "[DONE]" and json.loads(events[-2])["error"]["code"] == "replica_failed"
    assert state.inflight == 0


def test_a_vllm_error_event_with_a_healthy_engine_passes_through(state):
    vllm_error = 'data: {"error": {"message": "bad grammar", "code": 400}}\n\n'

    async def handler(b, request):
        return stream_of(vllm_error)

    assert drain_stream(serve(state, handler, body(stream=True))) == [vllm_error]


@pytest.mark.parametrize("fields, asked, keep", [
    ({}, None, None),  # not a stream: nothing asked
    ({"stream": True}, True, False),  # asked of the engine, dropped before the client
    ({"stream": True, "stream_options": {"include_usage": True}}, True, True),
])
def test_a_streams_usage_is_always_asked_of_the_engine(fields, asked, keep):
    b = body(**fields)
    usage = api._ask_stream_usage(b)
    if asked is None:
        assert usage is None
        return
    assert b.stream_options.include_usage is asked and usage.keep is keep


def test_health_names_this_replicas_dead_engine_and_says_ok_otherwise(state):
    row = {"deployment": "d", "replica_id": "replica-a", "state": "RUNNING", "node_ip": "n",
           "node_id": "i", "health": "healthy"}
    state.replicas._rows = [row, {**row, "replica_id": "replica-b"}]
    ok = asyncio.run(api._health(state))
    assert ok.status_code == 200 and json.loads(ok.body)["status"] == "ok"
    state.server.dead = True
    bad = asyncio.run(api._health(state))
    out = json.loads(bad.body)
    assert bad.status_code == 503 and bad.headers["Retry-After"]
    assert [r["health"] for r in out["replicas"]] == ["unhealthy: EngineDeadError", "healthy"]
    assert out["models"] == {MODEL: "unhealthy"}
    state.server.dead, state.draining = False, True
    assert json.loads(asyncio.run(api._health(state)).body)["error"]["message"] == "draining"


def test_a_requests_decoded_video_frames_leave_the_store_when_it_ends(state):
    """Frames the front door stored for a request (launch.api.frames) are released once, with
    the request, whether it was served or refused."""
    import numpy as np

    from launch.api.frames import STORE

    async def check(b, tally):
        STORE.put("video-key", np.zeros((2, 28, 28, 3), np.uint8))
        tally.frame_keys.append("video-key")

    async def handler(b, request):
        assert STORE.get("video-key") is not None  # held while vLLM reads it
        raise EngineDeadError("gone")

    out = asyncio.run(api._serve(state, body(), REQUEST, handler, check))
    assert out.status_code == 503 and STORE.get("video-key") is None
