"""The front door end to end: limits, validation and access control on a live stack.

One server for the module: API keys from a file, http allowed for a local media server on
127.0.0.2 only (127.0.0.1 stays refused), small byte caps. The bad-input table runs while a long
valid stream runs beside it; afterwards the stream is intact and the server answers normally.
"""

from __future__ import annotations

import json
import os
import threading
import time

import pytest

from tests import utils
from tests.utils import (MODEL, MediaServer, chat_body, stream_events, stream_usage,
                         wait_until, with_text)
from tests.utils import frames_part as frames
from tests.utils import image_data_part as img_bytes
from tests.utils import image_part as img

pytestmark = pytest.mark.slow
KEY, KEY2 = "key-one-" + "a" * 24, "key-two-" + "b" * 24
MAX_BODY, MAX_IMAGE = 2 << 20, 512 << 10
# Ray's metric export interval on this stack (Ray's default is 10 s): the counter checks wait
# a few of them for the series to settle.
EXPORT_S = 1


@pytest.fixture(scope="module")
def media_servers():
    ok = MediaServer("127.0.0.2", {"/cat.png": utils.png(120, 160, seed=1),
                                   "/cat.jpg": utils.jpeg(90, 120, seed=2)})
    private = MediaServer("127.0.0.1", {"/cat.png": utils.png(40, 40)})
    ok.redirects["/to-private"] = private.url + "/cat.png"
    yield ok, private
    ok.close()
    private.close()


@pytest.fixture(scope="module")
def server(stacks, tmp_path_factory):
    external = os.environ.get("QWEN_VL_FRONTDOOR_TEST_URL")  # development only
    if external:
        from pathlib import Path

        yield {"base": external, "keys_file": Path(os.environ["QWEN_VL_FRONTDOOR_KEYS_FILE"]),
               "metrics": "http://127.0.0.1:8080/metrics"}
        return
    tmp = tmp_path_factory.mktemp("frontdoor")
    keys = tmp / "api-keys"
    keys.write_text(KEY + "\n")
    info = stacks.get(overrides={
        "limits": {"max_body_bytes": MAX_BODY, "max_image_bytes": MAX_IMAGE,
                   "url": {"schemes": ["https", "http", "data"],
                           "allowed_networks": ["127.0.0.2/32"], "fetch_timeout_s": 3}},
        "access": {"api_keys_env": None, "api_keys_file": str(keys), "metrics": "key"},
    }, env={"RAY_metrics_report_interval_ms": str(EXPORT_S * 1000)})
    info["keys_file"] = keys
    yield info


def request(server, path, body=None, *, key: str | None = KEY, **kw):
    return utils.request(server["base"], path, body, key=key, **kw)


def chat(*parts, **kw):
    return chat_body(with_text(*parts, text="What is this?"), **{"max_tokens": 4, **kw})


