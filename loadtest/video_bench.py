"""Benchmark: what long videos cost, from the front door to the engine's first token.

    python -m loadtest.video_bench [--model tiny|2b] [--minutes 1,5,20] [--max-frames N|auto]

For each duration a video file (noise frames, 640x360 at 2 fps: tens of MB at 20 minutes) is
served over http from this process. It prints, per video: the file's size; the front door's
time for it (fetch, probe, sampling: ``FrontDoor.check_chat`` in this process, as the ingress
runs it); then, against a stack started with the config (the embedded tiny model or the
2B-size one), the time to the first token of a streamed request with the video (front door
included), the engine's share of it (the difference) and ``usage.prompt_tokens``.
``--max-frames auto`` uses the config model's derived frame cap instead of the config file's.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import copy
import http.server
import json
import sys
import tempfile
import threading
import time
import urllib.request
from fractions import Fraction
from pathlib import Path
from types import SimpleNamespace

import numpy as np
import yaml

from engine.config import parse_config
from launch.api.front_door import FrontDoor

from .machine import describe

ROOT = Path(__file__).resolve().parent.parent
HOST = "127.0.0.2"  # the media server: a loopback address the bench's config allows
SIZE, FPS = (640, 360), 2


def make_video(path: Path, minutes: float) -> int:
    """An mp4 of noise frames (which compress poorly, as camera footage does)."""
    import av

    w, h = SIZE
    rng = np.random.default_rng(0)
    with av.open(str(path), "w", format="mp4") as container:
        stream = container.add_stream("mpeg4", rate=Fraction(FPS))
        stream.width, stream.height, stream.pix_fmt = w, h, "yuv420p"
        for _ in range(int(minutes * 60 * FPS)):
            frame = rng.integers(0, 256, (h, w, 3), dtype=np.uint8)
            for packet in stream.encode(av.VideoFrame.from_ndarray(frame, format="rgb24")):
                container.mux(packet)
        for packet in stream.encode():
            container.mux(packet)
    return path.stat().st_size


@contextlib.contextmanager
def media_server(folder: Path):
    handler = type("Quiet", (http.server.SimpleHTTPRequestHandler,),
                   {"log_message": lambda *a: None})
    server = http.server.ThreadingHTTPServer(
        (HOST, 0), lambda *a: handler(*a, directory=str(folder)))
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    try:
        yield f"http://{HOST}:{server.server_address[1]}"
    finally:
        server.shutdown()


def body(model: str, url: str) -> dict:
    return {"model": model, "max_tokens": 1, "temperature": 0, "stream": True,
            "stream_options": {"include_usage": True}, "messages": [{"role": "user", "content": [
                {"type": "video_url", "video_url": {"url": url}},
                {"type": "text", "text": "What happens in this video?"}]}]}


def front_door_seconds(door: FrontDoor, request: dict) -> float:
    req = SimpleNamespace(**copy.deepcopy(request))
    t = time.perf_counter()
    asyncio.run(door.check_chat(req))
    return time.perf_counter() - t


def first_token(base: str, request: dict) -> tuple[float, int]:
    """(seconds to the first streamed chunk with content, usage.prompt_tokens)."""
    req = urllib.request.Request(base + "/v1/chat/completions", json.dumps(request).encode(),
                                 {"Content-Type": "application/json"})
    t = time.perf_counter()
    ttft, prompt = None, -1
    with urllib.request.urlopen(req, timeout=3600) as r:
        for line in r:
            line = line.decode().strip()
            if not line.startswith("data: ") or line == "data: [DONE]":
                continue
            chunk = json.loads(line[6:])
            if ttft is None and chunk.get("choices"):
                ttft = time.perf_counter() - t
            if chunk.get("usage"):
                prompt = chunk["usage"]["prompt_tokens"]
    return ttft or float("nan"), prompt


def config_data(args) -> dict:
    from .scenarios.common import derive

    data = yaml.safe_load(Path(args.config).read_text())
    if args.model == "2b":
        data = derive(data, source="embedded:qwen2-vl-2b-random")
    # Every request prefills its whole video: a cached prefix (the warm-up's) would hide it.
    data.setdefault("engine", {})["enable_prefix_caching"] = False
    mm, limits = data.setdefault("multimodal", {}), data.setdefault("limits", {})
    if args.max_frames == "auto":
        mm.pop("video_max_frames", None)
    elif args.max_frames:
        mm["video_max_frames"] = int(args.max_frames)
    url = limits.setdefault("url", {})
    url["schemes"] = sorted(set(url.get("schemes", ["https", "data"])) | {"http"})
    url["allowed_networks"] = [*url.get("allowed_networks", []), f"{HOST}/32"]
    url["fetch_timeout_s"] = max(url.get("fetch_timeout_s", 10), 60)
    return data


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--config", default=str(ROOT / "configs" / "default.yaml"))
    p.add_argument("--model", choices=("tiny", "2b"), default="tiny")
    p.add_argument("--minutes", default="1,5,20", help="video durations (default 1,5,20)")
    p.add_argument("--max-frames", default=None,
                   help="override multimodal.video_max_frames: a number, or auto (derived)")
    args = p.parse_args(argv)
    minutes = [float(m) for m in args.minutes.split(",")]
    data = config_data(args)
    cfg = parse_config(copy.deepcopy(data))
    budget = cfg.video_budget()
    print(f"machine: {describe()}")
    print(f"model: {cfg.model.source}; video: {budget.fps:g} fps, at most {budget.max_frames} "
          f"frames, {budget.max_tokens} tokens per video, frames >= {budget.min_pixels} px\n",
          flush=True)
    work = Path(tempfile.mkdtemp(prefix="qvl-video-bench-"))
    files = {}
    for m in minutes:
        t = time.perf_counter()
        files[m] = make_video(work / f"video-{m:g}min.mp4", m)
        print(f"made a {m:g}-minute video: {files[m] / 1e6:.1f} MB in "
              f"{time.perf_counter() - t:.0f} s", flush=True)
    make_video(work / "warm-up.mp4", 1 / 6)
    from .deploy import stack

    rows = []
    with media_server(work) as media, contextlib.ExitStack() as running:
        door = FrontDoor(cfg)
        front = {m: front_door_seconds(door, body(cfg.model.served_name,
                                                  f"{media}/video-{m:g}min.mp4"))
                 for m in minutes}
        print("starting the stack (minutes)...", flush=True)
        target = running.enter_context(stack(data, work / "stack"))
        # Warm-up on a video of its own: vLLM caches a video's processed frames and encoder
        # output by content, so reusing a measured one would skip the vision tower.
        first_token(target.base_url, body(cfg.model.served_name, f"{media}/warm-up.mp4"))
        for m in minutes:
            ttft, prompt = first_token(target.base_url, body(cfg.model.served_name,
                                                             f"{media}/video-{m:g}min.mp4"))
            rows.append((m, files[m], front[m], ttft, prompt))
    print(f"\n{'video':>8} {'file MB':>8} {'front door s':>13} {'TTFT s':>8} "
          f"{'engine s':>9} {'prompt tokens':>14}")
    for m, size, fd, ttft, prompt in rows:
        print(f"{m:>6g} m {size / 1e6:8.1f} {fd:13.2f} {ttft:8.2f} {ttft - fd:9.2f} "
              f"{prompt:14d}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
