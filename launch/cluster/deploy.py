"""Deploy the Serve application the Helm chart renders too, and wait until it is healthy; the
wait fails at once on a replica that failed to start (with the engine's root cause from
the Ray logs) or that no node can hold (``launch.cluster.scheduling``)."""

from __future__ import annotations

import os
import time

from engine.config import ServingConfig

from launch.replicas import FAILED_STATUSES, status_name
from .connect import LaunchError, base_url, connect, http_get, progress_log
from .local_cluster import ClusterState
from .reason import one_line


def _failure_cause(app_status) -> str | None:
    """One readable line from a failed application's status, or None while it is starting.

    A fresh deploy fails at the first replica that fails to start (Serve would retry it several
    times, minutes each for an engine); a running application is left to Serve's own recovery.
    """
    if app_status is None:
        return None
    for dep in app_status.deployments.values():
        if (dep.message or "").startswith("A replica failed to start"):
            return one_line(dep.message) or "a replica failed to start"
    if status_name(app_status.status) == "DEPLOY_FAILED":
        msg = app_status.message or ""
        for dep in app_status.deployments.values():
            if status_name(dep.status) in FAILED_STATUSES:
                msg = dep.message or msg
        return one_line(msg) or "deployment failed (see the Ray logs)"
    return None


def replica_counts(dep) -> str:
    return ", ".join(f"{n} {s}" for s, n in (dep.replica_states or {}).items())


def _progress(app_status, elapsed: float, waiting=()) -> str:
    if app_status is None:
        line = f"[{elapsed:5.0f}s] deploying..."
    else:
        line = f"[{elapsed:5.0f}s] " + "; ".join(
            f"{name}: {replica_counts(dep) or status_name(dep.status)}"
            for name, dep in app_status.deployments.items())
    if waiting:
        from .scheduling import describe

        line += f" (waiting for resources: {describe(list(waiting))})"
    return line


def deploy(cfg: ServingConfig, state: ClusterState) -> None:
    # The application is built in this process, and Ray Serve's builder reads the node flags
    # (HAProxy, which the image-affinity router needs) from this process's environment when
    # it is first imported, here.
    os.environ.update(cfg.ray_env())
    from ray import serve
    from ray.serve.config import HTTPOptions
    from ray.serve import RunTarget

    from launch.app import build_from_args, serve_application

    from launch import drain

    connect(state.address)
    serve.start(http_options=HTTPOptions(host=cfg.server.host, port=cfg.server.port),
                proxy_location=cfg.server.proxy_location)
    drain.clear(cfg.server.app_name)  # a stop that was cut short leaves its flag behind
    # The same application entry the Helm chart renders into its RayService, through the same
    # builder (model_path is cached by now: building the embedded model happened before).
    entry = serve_application(cfg)
    app = build_from_args(entry["args"])
    serve.run_many(
        [RunTarget(target=app, name=entry["name"], route_prefix=entry["route_prefix"])],
        wait_for_ingress_deployment_creation=False,
        wait_for_applications_running=False,
    )


_ROOT_CAUSE_MARKERS = ("Worker failed with error", "ValueError:", "NotImplementedError:",
                       "OSError:", "MemoryError:", "torch.OutOfMemoryError")


def root_cause_from_logs(temp_dir: str) -> str | None:
    """The engine's own error line from the Ray worker logs of the cluster's Ray session, if any.

    vLLM reports "Engine core initialization failed. See root cause above."; the cause itself
    is only in the engine worker's stderr.
    """
    from pathlib import Path

    logs = Path(temp_dir) / "session_latest" / "logs"
    best = None
    for f in sorted(logs.glob("worker-*.err"), key=lambda p: p.stat().st_mtime):
        try:
            lines = f.read_text(errors="replace").splitlines()
        except OSError:
            continue
        for ln in lines:
            if any(m in ln for m in _ROOT_CAUSE_MARKERS) and "Warning" not in ln:
                best = ln.strip()
    return best[:500] if best else None


def wait_healthy(cfg: ServingConfig, timeout_s: float, progress: bool = True,
                 temp_dir: str = "", address: str = "") -> None:
    """Wait until the application runs and /health answers 200. Fails at once when a replica
    failed to start, or when Ray can place a replica on no node and no autoscaler can add
    one (``launch.cluster.scheduling``)."""
    from ray import serve

    from . import scheduling

    url = base_url(cfg.server.host, cfg.server.port) + "/health"
    start = time.monotonic()
    last_print = 0.0
    can_grow = None  # whether an autoscaler may add nodes, asked once when first needed
    while True:
        elapsed = time.monotonic() - start
        app_status = serve.status().applications.get(cfg.server.app_name)
        cause = _failure_cause(app_status)
        if cause:
            if "See root cause above" in cause and temp_dir:
                cause = root_cause_from_logs(temp_dir) or cause
            raise LaunchError(f"deployment failed: {cause}")
        waiting = scheduling.waiting_replicas(cfg.server.app_name)
        infeasible = [w for w in waiting if w.infeasible]
        if infeasible:
            if can_grow is None:
                can_grow = scheduling.autoscaler_present()
            if not can_grow:
                raise LaunchError("cannot be scheduled: " + scheduling.infeasible_message(
                    infeasible, scheduling.alive_nodes(), address or "HEAD:PORT"))
        code, _ = http_get(url, timeout=15)
        running = app_status is not None and status_name(app_status.status) == "RUNNING"
        if code == 200 and running:
            return
        if elapsed > timeout_s:
            raise LaunchError(
                f"not healthy after {timeout_s:.0f}s (server.startup_timeout_s); "
                f"last status: {_progress(app_status, elapsed, waiting)}"
            )
        if progress and elapsed - last_print >= 15:
            progress_log.info(_progress(app_status, elapsed, waiting))
            last_print = elapsed
        time.sleep(2)