# (name, request kwargs builder, status, error type, param (substring) or None, message substring)
def bad_cases(media):
    ok, private = media
    port = private.url.rsplit(":", 1)[1]
    P0 = "messages[0].content[0].image_url"
    return [
        ("truncated_jpeg", lambda: dict(body=chat(img_bytes(utils.truncated_jpeg(), "image/jpeg"))),
         400, "invalid_request_error", P0, "truncated or corrupt"),
        ("corrupt_jpeg", lambda: dict(body=chat(img_bytes(utils.corrupt_jpeg(), "image/jpeg"))),
         400, "invalid_request_error", P0, "image"),
        ("png_bomb", lambda: dict(body=chat(img_bytes(utils.png_header_only(20000, 20000)))),
         400, "invalid_request_error", P0, "20000x20000 = 400000000 pixels; the limit is 50000000"),
        ("strip_1x10000", lambda: dict(body=chat(img_bytes(utils.png(1, 10000)))),
         400, "invalid_request_error", P0, "10000x1"),
        ("aspect_214", lambda: dict(body=chat(img_bytes(utils.png(28, 6000)))),
         400, "invalid_request_error", P0, "aspect ratio is 214:1"),
        ("zero_size", lambda: dict(body=chat(img_bytes(utils.png_header_only(0, 0)))),
         400, "invalid_request_error", P0, ""),
        ("one_by_one", lambda: dict(body=chat(img_bytes(utils.png(1, 1)))),
         400, "invalid_request_error", P0, "1x1; each side must be at least 28"),
        ("wrong_base64", lambda: dict(body=chat(img("data:image/png;base64,@@not*base64@@"))),
         400, "invalid_request_error", P0, "not valid base64"),
        ("non_image_data_url", lambda: dict(body=chat(img(utils.data_url(b"hello", "text/plain")))),
         400, "invalid_request_error", P0, "expected image/*"),
        ("non_image_bytes", lambda: dict(body=chat(img_bytes(b"GIF89 this is not an image"))),
         400, "invalid_request_error", P0, "not a decodable image"),
        ("too_many_images", lambda: dict(body=chat(*[img_bytes(utils.png(28, 28, s)) for s in range(5)])),
         400, "invalid_request_error", "messages", "5 images in the request; the limit is 4"),
        ("image_over_byte_cap", lambda: dict(body=chat(img_bytes(utils.png(450, 450)))),
         400, "invalid_request_error", P0, f"the limit is {MAX_IMAGE}"),
        ("body_over_cap", lambda: dict(body=chat(img_bytes(b"\0" * (MAX_BODY + 1000)))),
         413, "request_too_large", None, f"the limit is {MAX_BODY}"),
        ("url_loopback", lambda: dict(body=chat(img(private.url + "/cat.png"))),
         400, "invalid_request_error", P0, "resolves to 127.0.0.1"),
        ("url_metadata", lambda: dict(body=chat(img("http://169.254.169.254/latest/meta-data/"))),
         400, "invalid_request_error", P0, "resolves to 169.254.169.254"),
        ("url_10_net", lambda: dict(body=chat(img("http://10.11.12.13/cat.png"))),
         400, "invalid_request_error", P0, "resolves to 10.11.12.13"),
        ("url_localhost_name", lambda: dict(body=chat(img(f"http://localhost:{port}/cat.png"))),
         400, "invalid_request_error", P0, "host 'localhost' resolves to"),
        ("redirect_to_private", lambda: dict(body=chat(img(ok.url + "/to-private"))),
         400, "invalid_request_error", P0, "resolves to 127.0.0.1"),
        ("scheme_file", lambda: dict(body=chat(img("file:///etc/passwd"))),
         400, "invalid_request_error", P0, "local file paths are not allowed"),
        ("scheme_ftp", lambda: dict(body=chat(img("ftp://example.com/cat.png"))),
         400, "invalid_request_error", P0, "URL scheme 'ftp' is not allowed"),
        ("scheme_gopher", lambda: dict(body=chat(img("gopher://example.com/1"))),
         400, "invalid_request_error", P0, "URL scheme 'gopher' is not allowed"),
        ("prompt_too_long", lambda: dict(body={"model": MODEL, "max_tokens": 4,
                                               "messages": [{"role": "user", "content": "hello " * 5000}]}),
         400, "invalid_request_error", None, "4096"),
        ("max_tokens_over", lambda: dict(body=chat(max_tokens=5000)),
         400, "invalid_request_error", "max_tokens", "max_tokens is 5000; the limit is 4096"),
        ("max_tokens_zero", lambda: dict(body=chat(max_tokens=0)),
         400, "invalid_request_error", "max_tokens", "at least 1"),
        ("negative_temperature", lambda: dict(body=chat(temperature=-1)),
         400, "invalid_request_error", "temperature", "temperature is -1"),
        ("n_too_large", lambda: dict(body=chat(n=50)),
         400, "invalid_request_error", "n", "n is 50; the limit is 4"),
        ("unknown_model", lambda: dict(body={**chat(), "model": "gpt-9"}),
         404, "not_found_error", "model", "model 'gpt-9' does not exist"),
        ("malformed_json", lambda: dict(raw=b'{"model": MODEL, "messages": ['),
         400, "invalid_request_error", None, ""),
        ("wrong_content_type", lambda: dict(raw=b"hello", content_type="text/plain"),
         400, "invalid_request_error", None, ""),
        ("missing_messages", lambda: dict(body={"model": MODEL}),
         400, "invalid_request_error", "messages", "messages"),
        ("unknown_part_type", lambda: dict(body=chat({"type": "image_embeds", "image_embeds": "x"})),
         400, "invalid_request_error", "messages[0].content[0].type", "unsupported content part type"),
        ("video_over_frame_cap", lambda: dict(body=chat(frames(17))),
         400, "invalid_request_error", "video_url", "video has 17 frames; the limit is 16"),
        ("raise_max_pixels", lambda: dict(body=chat(mm_processor_kwargs={"max_pixels": 10_000_000})),
         400, "invalid_request_error", "mm_processor_kwargs.max_pixels", "server cap is 200704"),
        ("request_chat_template", lambda: dict(body=chat(chat_template="{{ 7*7 }}")),
         400, "invalid_request_error", "chat_template", "not allowed"),
    ]


