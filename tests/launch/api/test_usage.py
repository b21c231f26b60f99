"""Per-request accounting without an engine: the prompt's upper bound against the real chat
template and tokenizer, the stream's usage event, and the key ring's names."""

from __future__ import annotations

import json
from types import SimpleNamespace

import pytest

from engine.config import TOOL_USE_TEMPLATE, AccessSettings, load_config
from launch.api.access import KeyRing
from launch.api.usage import MediaTally, StreamUsage, prompt_bound, token_reservation
from tests.utils import CONFIGS

TOOLS = [{"type": "function", "function": {
    "name": "lookup", "description": "Find a record by its id and return every field of it.",
    "parameters": {"type": "object", "properties": {"id": {"type": "string"},
                                                    "fields": {"type": "array"}}}}}]
CHATS = [
    [{"role": "user", "content": "hi"}],
    [{"role": "system", "content": "Answer in French, briefly."},
     {"role": "user", "content": "Ünïcödé and 漢字 and emoji 🎉🎉🎉 " * 20},
     {"role": "assistant", "content": "D'accord."},
     {"role": "user", "content": [{"type": "text", "text": "more"}, {"type": "text",
                                                                    "text": "parts"}]}],
    [{"role": "user", "content": "x" * 3000}],
    [{"role": "user", "content": "\n\n\t  " * 500}],
]


def prompt_tokens(tokenizer, messages, tools=None) -> int:
    return len(tokenizer.apply_chat_template(messages, tools=tools, tokenize=True,
                                             add_generation_prompt=True,
                                             chat_template=TOOL_USE_TEMPLATE.read_text()))


@pytest.mark.parametrize("messages", CHATS)
@pytest.mark.parametrize("tools", [None, TOOLS])
def test_the_prompt_bound_is_never_below_the_rendered_prompt(tokenizer, messages, tools):
    body = SimpleNamespace(messages=messages, tools=tools)
    assert prompt_bound(body, MediaTally()) >= prompt_tokens(tokenizer, messages, tools)


def test_the_bound_counts_media_by_the_tally():
    body = SimpleNamespace(messages=[{"role": "user", "content": [
        {"type": "image_url", "image_url": {"url": "data:image/png;base64," + "A" * 10_000}},
        {"type": "text", "text": "?"}]}], tools=None)
    plain = prompt_bound(body, MediaTally())
    assert plain < 100  # the data URL itself is not text
    assert prompt_bound(body, MediaTally(images=1, image_tokens=258)) == plain + 258


def test_reservation_is_prompt_plus_output_times_n():
    cfg = load_config(CONFIGS / "default.yaml")
    body = SimpleNamespace(messages=[{"role": "user", "content": "hi"}], tools=None,
                           max_tokens=100, max_completion_tokens=None, n=3)
    bound = prompt_bound(body, MediaTally())
    assert token_reservation(body, cfg, MediaTally()) == bound + 300
    body.max_tokens = None  # no max_tokens: the most the server lets a request generate
    assert token_reservation(body, cfg, MediaTally()) == \
        bound + 3 * cfg.max_output_tokens()
    prompts = SimpleNamespace(prompt=["ab", "cd"], max_tokens=10, n=1)
    assert token_reservation(prompts, cfg, MediaTally()) == 2 * (3 + 10)
    ids = SimpleNamespace(prompt=[1, 2, 3], max_tokens=10, n=1)
    assert token_reservation(ids, cfg, MediaTally()) == 13
    for generates_nothing in (SimpleNamespace(tokens=[1, 2]), SimpleNamespace(prompt="ab"),
                              SimpleNamespace(messages=[{"role": "user", "content": "x"}])):
        assert token_reservation(generates_nothing, cfg, MediaTally()) == 0  # /(de)tokenize


def event(payload) -> str:
    return f"data: {json.dumps(payload)}\n\n"


USAGE = {"id": "c", "choices": [], "usage": {"prompt_tokens": 7, "completion_tokens": 3,
                                              "total_tokens": 10}}
DELTA = {"id": "c", "choices": [{"index": 0, "delta": {"content": "hi \"usage\""}}]}


@pytest.mark.parametrize("kind", [str, bytes])
def test_a_stream_usage_event_is_read_and_dropped_unless_asked_for(kind):
    chunks = [event(DELTA), event(DELTA) + event(USAGE) + "data: [DONE]\n\n"]
    chunks = [c.encode() if kind is bytes else c for c in chunks]
    dropped = StreamUsage(keep=False)
    out = "".join(c.decode() if kind is bytes else c for c in map(dropped.feed, chunks))
    assert dropped.usage == (7, 3)
    assert out == event(DELTA) * 2 + "data: [DONE]\n\n"
    kept = StreamUsage(keep=True)
    out = "".join(c.decode() if kind is bytes else c for c in map(kept.feed, chunks))
    assert kept.usage == (7, 3) and out == "".join(
        c.decode() if kind is bytes else c for c in chunks)


def test_continuous_usage_on_every_chunk_is_kept_and_the_last_wins():
    with_usage = {**DELTA, "usage": {"prompt_tokens": 7, "completion_tokens": 1}}
    s = StreamUsage(keep=False)
    assert s.feed(event(with_usage)) == event(with_usage)  # a delta: never dropped
    s.feed(event(USAGE))
    assert s.usage == (7, 3)


def test_key_ring_names_each_key_and_keeps_unnamed_ones_as_default(tmp_path, monkeypatch):
    monkeypatch.setenv("SHARED_KEYS", "k-shared-1,k-shared-2")
    monkeypatch.setenv("TEAM_A_KEY", "k-team-a")
    (tmp_path / "b").write_text("k-team-b-old\nk-team-b-new\n")
    ring = KeyRing(AccessSettings(api_keys_env="SHARED_KEYS", keys={
        "team-a": {"env": "TEAM_A_KEY"}, "team-b": {"file": str(tmp_path / "b")}}))
    keys = ring.keys()
    assert [ring.name_of(t, keys) for t in ("k-shared-2", "k-team-a", "k-team-b-new",
                                            "k-team-b-old", "nope", "k-team")] == \
        ["default", "team-a", "team-b", "team-b", None, None]


def test_key_ring_is_open_only_when_no_source_is_configured(tmp_path, monkeypatch):
    monkeypatch.delenv("QWEN_VL_API_KEYS", raising=False)
    monkeypatch.delenv("TEAM_A_KEY", raising=False)
    assert KeyRing(AccessSettings()).keys() is None
    # a named key whose file is missing: configured, nothing valid (closed, not open)
    ring = KeyRing(AccessSettings(keys={"a": {"file": str(tmp_path / "missing")}}))
    assert ring.keys() == {}
