"""Helpers the end-to-end tests share: HTTP calls, SSE streams, polling, video token counts."""

from __future__ import annotations

import json
import time
import urllib.error
import urllib.request
from typing import Any, Callable


def request(base: str, path: str, body: Any = None, *, raw: bytes | None = None,
            headers: dict | None = None, method: str | None = None,
            timeout: float = 120) -> tuple[int, Any]:
    """(status, JSON body, or {"raw": text} when the body is not JSON)."""
    data = raw if raw is not None else (json.dumps(body).encode() if body is not None else None)
    hdrs = {"Content-Type": "application/json", **(headers or {})}
    req = urllib.request.Request(base + path, data, hdrs, method=method)
    try:
        with urllib.request.urlopen(req, timeout=timeout) as r:
            status, payload = r.status, r.read()
    except urllib.error.HTTPError as e:
        status, payload = e.code, e.read()
    try:
        return status, json.loads(payload or b"null")
    except ValueError:
        return status, {"raw": payload.decode(errors="replace")}


def stream_events(base: str, path: str, body: dict, headers: dict | None = None,
                  timeout: float = 600) -> list[str]:
    """The ``data:`` payloads of an SSE response, in order (``[DONE]`` included)."""
    req = urllib.request.Request(base + path, json.dumps(body).encode(),
                                 {"Content-Type": "application/json", **(headers or {})})
    events = []
    with urllib.request.urlopen(req, timeout=timeout) as r:
        for line in r:
            line = line.decode().strip()
            if line.startswith("data: "):
                events.append(line[6:])
    return events


def wait_until(check: Callable[[], Any], timeout: float, interval: float = 0.5,
               what: str = "condition") -> Any:
    """Poll ``check`` until it returns something truthy; its last value on success."""
    deadline = time.monotonic() + timeout
    while True:
        value = check()
        if value:
            return value
        if time.monotonic() > deadline:
            raise AssertionError(f"{what} not reached in {timeout:.0f}s")
        time.sleep(interval)


def is_openai_error(body: Any) -> bool:
    return isinstance(body, dict) and isinstance(body.get("error"), dict) and \
        set(body["error"]) == {"message", "type", "param", "code"} and \
        isinstance(body["error"]["message"], str) and body["error"]["message"] != "" and \
        (body["error"]["param"] is None or isinstance(body["error"]["param"], str))


def video_tokens(total_frames: int, fps: float, height: int, width: int, *, video_fps: float,
                 max_frames: int, min_pixels: int, max_pixels: int) -> int:
    """A video's pad tokens by qwen-vl-utils' own functions (independent of launch.video):
    frames by ``smart_nframes``, frame size by ``smart_resize``, two frames a temporal patch."""
    from qwen_vl_utils.vision_process import smart_nframes, smart_resize

    n = smart_nframes({"fps": video_fps, "max_frames": max_frames}, total_frames=total_frames,
                      video_fps=fps)
    h, w = smart_resize(height, width, factor=28, min_pixels=min_pixels, max_pixels=max_pixels)
    return (n + 1) // 2 * (h // 28) * (w // 28)
