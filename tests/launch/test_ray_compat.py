"""``launch.ray_compat.serve_http_in_place`` against Ray's own replica class: what it hands to
the API's app, what it leaves to Ray's wrapper, and that the attributes it reads are Ray's."""

from __future__ import annotations

import asyncio
import inspect
from types import SimpleNamespace

import pytest
from ray.serve._private import replica as ray_replica

from launch.ray_compat import serve_http_in_place


class Count:
    """Ray's ongoing-request count, as the replica's metrics manager keeps it."""

    def __init__(self):
        self.value = 0
        self.protocols = set()

    def inc_num_ongoing_requests(self, meta):
        self.value += 1
        self.protocols.add((meta.protocol, meta.is_direct_ingress))

    def dec_num_ongoing_requests(self, meta):
        self.value -= 1


@pytest.fixture
def patched(monkeypatch):
    """Ray's replica class with a recording stand-in for its own direct-ingress method, then
    patched; both restored after the test."""
    seen = []

    async def rays_own(self, scope, receive, send):
        seen.append(scope["path"] if "path" in scope else scope["type"])

    monkeypatch.setattr(ray_replica.Replica, "_direct_ingress_asgi", rays_own)
    monkeypatch.setattr(ray_replica.Replica, "_qwen_vl_in_place", False, raising=False)
    serve_http_in_place()
    serve_http_in_place()  # a second call changes nothing
    return seen


def replica(app, separate_thread=False, route_prefix="/"):
    return SimpleNamespace(
        _user_callable_asgi_app=app, _route_prefix=route_prefix, _metrics_manager=Count(),
        _user_callable_wrapper=SimpleNamespace(_run_user_code_in_separate_thread=separate_thread))


def call(rep, scope):
    return asyncio.run(ray_replica.Replica._direct_ingress_asgi(rep, scope, None, None))


def http(path):
    return {"type": "http", "path": path, "method": "POST", "headers": []}


def test_an_api_request_goes_to_the_app_counted_as_ongoing(patched):
    during = []

    async def app(scope, receive, send):
        during.append((scope["path"], rep._metrics_manager.value))

    rep = replica(app)
    call(rep, http("/v1/chat/completions"))
    assert during == [("/v1/chat/completions", 1)] and rep._metrics_manager.value == 0
    assert rep._metrics_manager.protocols == {(ray_replica.RequestProtocol.HTTP, True)}
    assert patched == []  # Ray's wrapper never saw it


def test_the_count_falls_back_when_the_app_fails(patched):
    async def app(scope, receive, send):
        raise asyncio.CancelledError  # the client went away mid-request

    rep = replica(app)
    with pytest.raises(asyncio.CancelledError):
        call(rep, http("/v1/completions"))
    assert rep._metrics_manager.value == 0


@pytest.mark.parametrize("rep,scope", [
    (replica(object()), http("/-/healthz")),  # HAProxy's health check
    (replica(object()), http("/-/routes")),
    (replica(object()), {"type": "lifespan"}),
    (replica(None), http("/v1/models")),  # the app is not built yet
    (replica(object(), separate_thread=True), http("/v1/models")),  # the app on another loop
    (replica(object(), route_prefix="/api"), http("/api/v1/models")),
], ids=["healthz", "routes", "lifespan", "no-app", "separate-thread", "route-prefix"])
def test_what_stays_with_rays_wrapper(patched, rep, scope):
    call(rep, scope)
    assert patched == [scope.get("path", scope["type"])]
    assert rep._metrics_manager.value == 0


def test_what_it_reads_is_rays():
    """The attributes the replacement reads, in Ray's own code: a Ray that renames one fails
    here, not in a replica."""
    source = inspect.getsource(ray_replica)
    for attr in ("self._user_callable_asgi_app", "self._route_prefix", "self._metrics_manager",
                 "self._run_user_code_in_separate_thread"):
        assert f"{attr} =" in source or f"{attr}: " in source, attr
    direct = inspect.signature(ray_replica.Replica._direct_ingress_asgi)
    assert list(direct.parameters) == ["self", "scope", "receive", "send"]
    for method in ("inc_num_ongoing_requests", "dec_num_ongoing_requests"):
        assert callable(getattr(ray_replica.ReplicaMetricsManager, method))
