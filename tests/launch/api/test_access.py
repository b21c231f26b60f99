"""API key sources and the media_dir rule, without an engine."""

import pytest

from engine.config import AccessSettings, parse_config
from launch.api.access import KeySource, key_matches
from launch.api.front_door import FrontDoor
from launch.api.rejections import RequestRejected
from tests import utils


def test_keys_from_env(monkeypatch):
    monkeypatch.setenv("MY_KEYS", " k1, k2 ,")
    assert KeySource("MY_KEYS", None).keys() == ["k1", "k2"]


def test_no_keys_configured_means_open(monkeypatch):
    monkeypatch.delenv("MY_KEYS", raising=False)
    assert KeySource("MY_KEYS", None).keys() is None


def test_missing_key_file_fails_closed(tmp_path):
    assert KeySource(None, str(tmp_path / "nope")).keys() == []


def test_key_file_reread_on_change(tmp_path):
    f = tmp_path / "keys"
    f.write_text("a\n")
    src = KeySource(None, str(f))
    assert src.keys() == ["a"]
    import os
    import time

    f.write_text("a\nb\n")
    os.utime(f, (time.time() + 5, time.time() + 5))
    assert src.keys() == ["a", "b"]


def test_key_matches_constant_time_api():
    assert key_matches("k2", ["k1", "k2"]) and not key_matches("k3", ["k1", "k2"])
    assert not key_matches("", ["k1"])


def door(media_dir=None):
    return FrontDoor(parse_config(utils.config_with(limits={"media_dir": media_dir})))


def test_local_files_refused_without_media_dir(tmp_path):
    (tmp_path / "a.png").write_bytes(utils.png(40, 40))
    with pytest.raises(RequestRejected, match="no media_dir is configured"):
        door()._image(str(tmp_path / "a.png"), "p")


def test_local_files_only_inside_media_dir(tmp_path):
    media = tmp_path / "media"
    media.mkdir()
    (media / "a.png").write_bytes(utils.png(40, 40))
    (tmp_path / "secret.png").write_bytes(utils.png(40, 40))
    d = door(str(media))
    part = d._image(f"file://{media}/a.png", "p")
    assert part["type"] == "image_pil" and part["image_pil"].size == (56, 56)  # 40x40 -> 56x56
    for bad in (str(tmp_path / "secret.png"), f"{media}/../secret.png", f"file://{media}/../secret.png"):
        with pytest.raises(RequestRejected, match="outside the configured media_dir"):
            d._image(bad, "p")
    (media / "link.png").symlink_to(tmp_path / "secret.png")
    with pytest.raises(RequestRejected, match="outside the configured media_dir"):
        d._image(str(media / "link.png"), "p")


# The body cap, driven as plain ASGI: what the gate reads before it answers 413.
def run_gate(chunks, *, cap, content_length=None):
    import asyncio

    from launch.api.access import AccessGate

    pending = list(chunks)
    reads, sent, app_saw = [], [], []

    async def receive():
        if not pending:
            return {"type": "http.disconnect"}
        body = pending.pop(0)
        reads.append(len(body))
        return {"type": "http.request", "body": body, "more_body": bool(pending)}

    async def send(message):
        sent.append(message)

    async def app(scope, receive, send):
        while True:
            message = await receive()
            app_saw.append(message["type"])
            if message["type"] != "http.request" or not message.get("more_body"):
                break
        await send({"type": "http.response.start", "status": 200, "headers": []})
        await send({"type": "http.response.body", "body": b"{}"})

    headers = [(b"content-type", b"application/json")]
    if content_length is not None:
        headers.append((b"content-length", str(content_length).encode()))
    scope = {"type": "http", "method": "POST", "path": "/v1/chat/completions", "headers": headers}
    gate = AccessGate(app, max_body_bytes=cap, access=AccessSettings(api_keys_env=None))
    asyncio.run(gate(scope, receive, send))
    return reads, sent, app_saw, pending


def test_declared_oversize_body_is_drained_before_413():
    chunks = [b"x" * 1000] * 5
    reads, sent, app_saw, left = run_gate(chunks, cap=2048, content_length=5000)
    assert sent[0]["status"] == 413 and app_saw == []
    assert left == [] and sum(reads) == 5000  # all read, so the client can read its 413
    assert b"the limit is 2048" in sent[1]["body"]


def test_streamed_oversize_body_is_drained_and_the_app_sees_a_disconnect():
    chunks = [b"x" * 1000] * 5
    reads, sent, app_saw, left = run_gate(chunks, cap=2048)
    assert [m["status"] for m in sent if "status" in m] == [413]  # the app's 200 never leaves
    assert app_saw[-1] == "http.disconnect" and left == []


def test_body_far_over_the_cap_is_not_read():
    from launch.api.access import DRAIN_FACTOR

    chunks = [b"x" * 1000] * 50
    reads, sent, _, left = run_gate(chunks, cap=1024, content_length=50_000)
    assert 50_000 > DRAIN_FACTOR * 1024 and reads == [] and sent[0]["status"] == 413
    reads, sent, _, left = run_gate(chunks, cap=1024)  # no length: stops after the bound
    assert sent[0]["status"] == 413 and sum(reads) <= DRAIN_FACTOR * 1024 + 1000 and left


def test_key_file_rewrites_are_seen_at_once(tmp_path):
    """Two rewrites within one second, the same size: both seen (no cache on whole seconds)."""
    from launch.api.access import KeySource

    f = tmp_path / "keys"
    f.write_text("a" * 20 + "\n")
    src = KeySource(None, str(f))
    assert src.keys() == ["a" * 20]
    f.write_text("b" * 20 + "\n")
    assert src.keys() == ["b" * 20]
    replacement = tmp_path / "keys.new"  # a new file moved into place (a Secret update)
    replacement.write_text("c" * 20 + "\n")
    replacement.replace(f)
    assert src.keys() == ["c" * 20]
