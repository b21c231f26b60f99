"""Where the stack reaches into Ray's private modules. Each use says why, and which public API
would replace it."""

from __future__ import annotations

from typing import Any


def __getattr__(name: str):
    """``SkipNodeInit`` is made when first asked for (the engine replica's Ray Serve LLM loads it
    by its import path). ``qwen-vl stop`` imports this module (through ``launch.drain``) before
    it connects, and with Ray Serve LLM's internals imported first, Ray 2.60's ``ray.init``
    fails to connect to a local head ("Failed to connect to Ray cluster")."""
    if name == "SkipNodeInit":
        globals()[name] = _skip_node_init()
        return globals()[name]
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")


def _skip_node_init() -> type:
    from ray.llm._internal.common.callbacks.base import CallbackBase

    class SkipNodeInit(CallbackBase):
        """Ray Serve LLM, before each engine starts, runs a task on every node of the
        replica's placement group that fetches the model from a cloud mirror
        (``mirror_config``, or an s3:// or gs:// source). The stack's sources are a Hugging
        Face id, a local checkpoint directory or an embedded model, which that task returns
        unchanged; it costs a fresh Ray worker process that imports torch and transformers on
        every replica start, so it is skipped.

        Named in ``LLMConfig.callback_config`` by its import path. Public replacement: a
        ``run_init_node`` switch on ``ray.serve.llm``'s callback configuration (``CallbackCtx``
        holds it; its base class is not exported)."""

        async def on_before_node_init(self) -> None:
            self.ctx.run_init_node = False

    SkipNodeInit.__module__, SkipNodeInit.__qualname__ = __name__, "SkipNodeInit"
    return SkipNodeInit


# Ray's internal key-value store (the GCS's): the drain flag and each replica's in-flight count
# (``launch.drain``) must be readable by every replica and by ``qwen-vl stop`` without an actor
# that a dying cluster may have lost first. Public replacement: none in Ray 2.60 (a named
# detached actor, as the quota ledger uses, is the public way, at the cost of one more process).
def kv_put(key: bytes, value: bytes, namespace: str) -> None:
    from ray.experimental import internal_kv

    internal_kv._internal_kv_put(key, value, overwrite=True, namespace=namespace)


def kv_get(key: bytes | str, namespace: str | None = None) -> bytes | None:
    from ray.experimental import internal_kv

    return internal_kv._internal_kv_get(key, namespace=namespace)


def kv_delete(key: bytes, namespace: str, by_prefix: bool = False) -> None:
    from ray.experimental import internal_kv

    internal_kv._internal_kv_del(key, del_by_prefix=by_prefix, namespace=namespace)


def kv_keys(prefix: bytes, namespace: str) -> list[bytes]:
    from ray.experimental import internal_kv

    return internal_kv._internal_kv_list(prefix, namespace=namespace)


async def serve_instance_details() -> dict:
    """Every application, deployment and replica (state, node, pid, actor name) as Serve's
    controller holds them. Public replacement: the dashboard's REST API
    (``GET /api/serve/applications/``, ``ServeInstanceDetails``), which needs the dashboard
    running and its address; ``serve.status()`` lacks the replicas' actors and nodes."""
    from ray.serve.context import _get_global_client

    return await _get_global_client()._controller.get_serve_instance_details.remote()


def autoscaler_v2() -> bool:
    """Whether the cluster runs Ray's v2 autoscaler (KubeRay's). Public replacement: none; the
    autoscaler's state API (``ray.autoscaler.v2.sdk``) is marked internal as well."""
    from ray.autoscaler.v2.utils import is_autoscaler_v2

    return is_autoscaler_v2(fetch_from_server=True)


def autoscaler_report() -> bytes | None:
    """The v1 autoscaler's status, as ``ray status`` reads it (Ray's own key in its store).
    Public replacement: ``ray status``'s output, which is text for people, not a format."""
    return kv_get("__autoscaling_status")


def with_ingress_router(app: Any, llm_config: Any) -> Any:
    """The engine deployment's application with Ray Serve LLM's ingress request router
    (``LLMRouter``, one replica, no CPUs) attached: HAProxy asks it for each request's replica,
    and it asks the deployment's ``request_router_config`` policy (``launch.router.affinity``),
    handing it the request body. This is how Ray Serve LLM's own direct-streaming builder
    (``build_openai_app``) wires it. Public replacement: none in Ray 2.60
    (``Application._with_ingress_request_router`` is marked internal and unstable); a public
    ``ingress_request_router`` argument to ``serve.run`` or the builder would replace both."""
    from ray.llm._internal.serve.core.ingress.builder import (
        _build_openai_ingress_request_router,
    )

    return app._with_ingress_request_router(
        _build_openai_ingress_request_router(server=app, llm_config=llm_config))


def serve_http_in_place() -> None:
    """The engine replica's HTTP server hands each API request to the API's ASGI app itself.

    With direct ingress (HAProxy forwards to each replica's own HTTP server), Ray Serve wraps
    every request before the app sees it: request ids and metadata, a request-context
    variable, a task that watches for the client's disconnect, the ongoing-request semaphore,
    per-request metrics and an access-log record, and, with user code on its own event loop,
    every ASGI message passed between two loops. On short requests that wrapping is a large
    share of the replica's CPU (docs/benchmarks/2026-12-07-replica-serves-http-in-place.md),
    and the API does each part itself: its own limits (``deployment.max_ongoing_requests``,
    503 ``overloaded``), request metrics and access-log line; vLLM's handlers abort a request
    whose client disconnects.

    What stays Ray's: the replica's ongoing-request count, raised and lowered around each
    request, which autoscaling and graceful shutdown (a stopping replica waits for it to reach
    zero) read; Ray's own routes (``/-/healthz``, ``/-/routes``: HAProxy's health checks),
    lifespan and websocket scopes; and every request while the app is not built yet or user
    code runs on a loop of its own (``RAY_SERVE_RUN_USER_CODE_IN_SEPARATE_THREAD`` set to 1 in
    ``deployment.env``): the app must run on the loop that serves HTTP.

    Replaces ``Replica._direct_ingress_asgi`` for this process (the replica calls it before its
    HTTP server starts, so the server takes the replacement). Public replacement: none in Ray
    2.60; a deployment option to serve a raw ASGI app on the direct-ingress server would."""
    from ray.serve._private.common import RequestMetadata, RequestProtocol
    from ray.serve._private.replica import Replica

    if getattr(Replica, "_qwen_vl_in_place", False):
        return
    wrapped = Replica._direct_ingress_asgi
    # What the ongoing-request count reads of a request: its protocol and that it came
    # directly (the count per ingress protocol); the same for every API request.
    counted = RequestMetadata(request_id="", internal_request_id="",
                              _request_protocol=RequestProtocol.HTTP, is_direct_ingress=True)

    async def direct_ingress_asgi(self, scope, receive, send):
        app = self._user_callable_asgi_app
        if (app is None or scope["type"] != "http" or scope["path"].startswith("/-/")
                or self._route_prefix not in (None, "", "/")
                or self._user_callable_wrapper._run_user_code_in_separate_thread):
            return await wrapped(self, scope, receive, send)
        metrics = self._metrics_manager
        metrics.inc_num_ongoing_requests(counted)
        try:
            await app(scope, receive, send)
        finally:
            metrics.dec_num_ongoing_requests(counted)

    Replica._direct_ingress_asgi = direct_ingress_asgi
    Replica._qwen_vl_in_place = True
