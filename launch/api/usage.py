"""Who used what: per-key-name counters, the access log line, and a request's token reservation.

Counters (Ray's metrics agent exports them with a ``ray_`` prefix and ``_total`` suffix), each
labelled by the key's *name* (``access.keys``; ``default`` for the unnamed keys, ``anonymous``
on an open API), never by the key:
``qwen_vl_key_requests{key, code}``,
``qwen_vl_key_tokens{key, kind=prompt|completion|image|video}``,
``qwen_vl_key_media{key, kind=image|video}`` (items) and ``qwen_vl_key_media_bytes{key, kind}``
(encoded bytes received); gauges per replica: ``qwen_vl_draining`` (1 while the drain
flag is up) and ``qwen_vl_requests_in_flight``. Image and video tokens are the front
door's count (Qwen2-VL's resize rules); prompt and completion tokens are the engine's
``usage``.
"""

from __future__ import annotations

import json
import logging
from dataclasses import dataclass, field
from typing import Any

from engine.vision import image_tokens
from engine.config import ServingConfig

from .metric_records import inc_counter

log = logging.getLogger("ray.serve")

# The chat template's fixed text (default system prompt, turn markers) and each message's
# role markers, in tokens, with room to spare: the reservation is an upper bound.
TEMPLATE_TOKENS = 64
MESSAGE_TOKENS = 8
TOOLS_TEMPLATE_TOKENS = 256  # the tool-use instructions the template adds when tools are sent


@dataclass
class MediaTally:
    """What the front door saw in one request's media."""

    images: int = 0
    image_tokens: int = 0
    image_bytes: int = 0
    videos: int = 0
    video_tokens: int = 0
    video_bytes: int = 0
    # Keys of the decoded video frames this request holds in ``launch.api.frames.STORE``.
    frame_keys: list[str] = field(default_factory=list)

    def add_image(self, data: bytes, size: tuple[int, int], pixels: tuple[int, int]) -> None:
        self.images += 1
        self.image_bytes += len(data)
        self.image_tokens += image_tokens(size[1], size[0], *pixels)["prompt_tokens"]

    def add_video(self, nbytes: int, tokens: int) -> None:
        self.videos += 1
        self.video_bytes += nbytes
        self.video_tokens += tokens


def _text_bytes(value: Any) -> int:
    """UTF-8 bytes of a message's text (every token of Qwen2's byte-level BPE is at least one
    byte, so bytes bound tokens); media parts are counted by the tally instead."""
    if isinstance(value, str):
        return len(value.encode())
    if isinstance(value, list):
        total = 0
        for part in value:
            if isinstance(part, dict) and part.get("type") in (
                    "image_url", "video_url", "input_image"):
                continue
            total += _text_bytes(part.get("text") if isinstance(part, dict) and "text" in part
                                 else part)
        return total
    if value is None:
        return 0
    return len(json.dumps(value, default=str).encode())


def prompt_bound(body: Any, tally: MediaTally) -> int:
    """An upper bound of a request's prompt tokens, known before the engine tokenizes it."""
    if hasattr(body, "messages"):
        bound = TEMPLATE_TOKENS + tally.image_tokens + tally.video_tokens
        for message in body.messages:
            bound += MESSAGE_TOKENS + sum(_text_bytes(v) for k, v in dict(message).items()
                                          if k != "role")
        if getattr(body, "tools", None):
            bound += TOOLS_TEMPLATE_TOKENS + _text_bytes([t.model_dump() if hasattr(
                t, "model_dump") else t for t in body.tools])
        return bound
    return sum(len(p) if isinstance(p, list) else _text_bytes(p) + 1
               for p in _prompts(getattr(body, "prompt", None)))


def _prompts(prompt: Any) -> list:
    """A completion's prompts: a string, token ids, or a batch of either."""
    if isinstance(prompt, list) and prompt and not isinstance(prompt[0], int):
        return prompt
    return [prompt]


def token_reservation(body: Any, cfg: ServingConfig, tally: MediaTally) -> int:
    """Tokens a request may use: its prompts' bound and n outputs per prompt, each within the
    context. 0 for a request that generates nothing (/tokenize, /detokenize): it counts
    toward requests and concurrency only."""
    if not hasattr(body, "max_tokens"):
        return 0
    ctx = cfg.engine.max_model_len
    prompts = 1 if hasattr(body, "messages") else len(_prompts(body.prompt))
    out = getattr(body, "max_completion_tokens", None) or getattr(body, "max_tokens", None) \
        or cfg.max_output_tokens()
    return min(prompt_bound(body, tally), prompts * ctx) + \
        prompts * (getattr(body, "n", None) or 1) * min(out, ctx)


def usage_of(payload: Any) -> tuple[int, int] | None:
    """(prompt, completion) tokens from a response's or a stream event's ``usage``."""
    usage = payload.get("usage") if isinstance(payload, dict) else None
    if not isinstance(usage, dict):
        return None
    return int(usage.get("prompt_tokens") or 0), int(usage.get("completion_tokens") or 0)


def response_usage(body: bytes) -> tuple[int, int] | None:
    try:
        return usage_of(json.loads(body))
    except (ValueError, TypeError):
        return None


class StreamUsage:
    """Reads the usage event of an SSE stream whose usage the server asked for; drops that event
    when the client did not ask for it (``keep=False``), so the stream is what it asked for."""

    def __init__(self, keep: bool):
        self.keep = keep
        self.usage: tuple[int, int] | None = None

    def feed(self, chunk: str | bytes) -> str | bytes:
        text = chunk.decode() if isinstance(chunk, bytes) else chunk
        if '"usage"' not in text:
            return chunk
        kept = []
        for event in text.split("\n\n"):
            if event.startswith("data: {") and '"usage"' in event:
                try:
                    payload = json.loads(event[6:])
                except ValueError:
                    payload = None
                found = usage_of(payload)
                if found is not None:
                    self.usage = found
                    if not self.keep and payload.get("choices") == []:
                        continue
            kept.append(event)
        out = "\n\n".join(kept)
        return out.encode() if isinstance(chunk, bytes) else out


def record(key: str, route: str, status: int, usage: tuple[int, int] | None,
           tally: MediaTally, seconds: float) -> None:
    """Count one finished request for key name ``key`` and write its access-log line."""
    inc_counter("qwen_vl_requests", "API requests by route and HTTP status (every request the "
                "chat, completion and tokenizer routes answered).",
                {"route": route, "code": str(status)})
    inc_counter("qwen_vl_key_requests", "API requests by key name and HTTP status.",
                {"key": key, "code": str(status)})
    prompt, completion = usage or (0, 0)
    for kind, value in (("prompt", prompt), ("completion", completion),
                        ("image", tally.image_tokens), ("video", tally.video_tokens)):
        inc_counter("qwen_vl_key_tokens", "Tokens by key name and kind (prompt and completion "
                    "from the engine's usage; image and video as the front door counts them).",
                    {"key": key, "kind": kind}, value)
    for kind, items, nbytes in (("image", tally.images, tally.image_bytes),
                                ("video", tally.videos, tally.video_bytes)):
        inc_counter("qwen_vl_key_media", "Images and videos by key name.",
                    {"key": key, "kind": kind}, items)
        inc_counter("qwen_vl_key_media_bytes", "Encoded image and video bytes received, by key "
                    "name.", {"key": key, "kind": kind}, nbytes)
    log.info("access key=%s route=%s status=%d prompt_tokens=%s completion_tokens=%s "
             "images=%d videos=%d duration_ms=%.0f", key, route, status,
             prompt if usage else "-", completion if usage else "-", tally.images,
             tally.videos, seconds * 1000)
