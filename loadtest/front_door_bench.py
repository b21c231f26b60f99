"""Benchmark: the front door's own cost per request, next to the engine's time.

    python -m loadtest.front_door_bench [--url http://127.0.0.1:8000 --key KEY] [-n 50]

Prints p50/p99 milliseconds of ``FrontDoor.check_chat`` (in process: decode, checks, data URL
rewrite) for (a) a 1-megapixel JPEG that is accepted and (b) a 100-megapixel PNG header that is
refused before decoding; then, against a running stack (``--url``; without it one is started
with configs/default.yaml and stopped afterwards), the end-to-end time of the same accepted
request with max_tokens=1 (prefill incl. the vision tower), so the ratio is visible.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import base64
import io
import json
import statistics
import sys
import time
import urllib.request
from pathlib import Path
from types import SimpleNamespace

import numpy as np
from PIL import Image

from engine.config import load_config
from launch.api.front_door import FrontDoor
from launch.api.rejections import RequestRejected

from .machine import describe

ROOT = Path(__file__).resolve().parent.parent


def jpeg_1mp() -> bytes:
    arr = (np.random.RandomState(0).rand(1000, 1000, 3) * 255).astype("uint8")
    buf = io.BytesIO()
    Image.fromarray(arr).save(buf, "JPEG", quality=90)
    return buf.getvalue()


def png_header(w: int, h: int) -> bytes:
    import struct
    import zlib

    def chunk(kind, payload):
        return (struct.pack(">I", len(payload)) + kind + payload
                + struct.pack(">I", zlib.crc32(kind + payload) & 0xFFFFFFFF))
    return (b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", struct.pack(">IIBBBBB", w, h, 8, 2, 0, 0, 0))
            + chunk(b"IDAT", zlib.compress(b"\0" * 64)) + chunk(b"IEND", b""))


def body_for(data: bytes, mime: str) -> dict:
    url = f"data:{mime};base64," + base64.b64encode(data).decode()
    return {"model": "qwen2-vl-tiny", "max_tokens": 1, "temperature": 0, "messages": [
        {"role": "user", "content": [{"type": "image_url", "image_url": {"url": url}},
                                     {"type": "text", "text": "Describe."}]}]}


def pct(samples: list[float], q: float) -> float:
    s = sorted(samples)
    return s[min(len(s) - 1, int(round(q / 100 * (len(s) - 1))))]


def time_front_door(door: FrontDoor, body: dict, n: int) -> tuple[list[float], str]:
    outcome = "accepted"
    samples = []
    for _ in range(n):
        req = SimpleNamespace(**json.loads(json.dumps(body)))
        t = time.perf_counter()
        try:
            asyncio.run(door.check_chat(req))
        except RequestRejected as err:
            outcome = f"refused ({err.status}: {err.message[:60]}...)"
        samples.append((time.perf_counter() - t) * 1000)
    return samples, outcome


def time_engine(url: str, key: str | None, body: dict, n: int) -> list[float]:
    headers = {"Content-Type": "application/json"}
    if key:
        headers["Authorization"] = f"Bearer {key}"
    raw = json.dumps(body).encode()
    samples = []
    for i in range(n + 2):
        req = urllib.request.Request(url + "/v1/chat/completions", raw, headers)
        t = time.perf_counter()
        with urllib.request.urlopen(req, timeout=300) as r:
            r.read()
        if i >= 2:  # two warm-up requests
            samples.append((time.perf_counter() - t) * 1000)
    return samples


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--url", help="a running stack; default: start configs/default.yaml")
    p.add_argument("--key", help="API key for --url")
    p.add_argument("-n", type=int, default=50, help="requests per measurement")
    args = p.parse_args(argv)

    cfg = load_config(ROOT / "configs" / "default.yaml")
    door = FrontDoor(cfg)
    accepted = body_for(jpeg_1mp(), "image/jpeg")
    bomb = body_for(png_header(10000, 10000), "image/png")
    print(f"machine: {describe()}")
    print(f"front door limits: max_image_pixels={cfg.limits.max_image_pixels}, "
          f"max_image_bytes={cfg.limits.max_image_bytes}\n")
    rows = []
    for name, body in (("1 MP JPEG (accepted)", accepted), ("100 MP PNG header (refused)", bomb)):
        samples, outcome = time_front_door(door, body, args.n)
        rows.append((f"front door: {name}", samples, outcome))

    with contextlib.ExitStack() as running:
        url = args.url
        if url is None:
            import tempfile

            import yaml

            from .deploy import stack

            print("starting a stack with configs/default.yaml (about 2 minutes)...", flush=True)
            data = yaml.safe_load((ROOT / "configs" / "default.yaml").read_text())
            url = running.enter_context(
                stack(data, Path(tempfile.mkdtemp(prefix="qvl-bench-")))).base_url
        samples = time_engine(url, args.key, accepted, max(5, args.n // 5))
        rows.append(("stack end to end: 1 MP JPEG, max_tokens=1", samples, "200"))

    print(f"{'what':48} {'n':>4} {'p50 ms':>9} {'p99 ms':>9}  outcome")
    for name, samples, outcome in rows:
        print(f"{name:48} {len(samples):>4} {statistics.median(samples):9.1f} "
              f"{pct(samples, 99):9.1f}  {outcome}")
    fd, e2e = statistics.median(rows[0][1]), statistics.median(rows[2][1])
    print(f"\nfront door share of the accepted request (p50): {fd / e2e:.1%}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
