"""What the load tests send: exact-length token prompts, text chats, random-pixel images and
videos (frame lists of random-pixel JPEGs).

Every request is built from ``(workload, index)`` with its own random stream, so prompts differ
from request to request (no prefix or multimodal cache can help) and a run is reproducible. With
``image_repeat_fraction``, that share of the image requests sends again the images of an earlier
request (one of the ``repeat_window`` before it), with a question of its own; with
``session_turns``, requests come as multi-turn chats about one image, each turn carrying the
conversation so far: the traffic that vLLM's multimodal and prefix caches, and the
image-affinity router, are for.
"""

from __future__ import annotations

import base64
import functools
import io
import random
from typing import Literal

from pydantic import BaseModel, ConfigDict, Field

# Ordinary BPE ids of the Qwen2 tokenizer (special and vision tokens start at 151643).
TOKEN_ID_RANGE = (1000, 150000)
WORDS = ("time year people way day man thing woman life child world school state family student "
         "group country problem hand part place case week company system program question work "
         "government number night point home water room mother area money story fact month lot "
         "right study book eye job word business issue side kind head house service friend father "
         "power hour game line end member law car city community name president team minute idea "
         "kid body information back parent face others level office door health person art war "
         "history party result change morning reason research girl guy moment air teacher force").split()


class Workload(BaseModel):
    """One kind of request. ``completions`` sends exactly ``input_tokens`` token ids;
    ``chat`` sends about ``input_tokens`` words of text and, for ``image_fraction`` of the
    requests, ``images_per_request`` random-pixel JPEGs of ``image_size``; for
    ``video_fraction`` of them, a video of ``video_frames`` such frames of ``video_size``."""

    model_config = ConfigDict(extra="forbid")

    endpoint: Literal["completions", "chat"] = "completions"
    input_tokens: int = Field(64, ge=1)
    output_tokens: int = Field(64, ge=1)
    image_fraction: float = Field(0.0, ge=0.0, le=1.0)
    images_per_request: int = Field(1, ge=1)
    image_size: tuple[int, int] = (448, 448)
    video_fraction: float = Field(0.0, ge=0.0, le=1.0)
    video_frames: int = Field(8, ge=2)
    video_size: tuple[int, int] = (224, 224)
    image_repeat_fraction: float = Field(0.0, ge=0.0, le=1.0)
    repeat_window: int = Field(32, ge=1)
    session_turns: int = Field(1, ge=1)
    ignore_eos: bool = True
    seed: int = 0

    def describe(self) -> str:
        if self.endpoint == "completions":
            return f"{self.input_tokens} prompt tokens -> {self.output_tokens} tokens"
        img = (f", {self.image_fraction:.0%} with {self.images_per_request}x"
               f"{self.image_size[0]}x{self.image_size[1]} image(s)") if self.image_fraction else ""
        if self.image_fraction and self.image_repeat_fraction:
            img += f" ({self.image_repeat_fraction:.0%} of them sent before)"
        if self.video_fraction:
            img += (f", {self.video_fraction:.0%} with a {self.video_frames}-frame "
                    f"{self.video_size[0]}x{self.video_size[1]} video")
        if self.session_turns > 1:
            img += f", in {self.session_turns}-turn sessions about one image"
        return f"chat ~{self.input_tokens} words{img} -> {self.output_tokens} tokens"


def random_jpeg(width: int, height: int, rng: random.Random) -> bytes:
    import numpy as np
    from PIL import Image

    pixels = np.random.default_rng(rng.getrandbits(32)).integers(
        0, 256, (height, width, 3), dtype=np.uint8)
    out = io.BytesIO()
    Image.fromarray(pixels).save(out, format="JPEG", quality=90)
    return out.getvalue()


