"""The front door: every limit of ``limits:`` enforced before a request reaches an engine.

``check_chat`` walks the request: sampling bounds (n, max_tokens, temperature), per-request
``mm_processor_kwargs`` (may lower the pixel bounds, never raise them), the messages' roles,
shapes and text (``launch.api.messages``), tool definitions and ``tool_choice``
(``launch.api.tools``), media counts, and each content part. Every image and video is loaded here
(``data:`` URL, http(s) under the URL policy, or a file inside ``limits.media_dir``) and checked
(``launch.api.media``). The front door runs in the engine's own process (``launch.api.server``),
so an image is handed over decoded, at its processor's target size, with its content hash as the
engine's cache key: decoded once, hashed once. A video file becomes its sampled frames
(``launch.api.video``), a frame list keyed by its hash likewise: the engine never fetches or
decodes anything unchecked.
Failures raise ``RequestRejected`` with the HTTP status, the field (``param``) and a message
stating the limit and the value.
"""

from __future__ import annotations

import asyncio
from typing import Any

from engine.config import ServingConfig
from engine.vision import TOKEN_PIXELS, VISION_EXTRA_TOKENS, image_tokens, temporal_patches

from . import media, video
from .fetch import load_url
from .frames import STORE
from .messages import MEDIA_PARTS, VOCAB_SIZE, check_messages, check_prompt, check_token_ids
from .rejections import bad_request
from .schemas import GrammarBudget, check_shape, items_of
from .tools import check_tools
from .usage import MediaTally

MM_KWARGS = {"min_pixels", "max_pixels"}


