"""The front door's request-level checks (``launch.api.front_door.FrontDoor``), in process on
vLLM's own request models: sampling bounds, per-request processor kwargs, fields the server
would not act on, the pixel bounds a request gets, and the order of the chat checks (nothing
is fetched or decoded for a request its cheap checks refuse). The live contract, with every
limit just under and over, is test_contract_e2e.py."""

from __future__ import annotations

import asyncio

import pytest

from engine.config import parse_config
from launch.api.front_door import IGNORED_FIELDS, FrontDoor, check_fields
from launch.api.request_models import ChatRequest, CompletionsRequest
from tests.utils import MODEL, image_data_part, png, rejected_by


@pytest.fixture(scope="module")
def door() -> FrontDoor:
    return FrontDoor(parse_config({
        "model": {"source": "embedded:qwen2-vl-tiny", "served_name": MODEL},
        "limits": {"max_n": 3, "max_tokens": 50},
        "multimodal": {"min_pixels": 3136, "max_pixels": 200704}}))


def chat(**kw) -> ChatRequest:
    return ChatRequest.model_validate({"model": MODEL, "messages": [
        {"role": "user", "content": "hi"}], **kw})


@pytest.mark.parametrize("field, value, param, match", [
    ("n", 4, "n", "n is 4; the limit is 3"),
    ("max_tokens", 51, "max_tokens", "max_tokens is 51; the limit is 50"),
    ("max_completion_tokens", 51, "max_completion_tokens", "the limit is 50"),
    ("max_tokens", 0, "max_tokens", "it must be at least 1"),
    ("temperature", -0.5, "temperature", "temperature is -0.5; it must be >= 0"),
])
def test_sampling_bounds_name_the_field_the_limit_and_the_value(door, field, value, param,
                                                                match):
    door.check_sampling(chat(**{field: {"n": 3, "max_tokens": 50, "max_completion_tokens": 50,
                                        "temperature": 0}[field]}))
    rejected_by(lambda: door.check_sampling(chat(**{field: value})), param, match)


@pytest.mark.parametrize("kwargs, param, match", [
    ({"max_pixels": 200705}, "mm_processor_kwargs.max_pixels", "the server cap is 200704"),
    ({"min_pixels": 783}, "mm_processor_kwargs.min_pixels", "an integer >= 784"),
    ({"do_resize": False}, "mm_processor_kwargs", r"may only set \['max_pixels', 'min_pixels'\]"),
    ({"min_pixels": 3136, "max_pixels": 1000}, "mm_processor_kwargs",
     "min_pixels exceeds max_pixels"),
])
def test_processor_kwargs_may_only_lower_the_pixel_bounds(door, kwargs, param, match):
    rejected_by(lambda: door.check_mm_kwargs(chat(mm_processor_kwargs=kwargs)), param, match)


def test_a_request_gets_the_lower_pixel_bounds_it_asks_for(door):
    assert door.pixel_bounds(chat()) == (3136, 200704)
    lowered = chat(mm_processor_kwargs={"max_pixels": 50176})
    door.check_mm_kwargs(lowered)
    assert door.pixel_bounds(lowered) == (3136, 50176)


def test_unknown_fields_are_refused_and_the_documented_ones_ignored():
    for field in IGNORED_FIELDS:
        check_fields(chat(**{field: "x"}))
    err = rejected_by(lambda: check_fields(chat(best_of=2)), "best_of", "not supported")
    assert err.code == "unsupported_field"


def test_cheap_checks_refuse_before_any_image_is_decoded(door, monkeypatch):
    """A request over max_tokens with an image is refused before the image is loaded."""
    loaded = []
    monkeypatch.setattr(door, "_image", lambda *a, **k: loaded.append(a) or {})
    body = ChatRequest.model_validate({"model": MODEL, "max_tokens": 51, "messages": [
        {"role": "user", "content": [image_data_part(png(64, 64)),
                                     {"type": "text", "text": "hi"}]}]})
    rejected_by(lambda: asyncio.run(door.check_chat(body)), "max_tokens", "the limit is 50")
    assert loaded == []


def test_an_accepted_image_reaches_the_engine_decoded_with_its_content_key(door):
    body = ChatRequest.model_validate({"model": MODEL, "max_tokens": 5, "messages": [
        {"role": "user", "content": [image_data_part(png(64, 64)),
                                     {"type": "text", "text": "hi"}]}]})
    asyncio.run(door.check_chat(body))
    part = body.messages[0]["content"][0]
    assert part["type"] == "image_pil" and part["image_pil"].size[0] % 28 == 0
    assert isinstance(part["uuid"], str) and len(part["uuid"]) >= 32


def test_completion_prompts_are_checked(door):
    asyncio.run(door.check_completion(CompletionsRequest.model_validate(
        {"model": MODEL, "prompt": "hello", "max_tokens": 5})))
    rejected_by(lambda: asyncio.run(door.check_completion(CompletionsRequest.model_validate(
        {"model": MODEL, "prompt": "hello", "max_tokens": 51}))), "max_tokens",
        "the limit is 50")