def build_request(w: Workload, model: str, index: int) -> tuple[str, dict, str, int | None]:
    """(path, body, kind, expected prompt tokens) of request ``index`` of the workload."""
    rng = random.Random(f"{w.seed}:{index}")
    common = {"model": model, "max_tokens": w.output_tokens, "temperature": 0.0,
              "ignore_eos": w.ignore_eos}
    if w.endpoint == "completions":
        ids = [rng.randrange(*TOKEN_ID_RANGE) for _ in range(w.input_tokens)]
        return "/v1/completions", {**common, "prompt": ids}, "text", w.input_tokens
    if w.session_turns > 1:
        return "/v1/chat/completions", {**common, "messages": session_turn(w, index)}, \
            "image", None
    text = " ".join(rng.choice(WORDS) for _ in range(w.input_tokens))
    content: list[dict] = []
    kind = "text"
    if rng.random() < w.image_fraction:
        kind = "image"
        for url in image_urls(w.seed, w.image_size, w.images_per_request, image_source(w, index)):
            content.append({"type": "image_url", "image_url": {"url": url}})
    if w.video_fraction and rng.random() < w.video_fraction:
        kind = "video"
        content.append({"type": "video_url", "video_url": {"url": video_url(w, rng)}})
    content.append({"type": "text", "text": text})
    return ("/v1/chat/completions",
            {**common, "messages": [{"role": "user", "content": content}]}, kind, None)


def session_turn(w: Workload, index: int) -> list[dict]:
    """The messages of turn ``index % session_turns`` of session ``index // session_turns``: the
    session's first question carries its images (a preceding session's, for a repeat), each
    earlier turn is its question and a stand-in answer of ``output_tokens`` words, then this
    turn's question. Sessions always carry images."""
    session, turn = divmod(index, w.session_turns)
    messages: list[dict] = []
    for k in range(turn + 1):
        rng = random.Random(f"{w.seed}:{session}:turn{k}")
        content: list[dict] = [{"type": "text", "text": " ".join(
            rng.choice(WORDS) for _ in range(w.input_tokens))}]
        if k == 0:
            content[:0] = [{"type": "image_url", "image_url": {"url": url}} for url in image_urls(
                w.seed, w.image_size, w.images_per_request, image_source(w, session))]
        messages.append({"role": "user", "content": content})
        if k < turn:
            messages.append({"role": "assistant", "content": " ".join(
                rng.choice(WORDS) for _ in range(w.output_tokens))})
    return messages


def image_source(w: Workload, index: int) -> int:
    """The request whose images request ``index`` sends: itself, or for a repeat, the source
    of a request up to ``repeat_window`` before it (so an image is sent again while recent)."""
    while index > 0:
        rng = random.Random(f"{w.seed}:{index}:repeat")
        if rng.random() >= w.image_repeat_fraction:
            return index
        index = rng.randrange(max(0, index - w.repeat_window), index)
    return index


@functools.lru_cache(maxsize=256)
def image_urls(seed: int, size: tuple[int, int], count: int, source: int) -> tuple[str, ...]:
    """The data URLs of the images request ``source`` sends first (the same for a repeat)."""
    rng = random.Random(f"{seed}:{source}:images")
    return tuple("data:image/jpeg;base64," + base64.b64encode(random_jpeg(*size, rng)).decode()
                 for _ in range(count))


def video_url(w: Workload, rng: random.Random) -> str:
    """A frame list of ``video_frames`` random-pixel JPEGs of ``video_size``, as the API takes
    one (``data:video/jpeg;base64,<frame>,<frame>,...``)."""
    frames = [base64.b64encode(random_jpeg(*w.video_size, rng)).decode()
              for _ in range(w.video_frames)]
    return "data:video/jpeg;base64," + ",".join(frames)


def replayed_hit_ratio(w: Workload, requests: int, replicas: int, sticky: bool,
                       cache_images: int | None = None, seed: int = 0) -> float:
    """The share of ``requests`` image requests (one image each) whose image the replica they
    reach already holds, replaying the workload's own sequence: each replica an LRU cache of
    ``cache_images`` images (None: unbounded); a request goes to a random replica, or with
    ``sticky`` to the one its image last reached (what the image-affinity router does when no
    replica is too busy). What routing alone can reach for this traffic, beside what a run
    measures."""
    from collections import OrderedDict

    rng = random.Random(seed)
    caches: list[OrderedDict] = [OrderedDict() for _ in range(replicas)]
    last: dict[int, int] = {}
    hits = 0
    for i in range(requests):
        src = image_source(w, i // w.session_turns)  # a session's turns carry its image
        r = last[src] if sticky and src in last else rng.randrange(replicas)
        last[src] = r
        if src in caches[r]:
            hits += 1
            caches[r].move_to_end(src)
        else:
            caches[r][src] = True
            if cache_images is not None and len(caches[r]) > cache_images:
                caches[r].popitem(last=False)
    return hits / requests if requests else 0.0
