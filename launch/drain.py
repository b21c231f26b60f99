"""Graceful drain, shared by every replica through Ray's internal key-value store
(``launch.ray_compat``).

``qwen-vl stop`` (and SIGTERM of ``qwen-vl serve``) sets the application's drain flag. Each
replica polls it (``POLL_S``); once set, new API requests get 503 with Retry-After,
while requests already running go on. While draining, each replica reports how many requests it
still holds, and the CLI waits for all to reach zero (or ``deployment.drain_timeout_s``) before
Ray Serve takes the application down. A redeploy needs no flag: Ray Serve's graceful shutdown
(``graceful_shutdown_timeout_s`` = the drain timeout) lets old replicas finish their requests
while new ones take the traffic.
"""

from __future__ import annotations

import json
import time

from .ray_compat import kv_delete, kv_get, kv_keys, kv_put

POLL_S = 0.5
NAMESPACE = "qwen_vl_serving"


def _flag_key(app: str) -> bytes:
    return f"drain/{app}".encode()


def _inflight_prefix(app: str) -> bytes:
    return f"inflight/{app}/".encode()


def set_draining(app: str) -> float:
    """Raise the flag; returns the time it was raised (reports older than it are stale)."""
    now = time.time()
    kv_put(_flag_key(app), str(now).encode(), NAMESPACE)
    return now


def clear(app: str) -> None:
    kv_delete(_flag_key(app), NAMESPACE)
    kv_delete(_inflight_prefix(app), NAMESPACE, by_prefix=True)


def is_draining(app: str) -> bool:
    return kv_get(_flag_key(app), NAMESPACE) is not None


def report_inflight(app: str, replica: str, count: int) -> None:
    kv_put(_inflight_prefix(app) + replica.encode(),
           json.dumps({"count": count, "at": time.time()}).encode(), NAMESPACE)


def inflight_reports(app: str, since: float) -> dict[str, int]:
    """Requests still held, per replica, from reports made after ``since``."""
    out = {}
    prefix = _inflight_prefix(app)
    for key in kv_keys(prefix, NAMESPACE):
        raw = kv_get(key, NAMESPACE)
        try:
            report = json.loads(raw)
        except (TypeError, ValueError):
            continue
        if report["at"] >= since:
            out[key[len(prefix):].decode()] = int(report["count"])
    return out