class FrontDoor:
    def __init__(self, cfg: ServingConfig):
        self.cfg = cfg
        self.limits = cfg.limits
        self.mm = cfg.multimodal
        self.video = cfg.video_budget()
        self.vocab_size = _vocab_size(cfg)
        self._grammars: GrammarBudget | None = None

    # ------------------------------------------------------------------ request-level
    def check_sampling(self, body: Any) -> None:
        check_fields(body)
        lim = self.cfg.max_output_tokens()
        n = getattr(body, "n", None) or 1
        if n > self.limits.max_n:
            raise bad_request(f"n is {n}; the limit is {self.limits.max_n}",
                              param="n", reason="n")
        for field in ("max_tokens", "max_completion_tokens"):
            value = getattr(body, field, None)
            if value is not None and value > lim:
                raise bad_request(f"{field} is {value}; the limit is {lim}",
                                  param=field, reason="max_tokens")
            if value is not None and value < 1:
                raise bad_request(f"{field} is {value}; it must be at least 1",
                                  param=field, reason="max_tokens")
        temperature = getattr(body, "temperature", None)
        if temperature is not None and temperature < 0:
            raise bad_request(f"temperature is {temperature}; it must be >= 0",
                              param="temperature", reason="temperature")

    def check_mm_kwargs(self, body: Any) -> None:
        kwargs = getattr(body, "mm_processor_kwargs", None) or {}
        unknown = sorted(set(kwargs) - MM_KWARGS)
        if unknown:
            raise bad_request(f"mm_processor_kwargs may only set {sorted(MM_KWARGS)}; "
                              f"got {unknown}", param="mm_processor_kwargs",
                              reason="mm_kwargs")
        caps = {"min_pixels": self.mm.min_pixels, "max_pixels": self.mm.max_pixels}
        for key, value in kwargs.items():
            if not isinstance(value, int) or value < TOKEN_PIXELS:
                raise bad_request(f"mm_processor_kwargs.{key} must be an integer >= "
                                  f"{TOKEN_PIXELS}",
                                  param=f"mm_processor_kwargs.{key}", reason="mm_kwargs")
            if value > caps[key]:
                raise bad_request(
                    f"mm_processor_kwargs.{key} is {value}; the server cap is {caps[key]} "
                    "(requests may lower it, not raise it)",
                    param=f"mm_processor_kwargs.{key}", reason="mm_kwargs")
        if kwargs.get("min_pixels", 0) > kwargs.get("max_pixels", caps["max_pixels"]):
            raise bad_request("mm_processor_kwargs.min_pixels exceeds max_pixels",
                              param="mm_processor_kwargs", reason="mm_kwargs")
        if getattr(body, "media_io_kwargs", None):
            raise bad_request("media_io_kwargs cannot be set per request",
                              param="media_io_kwargs", reason="mm_kwargs")
        if getattr(body, "chat_template", None) and not self.limits.allow_request_chat_template:
            raise bad_request("a per-request chat_template is not allowed on this server",
                              param="chat_template", reason="chat_template")

    # ------------------------------------------------------------------ chat
    async def check_chat(self, body: Any, tally: MediaTally | None = None) -> None:
        """Validate a ChatCompletionRequest in place (media URLs become data: URLs); each
        image's and video's bytes and tokens are added to ``tally``."""
        tally = tally if tally is not None else MediaTally()
        self.check_sampling(body)
        self.check_mm_kwargs(body)
        parts = check_messages(body.messages)
        await self.check_schemas(body)
        counts = {"image": 0, "video": 0}
        for _, ptype, _ in parts:
            counts[MEDIA_PARTS[ptype]] += 1
        for kind, limit in (("image", self.mm.max_images_per_prompt),
                            ("video", self.mm.max_videos_per_prompt)):
            if counts[kind] > limit:
                raise bad_request(f"{counts[kind]} {kind}s in the request; the limit is "
                                  f"{limit}", param="messages", reason=f"too_many_{kind}s")
        pixels = self.pixel_bounds(body)
        for part, ptype, param in parts:
            holder = part.get(ptype)
            url = holder.get("url") if isinstance(holder, dict) else holder
            if not isinstance(url, str) or not url:
                raise bad_request(f"{ptype}.url is missing", param=param,
                                  reason="bad_url")
            if ptype == "image_url":
                new_part = await asyncio.to_thread(self._image, url, param, pixels, tally)
                part.clear()
                part.update(new_part)
                continue
            new, key = await asyncio.to_thread(self._video, url, param, pixels, tally)
            if isinstance(holder, dict):
                holder["url"] = new
            else:
                part[ptype] = {"url": new}
            part["uuid"] = key

    async def check_schemas(self, body: Any) -> None:
        """Tool definitions, then every schema, regex and grammar of the request under
        ``limits.schemas`` (``launch.api.schemas``): sizes and shapes first, then the CPU it takes
        to build their decoding grammar."""
        items = items_of(body)
        check_shape(items, self.limits.schemas)
        check_tools(body, self.cfg)
        if any(kind != "choice" for kind, _, _ in items):
            if self._grammars is None:  # the worker needs the checkpoint's tokenizer files
                self._grammars = GrammarBudget(self.limits.schemas, self.cfg.model_path(),
                                               self.vocab_size, self.cfg.engine.compact_json)
            await asyncio.to_thread(self._grammars.check, items)

    # ------------------------------------------------------------------ media loading
    def _image(self, url: str, param: str, pixels: tuple[int, int] | None = None,
               tally: MediaTally | None = None) -> dict[str, Any]:
        """The content part the engine gets for an image: the image decoded, at its target
        size, with its content hash as the engine's cache key (``media.decode_image``)."""
        pixels = pixels or (self.mm.min_pixels, self.mm.max_pixels)
        mime, data = load_url(url, self.limits, param, self.limits.max_image_bytes, "image")
        if mime is not None and not mime.startswith("image/"):
            raise bad_request(f"data URL has mime type {mime!r}; expected image/*",
                              param=param, reason="bad_image")
        decoded = media.decode_image(data, self.limits, param, pixels)
        if tally is not None:
            tally.add_image(data, decoded.size, pixels)
        return {"type": "image_pil", "image_pil": decoded.image, "uuid": decoded.uuid}

    def _video(self, url: str, param: str, pixels: tuple[int, int],
               tally: MediaTally) -> tuple[str, str]:
        """The URL the engine gets for a video and the video's cache key. A JPEG frame list
        is checked and passed on (the engine decodes each frame once); a video file's sampled
        frames are handed over decoded (``launch.api.frames``)."""
        if url.startswith("data:video/jpeg;base64,"):
            _, payload = media.decode_data_url(url, param)
            size = media.check_frames(payload, self.limits, self.video.max_frames, param)
            frames = payload.count(",") + 1
            per_pair = image_tokens(size[1], size[0], *pixels)["image_tokens"]
            tally.add_video(len(payload) * 3 // 4, temporal_patches(frames) * per_pair
                            + VISION_EXTRA_TOKENS)
            return url, media.content_key(url.encode(), pixels)
        mime, data = load_url(url, self.limits, param, self.limits.max_video_bytes, "video")
        if mime is not None and not mime.startswith("video/"):
            raise bad_request(f"data URL has mime type {mime!r}; expected video/*",
                              param=param, reason="bad_video")
        frames, p = video.sample(data, self.limits, self.video, min_pixels=pixels[0],
                                 max_pixels=pixels[1], param=param)
        tally.add_video(len(data), p.tokens + VISION_EXTRA_TOKENS)
        key = media.content_key(data, pixels)
        tally.frame_keys.append(key)
        return STORE.put(key, frames), key

    def pixel_bounds(self, body: Any) -> tuple[int, int]:
        """(min_pixels, max_pixels) in force for a request: the config's, or the lower ones its
        ``mm_processor_kwargs`` set (``check_mm_kwargs`` has checked them)."""
        kwargs = getattr(body, "mm_processor_kwargs", None) or {}
        return (kwargs.get("min_pixels", self.mm.min_pixels),
                kwargs.get("max_pixels", self.mm.max_pixels))

    # ------------------------------------------------------------------ completions
    async def check_completion(self, body: Any) -> None:
        self.check_sampling(body)
        check_prompt(getattr(body, "prompt", None), vocab_size=self.vocab_size)
        await self.check_schemas(body)

    def check_detokenize(self, body: Any) -> None:
        check_token_ids(body.tokens, "tokens", vocab_size=self.vocab_size)


