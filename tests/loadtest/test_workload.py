"""Workloads: exact token prompts, varied per request, random-pixel JPEG images."""

from __future__ import annotations

import base64
import io

from PIL import Image

from loadtest.workload import TOKEN_ID_RANGE, Workload, build_request


def test_completions_prompt_is_exactly_n_ordinary_token_ids():
    w = Workload(input_tokens=300, output_tokens=7)
    path, body, kind, expected = build_request(w, "m", 0)
    assert path == "/v1/completions" and kind == "text" and expected == 300
    assert len(body["prompt"]) == 300
    assert all(TOKEN_ID_RANGE[0] <= t < TOKEN_ID_RANGE[1] for t in body["prompt"])
    assert body["max_tokens"] == 7 and body["ignore_eos"] is True


def test_prompts_differ_per_request_and_repeat_per_index():
    w = Workload(input_tokens=50)
    p0, p1 = build_request(w, "m", 0)[1]["prompt"], build_request(w, "m", 1)[1]["prompt"]
    assert p0 != p1 and p0[0] != p1[0]  # no shared prefix for a cache to reuse
    assert build_request(w, "m", 0)[1]["prompt"] == p0


def test_chat_images_are_random_jpegs_of_the_requested_size():
    w = Workload(endpoint="chat", input_tokens=5, image_fraction=1.0, images_per_request=2,
                 image_size=(96, 64))
    path, body, kind, _ = build_request(w, "m", 3)
    assert path == "/v1/chat/completions" and kind == "image"
    parts = body["messages"][0]["content"]
    images = [p["image_url"]["url"] for p in parts if p["type"] == "image_url"]
    assert len(images) == 2 and images[0] != images[1]
    img = Image.open(io.BytesIO(base64.b64decode(images[0].split(",", 1)[1])))
    assert img.format == "JPEG" and img.size == (96, 64)
    assert parts[-1]["type"] == "text" and len(parts[-1]["text"].split()) == 5


def test_image_fraction_zero_sends_text_only():
    w = Workload(endpoint="chat", input_tokens=5)
    assert all(build_request(w, "m", i)[2] == "text" for i in range(10))
