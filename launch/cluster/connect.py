"""Reaching a cluster from the operator's side: Ray's client connection, the API's URL and
a GET against it, the nodes Ray lists, and this layer's error type and progress lines."""

from __future__ import annotations

import json
import logging
import os
import urllib.error
import urllib.request
from typing import Any


class LaunchError(RuntimeError):
    """The stack could not be started, reached or stopped; the message is the cause."""


# The operator side's progress lines (starting a head, waiting, draining) go to this logger: the
# CLIs decide where they appear (``print_progress``); a library caller sees them as log records.
progress_log = logging.getLogger("launch.cluster")


def print_progress(stream=None) -> None:
    """Print the progress lines, bare, on ``stream`` (standard output): the CLIs' choice."""
    import sys

    if progress_log.handlers:  # asked already
        return
    handler = logging.StreamHandler(stream or sys.stdout)
    handler.setFormatter(logging.Formatter("%(message)s"))
    progress_log.addHandler(handler)
    progress_log.setLevel(logging.INFO)
    progress_log.propagate = False


def _quiet_ray_logs() -> None:
    os.environ.setdefault("RAY_DEDUP_LOGS", "1")
    for name in ("ray", "ray.serve", "ray.llm"):
        logging.getLogger(name).setLevel(logging.WARNING)


def connect(address: str) -> None:
    import ray

    _quiet_ray_logs()
    if not ray.is_initialized():
        ray.init(
            address=address,
            namespace="serve",
            log_to_driver=False,
            logging_level=logging.WARNING,
        )


def use_token_auth() -> None:
    """Ray 2.60 turns token auth on implicitly when ~/.ray/auth_token exists; be explicit so the
    head we start and this client always agree (``start_head`` creates the token if missing)."""
    os.environ.setdefault("RAY_AUTH_MODE", "token")


def base_url(host: str, port: int) -> str:
    host = "127.0.0.1" if host in ("0.0.0.0", "::") else host
    return f"http://{host}:{port}"


def http_get(url: str, timeout: float = 5.0) -> tuple[int, Any]:
    try:
        with urllib.request.urlopen(url, timeout=timeout) as r:
            body = r.read()
            return r.status, json.loads(body) if body else None
    except urllib.error.HTTPError as e:
        try:
            return e.code, json.loads(e.read() or b"null")
        except ValueError:
            return e.code, None
    except (urllib.error.URLError, OSError, ValueError):
        return 0, None


def node_rows() -> list[dict[str, Any]]:
    import ray

    rows = []
    for n in ray.nodes():
        res = n.get("Resources") or {}
        rows.append({"node_id": n["NodeID"], "ip": n.get("NodeManagerAddress"),
                     "alive": bool(n.get("Alive")),
                     "head": "node:__internal_head__" in res,
                     "cpus": res.get("CPU", 0), "gpus": res.get("GPU", 0)})
    return rows