def test_bad_inputs_refused_while_a_stream_runs(server, media_servers):
    """Every case below while a 1500-token stream runs: the stream's first token has arrived
    before the first case is sent and its last after the last case is answered, and it loses
    nothing."""
    cases = bad_cases(media_servers)
    assert len(cases) == 34
    stream: dict = {"seen": 0}
    started = threading.Event()

    def on_event(_):
        stream["seen"] += 1
        started.set()

    def long_stream():
        body = chat(img_bytes(utils.png(64, 64, seed=9)), max_tokens=1500, ignore_eos=True,
                    stream=True, stream_options={"include_usage": True})
        stream["events"] = stream_events(server["base"], "/v1/chat/completions", body, key=KEY,
                                         on_event=on_event)

    t = threading.Thread(target=long_stream)
    t.start()
    assert started.wait(300), "the stream sent nothing"
    failures = []
    for name, build, status, etype, param, message in cases:
        code, out = request(server, "/v1/chat/completions", **build())
        err = (out or {}).get("error") or {}
        problems = []
        if code != status:
            problems.append(f"status {code} != {status}")
        if set(err) != {"message", "type", "param", "code"}:
            problems.append(f"not an OpenAI error: {out}")
        if err.get("type") != etype:
            problems.append(f"type {err.get('type')} != {etype}")
        if param and param not in (err.get("param") or ""):
            problems.append(f"param {err.get('param')!r} lacks {param!r}")
        if message not in (err.get("message") or ""):
            problems.append(f"message {err.get('message')!r} lacks {message!r}")
        if "Traceback" in json.dumps(out) or "ray.llm" in json.dumps(out):
            problems.append("internal details leaked")
        if problems:
            failures.append(f"{name}: {'; '.join(problems)}")
    seen_during = stream["seen"]
    t.join(timeout=600)
    assert not failures, "\n".join(failures)
    events = stream["events"]
    assert seen_during < len(events), "the stream had ended before the last case was answered"
    assert stream_usage(events)["completion_tokens"] == 1500, "the concurrent stream lost tokens"
    code, out = request(server, "/v1/chat/completions", chat(img_bytes(utils.png(64, 64))))
    assert code == 200 and out["usage"]["completion_tokens"] == 4


def test_oversized_bodies_get_413_not_a_broken_pipe(server):
    """The 413 is decided before the body is all in; a client that sends the whole body before
    reading (urllib, most SDKs) must still read it, so the gate reads the rest of the body
    before it answers. Forty tries, some chunked, with a stream beside them: a gate that
    answers early shows up as a broken pipe in a few of them."""
    stop = threading.Event()

    def busy():
        while not stop.is_set():
            request(server, "/v1/chat/completions", chat(max_tokens=64, ignore_eos=True))

    t = threading.Thread(target=busy)
    t.start()
    try:
        results = []
        for i in range(40):
            chunked = i % 4 == 3  # urllib sends an iterable body chunked, with no Content-Length
            payload = json.dumps(chat(img_bytes(b"\0" * (MAX_BODY + 1000)))).encode()
            pieces = [payload[k:k + (64 << 10)] for k in range(0, len(payload), 64 << 10)]
            try:
                code, out = request(server, "/v1/chat/completions",
                                    raw=iter(pieces) if chunked else payload)
                err = out["error"]
                results.append((code, err["code"], f"the limit is {MAX_BODY}" in err["message"]))
            except OSError as e:  # URLError wraps BrokenPipeError / ConnectionResetError
                results.append(repr(e))
    finally:
        stop.set()
        t.join(timeout=300)
    assert all(r == (413, "request_too_large", True) for r in results), results


