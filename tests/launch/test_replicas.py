"""The replicas' view behind ``/health`` and ``qwen-vl status`` (``launch.replicas``), with the
controller and the replica actors stood in for: what is asked, and what is kept when the
controller does not answer."""

from __future__ import annotations

import asyncio

import pytest

from launch import replicas


def row(rid, state="RUNNING", actor=True):
    return {"deployment": "QwenVLServer:m", "replica_id": rid, "state": state, "node_ip": "n",
            "node_id": "n", "pid": 1, "actor_name": f"actor-{rid}" if actor else None}


@pytest.fixture
def actors(monkeypatch):
    """Replica actors by name: healthy unless listed as dead."""
    dead: set[str] = set()
    asked: list[str] = []

    async def fake_probe(name, timeout_s):
        asked.append(name)
        return "unhealthy: EngineDeadError" if name in dead else "healthy"

    monkeypatch.setattr(replicas, "_probe", fake_probe)
    return dead, asked


def test_running_and_recovering_replicas_are_asked_the_others_are_not(actors):
    _, asked = actors
    rows = [row("a"), row("b", "RECOVERING"), row("c", "STARTING"), row("d", "STOPPING")]
    out = asyncio.run(replicas.probe(rows, 1.0))
    assert [r["health"] for r in out] == ["healthy", "healthy", "-", "-"]
    assert asked == ["actor-a", "actor-b"]
    assert all("health" not in r for r in rows)  # the input is left as it was
    assert replicas.healthy(out)


def test_with_the_controller_silent_the_last_replicas_are_asked_again(actors, monkeypatch):
    """A replica that dies while the controller cannot answer is seen dead at the next refresh:
    the view asks the replicas it knows directly."""
    dead, _ = actors
    calls = {"n": 0}

    async def details():
        calls["n"] += 1
        if calls["n"] > 1:
            raise TimeoutError
        return {"applications": {"app": {"deployments": {"QwenVLServer:m": {
            "status": "HEALTHY", "replicas": [row("a"), row("b")]}}}}}

    monkeypatch.setattr(replicas, "serve_details", details)
    monkeypatch.setattr(replicas.ReplicaView, "REFRESH_S", 0.01)

    async def run():
        view = replicas.ReplicaView("app", 1.0)
        view.start()
        while calls["n"] < 1 or view.latest()[0] == []:
            await asyncio.sleep(0.01)
        first = view.latest()
        dead.add("actor-b")
        seen = calls["n"]
        # Two more refreshes begin: the one between them, wholly after the death, has probed.
        while calls["n"] < seen + 2:
            await asyncio.sleep(0.01)
        view.close()
        return first, view.latest()

    (rows1, failure1), (rows2, failure2) = asyncio.run(run())
    assert failure1 is None and [r["health"] for r in rows1] == ["healthy", "healthy"]
    assert [r["health"] for r in rows2] == ["healthy", "unhealthy: EngineDeadError"]
    assert failure2 == "an engine replica is unhealthy"