# OpenAI request fields that vLLM's request models do not have and the stack accepts without
# acting on them, each because doing nothing is what the field asks of a server like this one.
# Any other field a request model does not have is refused (``check_fields``): vLLM would drop
# it silently, and a client asking for something (``best_of``, ``functions``, ``audio``) would
# believe it got it. docs/api.md lists these with the same reasons.
IGNORED_FIELDS = {
    "store": "nothing is stored: there are no stored completions to keep or to skip",
    "metadata": "tags for stored completions; nothing is stored",
    "service_tier": "one tier: every request is served alike",
    "safety_identifier": "an end-user id for OpenAI's abuse checks; none run here",
    "prompt_cache_key": "a cache-routing hint; vLLM's prefix cache needs none",
}


def check_fields(body: Any) -> None:
    """A field the request model does not have is a 400 naming it, unless ignoring it is
    what it asks (``IGNORED_FIELDS``)."""
    for field in getattr(body, "model_extra", None) or {}:
        if field not in IGNORED_FIELDS:
            shown = field if len(field) <= 60 else f"{field[:60]}..."
            raise bad_request(f"{shown!r} is not supported by this server (a field it does not "
                              "act on is refused rather than ignored)", param=shown,
                              reason="unsupported_field", code="unsupported_field")


def _vocab_size(cfg: ServingConfig) -> int:
    """The served checkpoint's embedding rows; the smallest Qwen2-VL's where it cannot be read
    (a hub id not downloaded here), which refuses no id any release accepts."""
    from engine.architecture import PlanError, architecture_for

    try:
        return architecture_for(cfg)[0].vocab_size
    except (PlanError, OSError, ValueError):
        return VOCAB_SIZE
