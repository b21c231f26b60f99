"""One streamed OpenAI request, timed the way ``vllm bench serve`` times it.

Used by the Locust users (``loadtest/locustfile.py``) and by anything that needs one measured
request. Timing is on the client: TTFT at the first SSE message carrying ``choices``, one ITL per
later ``choices`` message, E2EL at the last one; token counts from the final ``usage`` message.
"""

from __future__ import annotations

import json
import time

import requests

from .metrics import RequestRecord


def post_streaming(session: requests.Session, url: str, body: dict, *, api_key: str | None = None,
                   timeout: float = 3600.0, kind: str = "text", tag: str = "",
                   expected_prompt_tokens: int | None = None) -> RequestRecord:
    """POST ``body`` (``stream`` and ``include_usage`` are set here) and time the SSE stream."""
    body = {**body, "stream": True, "stream_options": {"include_usage": True}}
    headers = {"Authorization": f"Bearer {api_key}"} if api_key else {}
    rec = RequestRecord(start_time=time.time(), kind=kind, tag=tag,
                        expected_prompt_tokens=expected_prompt_tokens)
    st = time.perf_counter()
    last = st
    try:
        with session.post(url, json=body, headers=headers, stream=True, timeout=timeout) as resp:
            rec.status = resp.status_code
            if resp.status_code != 200:
                rec.error = _error_text(resp)
                return rec
            buf = b""
            for chunk in resp.iter_content(chunk_size=None):
                buf += chunk
                while b"\n\n" in buf:
                    event, buf = buf.split(b"\n\n", 1)
                    now = time.perf_counter()
                    for line in event.splitlines():
                        if not line.startswith(b"data:"):
                            continue
                        payload = line[5:].strip()
                        if payload == b"[DONE]":
                            continue
                        data = json.loads(payload)
                        if "error" in data:
                            rec.error = str(data["error"].get("message", data["error"]))
                            return rec
                        if data.get("choices"):
                            if rec.ttft == 0.0:
                                rec.ttft = now - st
                            else:
                                rec.itl.append(now - last)
                            last = now
                        if data.get("usage"):
                            rec.output_tokens = int(data["usage"].get("completion_tokens") or 0)
                            rec.prompt_tokens = int(data["usage"].get("prompt_tokens") or 0)
        rec.latency = last - st
        if rec.ttft == 0.0:
            rec.error = "stream ended without any choices"
        elif rec.output_tokens == 0:
            rec.error = "stream ended without usage (stream_options.include_usage)"
        else:
            rec.success = True
    except (requests.RequestException, ValueError) as err:
        rec.error = f"{type(err).__name__}: {err}"
    return rec


def _error_text(resp: requests.Response) -> str:
    try:
        err = resp.json()["error"]
        return f"HTTP {resp.status_code}: {err.get('message')}"
    except (ValueError, KeyError, TypeError):
        return f"HTTP {resp.status_code}: {resp.text[:300]}"
