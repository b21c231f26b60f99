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


def images_of(w: Workload, i: int) -> list[str]:
    parts = build_request(w, "m", i)[1]["messages"][0]["content"]
    return [p["image_url"]["url"] for p in parts if p["type"] == "image_url"]


def test_repeats_send_an_earlier_requests_images_with_a_question_of_their_own():
    w = Workload(endpoint="chat", input_tokens=5, image_fraction=1.0, image_size=(32, 32),
                 image_repeat_fraction=0.9, repeat_window=8)
    n = 400
    seen: dict[str, int] = {}
    repeats = 0
    for i in range(n):
        (url,) = images_of(w, i)
        if url in seen:
            repeats += 1
            assert i - seen[url] <= 8 * 50  # recent: within a chain of windows, never far back
        seen.setdefault(url, i)
        if i:
            assert build_request(w, "m", i)[1]["messages"][0]["content"][-1] != \
                build_request(w, "m", i - 1)[1]["messages"][0]["content"][-1]
    assert 0.85 * n <= repeats <= 0.95 * n, repeats  # about the share asked for
    assert images_of(w, 17) == images_of(w, 17)  # reproducible
    none = w.model_copy(update={"image_repeat_fraction": 0.0})
    assert len({images_of(none, i)[0] for i in range(50)}) == 50  # every image its own


def test_sessions_are_multi_turn_chats_about_one_image():
    w = Workload(endpoint="chat", input_tokens=4, output_tokens=3, image_size=(32, 32),
                 session_turns=3)
    turns = [build_request(w, "m", i) for i in range(6)]  # two sessions of three turns
    assert [t[2] for t in turns] == ["image"] * 6
    for i, (_, body, _, _) in enumerate(turns):
        msgs = body["messages"]
        turn = i % 3
        assert [m["role"] for m in msgs] == ["user", "assistant"] * turn + ["user"]
        images = [p for m in msgs if isinstance(m["content"], list) for p in m["content"]
                  if p["type"] == "image_url"]
        assert len(images) == 1 and msgs[0]["content"][0] == images[0]  # first question only
        assert all(len(m["content"].split()) == 3 for m in msgs if m["role"] == "assistant")
    first = [t[1]["messages"] for t in turns[:3]]
    assert first[1][:1] == first[2][:1] == first[0][:1]  # the conversation so far, unchanged
    assert first[2][:3] == first[1][:3]
    assert turns[3][1]["messages"][0] != turns[0][1]["messages"][0]  # a new session's image


def test_videos_are_frame_lists_of_random_jpegs_on_their_share_of_requests():
    w = Workload(endpoint="chat", input_tokens=5, video_fraction=0.5, video_frames=4,
                 video_size=(56, 84))
    kinds = [build_request(w, "m", i)[2] for i in range(200)]
    assert set(kinds) == {"text", "video"}
    assert 0.4 * 200 <= kinds.count("video") <= 0.6 * 200, kinds.count("video")
    i = kinds.index("video")
    parts = build_request(w, "m", i)[1]["messages"][0]["content"]
    (video,) = [p["video_url"]["url"] for p in parts if p["type"] == "video_url"]
    assert video.startswith("data:video/jpeg;base64,")
    frames = video.removeprefix("data:video/jpeg;base64,").split(",")
    assert len(frames) == 4 and len(set(frames)) == 4
    img = Image.open(io.BytesIO(base64.b64decode(frames[0])))
    assert img.format == "JPEG" and img.size == (56, 84)
    assert parts[-1]["type"] == "text"
    assert "50% with a 4-frame 56x84 video" in w.describe()


def test_no_video_share_leaves_every_other_request_as_it_was():
    """The video draw is made only when there is a share to draw for: runs without videos send
    the same requests as before videos existed."""
    w = Workload(endpoint="chat", input_tokens=5, image_fraction=0.5, image_size=(32, 32))
    assert [build_request(w, "m", i)[2] for i in range(8)] == [
        build_request(w.model_copy(update={"video_frames": 3}), "m", i)[2] for i in range(8)]
    assert "video" not in w.describe()


def test_replayed_hit_ratio_is_what_routing_alone_reaches():
    from loadtest.workload import image_source, replayed_hit_ratio

    w = Workload(endpoint="chat", image_fraction=1.0, image_repeat_fraction=0.9, seed=7)
    n = 200
    repeats = n - len({image_source(w, i) for i in range(n)})
    # sticky and unbounded: every repeat finds its image; one replica: the same
    assert replayed_hit_ratio(w, n, 4, sticky=True) == repeats / n
    assert replayed_hit_ratio(w, n, 1, sticky=False) == repeats / n
    # spread at random, a repeat misses on a replica the image has not reached yet
    spread = [replayed_hit_ratio(w, n, k, sticky=False) for k in (2, 4, 8)]
    assert spread[0] < repeats / n and spread == sorted(spread, reverse=True), spread
    # a cache of one image per replica loses most of what an unbounded one holds
    assert replayed_hit_ratio(w, n, 2, sticky=True, cache_images=1) < repeats / n
    assert replayed_hit_ratio(w.model_copy(update={"image_repeat_fraction": 0.0}), n, 2,
                              sticky=True) == 0.0
    # sessions: every turn after a session's first carries an image it already sent
    s = Workload(endpoint="chat", image_fraction=1.0, session_turns=3, seed=7)
    assert replayed_hit_ratio(s, 30, 2, sticky=True) == 20 / 30
