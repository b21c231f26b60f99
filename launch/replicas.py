"""Where every replica of the application runs, and whether it answers: one view for
``qwen-vl status`` and for the ``/health`` route.

Ray Serve's controller knows each replica (state, node, pid). Each replica actor answers the
same ``check_health`` the controller calls, which for an engine replica asks vLLM whether the
engine core lives. A check through a deployment handle would reach one replica at random and
could hide a dead engine behind a live one, so every running replica is asked.
"""

from __future__ import annotations

import asyncio
from typing import Any

SERVE_NAMESPACE = "serve"
FAILED_STATUSES = ("UNHEALTHY", "DEPLOY_FAILED")
LIVE_STATES = ("RUNNING", "RECOVERING")  # replica states whose actor serves requests


async def serve_details() -> dict[str, Any]:
    from .ray_compat import serve_instance_details

    return await serve_instance_details()


async def _probe(actor_name: str, timeout_s: float) -> str:
    import ray

    async def ask():
        # get_actor blocks on the GCS: in a thread, so the caller's event loop goes on
        actor = await asyncio.to_thread(ray.get_actor, actor_name, namespace=SERVE_NAMESPACE)
        await actor.check_health.remote()

    try:
        await asyncio.wait_for(ask(), timeout_s)
        return "healthy"
    except Exception as err:  # any failure is unhealthy; the type is enough for operators
        return f"unhealthy: {type(err).__name__}"


async def replica_report(app_name: str, timeout_s: float = 10.0) -> list[dict[str, Any]]:
    """One row per replica of ``app_name``: deployment, id, state, node, pid, actor name and
    health (``healthy``, ``unhealthy: <error>``, or ``-`` for a replica not running yet/any
    more; running or recovering replicas are asked).

    A deployment that Ray Serve marks UNHEALTHY (a replica failed its health check or died, and
    its replacement is not up yet) adds a row of its own with that health, so the gap between
    a dead engine and its replacement is never reported healthy.

    Bounded: the controller gets ``timeout_s`` (it can be slow while it replaces a replica on a
    busy machine) and so does each probe; beyond that ``TimeoutError``, never a hang."""
    details = await asyncio.wait_for(serve_details(), timeout_s)
    app = (details.get("applications") or {}).get(app_name) or {}
    rows = []
    for dep_name, dep in (app.get("deployments") or {}).items():
        if status_name(dep.get("status")) in FAILED_STATUSES:
            rows.append({"deployment": dep_name, "replica_id": None, "state": None,
                         "node_ip": None, "node_id": None, "pid": None, "actor_name": None,
                         "health": f"unhealthy: deployment {status_name(dep.get('status'))}"})
        for r in dep.get("replicas") or []:
            rows.append({"deployment": dep_name, "replica_id": r.get("replica_id"),
                         "state": status_name(r.get("state")), "node_ip": r.get("node_ip"),
                         "node_id": r.get("node_id"), "pid": r.get("pid"),
                         "actor_name": r.get("actor_name")})
    return await probe(rows, timeout_s)


async def probe(rows: list[dict[str, Any]], timeout_s: float) -> list[dict[str, Any]]:
    """``rows`` with each running or recovering replica asked for its health afresh (the
    others keep theirs, or ``-``)."""
    # A restarted controller lists the replicas it finds as RECOVERING until it has re-attached
    # them; they run and serve all along, so they are asked too.
    live = [row for row in rows if row["state"] in LIVE_STATES and row["actor_name"]]
    results = await asyncio.gather(*(_probe(row["actor_name"], timeout_s) for row in live))
    out = [dict(row) for row in rows]
    asked = {id(row): health for row, health in zip(live, results)}
    for row, copy in zip(rows, out):
        if id(row) in asked:
            copy["health"] = asked[id(row)]
        copy.setdefault("health", "-")
    return out


def status_name(status) -> str:
    """'RUNNING' from ApplicationStatus.RUNNING, DeploymentStatus.RUNNING,
    ReplicaState.RUNNING or 'RUNNING'."""
    return str(status).split(".")[-1]


def healthy(rows: list[dict[str, Any]]) -> bool:
    """Every running replica answers, and every deployment has at least one that does."""
    deployments = {row["deployment"] for row in rows}
    ok = {row["deployment"] for row in rows if row["health"] == "healthy"}
    return bool(rows) and ok == deployments and not any(
        row["health"].startswith("unhealthy") for row in rows)


class ReplicaView:
    """The application's replicas as last seen, refreshed in the background every
    ``REFRESH_S``: ``/health`` answers from it at once and never waits on the Serve
    controller (which can be slow, or restarting, while the replicas serve on)."""

    REFRESH_S = 2.0

    def __init__(self, app_name: str, timeout_s: float):
        self.app_name, self.timeout_s = app_name, timeout_s
        self._rows: list[dict[str, Any]] | None = None
        self._error: str | None = None
        self._task: asyncio.Task | None = None
        self._closed = False

    def start(self) -> None:
        if self._task is None:
            self._task = asyncio.get_running_loop().create_task(self._refresh_forever())

    def close(self) -> None:
        """Stop refreshing (at the end of the current refresh)."""
        self._closed = True

    async def _refresh_forever(self) -> None:
        while not self._closed:
            try:
                self._rows = await replica_report(self.app_name, self.timeout_s)
                self._error = None
            except Exception as err:
                # The controller slow or restarting: the replicas it last listed are asked
                # again directly, so a replica that dies meanwhile is still seen.
                self._error = f"replica states unavailable ({type(err).__name__})"
                if self._rows is not None:
                    try:
                        self._rows = await probe(self._rows, self.timeout_s)
                    except Exception:
                        pass
            await asyncio.sleep(self.REFRESH_S)

    def latest(self) -> tuple[list[dict[str, Any]], str | None]:
        """(rows, failure): failure names why the application is not healthy as last seen,
        None when it is."""
        if self._rows is None:
            return [], self._error or "replica states not known yet"
        return self._rows, None if healthy(self._rows) else "an engine replica is unhealthy"