@pytest.mark.parametrize("name,make,mime", [
    ("grayscale", utils.grayscale, "image/png"), ("rgba_png", utils.rgba, "image/png"),
    ("cmyk_jpeg", utils.cmyk_jpeg, "image/jpeg"), ("png_16bit", utils.png16, "image/png"),
    ("exif_rotated", utils.exif_rotated_jpeg, "image/jpeg"), ("webp", utils.webp, "image/webp"),
    ("animated_gif_first_frame", utils.animated_gif, "image/gif"),
    ("28x28", lambda: utils.png(28, 28), "image/png")])
def test_valid_edge_cases(server, name, make, mime):
    code, out = request(server, "/v1/chat/completions", chat(img_bytes(make(), mime)))
    assert code == 200, out
    assert out["usage"]["completion_tokens"] == 4


def test_image_over_http_when_allowed(server, media_servers):
    ok, _ = media_servers
    code, out = request(server, "/v1/chat/completions", chat(img(ok.url + "/cat.png")))
    assert code == 200, out


LONG_MINUTES, LONG_FPS, LONG_SIZE = 20, 2, (320, 240)


@pytest.fixture(scope="module")
def long_video():
    """A 20-minute file of realistic size (noise frames compress poorly: tens of MB)."""
    w, h = LONG_SIZE
    return utils.mp4(LONG_MINUTES * 60, LONG_FPS, width=w, height=h)


def front_door_pids(server) -> list[int]:
    """The processes the front door runs in: the engine replicas (Ray titles them after the
    deployment; vLLM's engine core and workers have titles of their own)."""
    from pathlib import Path

    import psutil

    from launch.app import ENGINE_PREFIX
    from launch.cluster.local_cluster import cluster_processes, read_state

    pids = []
    for pid in cluster_processes(read_state(Path(server["env"]["QWEN_VL_RUN_DIR"]))):
        try:
            if f":{ENGINE_PREFIX}" in " ".join(psutil.Process(pid).cmdline()):
                pids.append(pid)
        except psutil.Error:
            continue
    return pids


def test_twenty_minute_video_by_url_within_the_caps(server, media_servers, long_video):
    """A 20-minute video fetched over http is accepted within the byte cap, sampled into its
    token budget, and counted as qwen-vl-utils counts it; the front door's memory stays far
    below the decoded video's size (it decodes one frame at a time)."""
    import psutil

    ok, _ = media_servers
    ok.files["/long.mp4"] = long_video
    cfg = server["cfg"]
    assert len(long_video) <= cfg.limits.max_video_bytes
    code, text_only = request(server, "/v1/chat/completions", chat())
    assert code == 200, text_only
    pids = front_door_pids(server)
    assert len(pids) == 1, pids  # the one engine replica
    procs = [psutil.Process(pid) for pid in pids]
    before = sum(p.memory_info().rss for p in procs)
    peak, done = before, threading.Event()

    def watch():
        nonlocal peak
        while not done.is_set():
            peak = max(peak, sum(p.memory_info().rss for p in procs))
            time.sleep(0.02)

    watcher = threading.Thread(target=watch, daemon=True)
    watcher.start()
    t0 = time.monotonic()
    try:
        code, out = request(server, "/v1/chat/completions", chat(
            {"type": "video_url", "video_url": {"url": ok.url + "/long.mp4"}}), timeout=600)
    finally:
        done.set()
        watcher.join(timeout=10)
    elapsed = time.monotonic() - t0
    assert code == 200, out
    b = cfg.video_budget()
    w, h = LONG_SIZE
    expected = utils.video_tokens(LONG_MINUTES * 60 * LONG_FPS, LONG_FPS, h, w, video_fps=b.fps,
                                  max_frames=b.max_frames, min_pixels=b.min_pixels,
                                  max_pixels=cfg.multimodal.max_pixels,
                                  total_pixels=b.total_pixels)
    assert out["usage"]["prompt_tokens"] == text_only["usage"]["prompt_tokens"] + 2 + expected
    decoded = LONG_MINUTES * 60 * LONG_FPS * w * h * 3
    growth = peak - before
    print(f"20-minute video: {len(long_video) / 1e6:.1f} MB file, {expected} video tokens, "
          f"{elapsed:.1f} s for the request; front door resident memory {before / 2**20:.0f} MiB"
          f" before, peak +{growth / 2**20:.0f} MiB (the decoded video: "
          f"{decoded / 2**20:.0f} MiB)")
    # The file itself is held (fetched bytes); decoded frames are not.
    assert growth < len(long_video) * 3 + decoded // 4, growth


def test_client_may_lower_max_pixels(server):
    from PIL import Image

    big = img_bytes(utils.encode(Image.new("RGB", (600, 600), (10, 20, 30)), "PNG"))
    _, full = request(server, "/v1/chat/completions", chat(big))
    _, low = request(server, "/v1/chat/completions",
                     chat(big, mm_processor_kwargs={"max_pixels": 28 * 28 * 16}))
    from qwen_vl_utils import smart_resize

    def tokens(max_pixels):
        h, w = smart_resize(600, 600, factor=28, min_pixels=3136, max_pixels=max_pixels)
        return (h // 28) * (w // 28)

    assert tokens(200704) - tokens(28 * 28 * 16) == 216  # 225 - 9
    assert full["usage"]["prompt_tokens"] - low["usage"]["prompt_tokens"] == 216


# ------------------------------------------------------------------------------ access
def test_auth_missing_wrong_right(server):
    code, out = request(server, "/v1/models", key=None)
    assert code == 401 and out["error"]["type"] == "authentication_error"
    assert "missing API key" in out["error"]["message"]
    code, out = request(server, "/v1/models", key="nope")
    assert code == 401 and out["error"]["message"] == "invalid API key"
    code, _ = request(server, "/v1/models")
    assert code == 200
    code, _ = request(server, "/health", key=None)
    assert code == 200


def test_key_rotation_two_keys_at_once(server):
    """Each rewrite of the key file counts from the next request: no wait for a new second."""
    keys = server["keys_file"]
    try:
        keys.write_text(f"{KEY}\n{KEY2}\n")
        assert request(server, "/v1/models", key=KEY)[0] == 200
        assert request(server, "/v1/models", key=KEY2)[0] == 200
        keys.write_text(f"{KEY2}\n")
        assert request(server, "/v1/models", key=KEY)[0] == 401
        assert request(server, "/v1/models", key=KEY2)[0] == 200
    finally:  # the module's other tests use KEY
        keys.write_text(f"{KEY}\n")
    assert request(server, "/v1/models", key=KEY)[0] == 200


def test_rejections_are_counted_by_reason(server):
    """This request's refusal is counted: the auth series, once settled (Ray exports counters
    on an interval, so earlier tests' refusals may still arrive), grows by exactly the two
    refusals sent here."""
    def auth_count() -> float:
        text = utils.request(server["metrics"], timeout=30)[1]["raw"]
        return sum(float(ln.rsplit(" ", 1)[1]) for ln in text.splitlines()
                   if ln.startswith("ray_qwen_vl_rejected_requests") and 'reason="auth"' in ln)

    def settled(last=[None]):  # two reads more than an export interval apart agree
        now = auth_count()
        same, last[0] = now == last[0], now
        return same and (now,)

    before = wait_until(settled, 120, interval=EXPORT_S + 1, what="the auth series settled")[0]
    assert request(server, "/v1/models", key="nope")[0] == 401
    assert request(server, "/v1/models", key=None)[0] == 401
    wait_until(lambda: auth_count() == before + 2, 60, interval=EXPORT_S,
               what=f"the auth series at {before + 2:g}")


def test_metrics_route_behind_key(server):
    """access.metrics: key -> /metrics on the API port needs the key, and carries vLLM's."""
    code, out = request(server, "/metrics", key=None)
    assert code == 401
    # Ray exports vLLM's gauges while the engine steps, on its export interval: the route is
    # read while a long stream keeps the engine stepping.
    long = threading.Thread(target=request, args=(server, "/v1/chat/completions", chat(
        max_tokens=400, ignore_eos=True)), kwargs={"timeout": 600})
    long.start()

    def exported():
        code, out = request(server, "/metrics", timeout=60)
        assert code == 200, out
        return "ray_vllm_num_requests_running" in out["raw"]

    try:
        wait_until(exported, 60, interval=EXPORT_S, what="vLLM's gauges on the API's /metrics")
    finally:
        long.join(timeout=600)
