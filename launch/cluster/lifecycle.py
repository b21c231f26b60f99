"""The stack's lifecycle: the cluster to deploy on, deploy, wait until healthy, drain, shut
down, describe. ``qwen-vl`` (``launch.cli``), the load tests and the Ray Serve LLM reference
deployment all start and stop through these functions, so each starts the same way.

- ``ensure_cluster``: ``RAY_ADDRESS``'s cluster, the running one ``serve`` started, or a new
  local Ray head (``launch.cluster.local_cluster``);
- ``deploy`` and ``wait_healthy``: the Serve application the Helm chart renders too; the wait
  fails at once on a replica that failed to start or that no node can hold
  (``launch.cluster.scheduling``);
- ``drain_application`` and ``shutdown``: new requests 503, running ones finish, then Serve and
  our processes end;
- ``status_report``: nodes, replicas, what they wait for, health.
"""

from __future__ import annotations

import asyncio
import json
import logging
import os
import sys
import threading
import time
import urllib.error
import urllib.request
from typing import Any, Callable

from engine.config import ServingConfig

from launch.api.errors import one_line
from .local_cluster import (
    ClusterError,
    ClusterState,
    clear_state,
    cluster_processes,
    head_alive,
    port_in_use,
    read_state,
    start_head,
    start_worker,
    stop_processes,
    write_state,
)
from launch.replicas import FAILED_STATUSES, status_name


class LaunchError(RuntimeError):
    """The stack could not be started, reached or stopped; the message is the cause."""


def say(msg: str) -> None:
    print(msg, flush=True)


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


# ---------------------------------------------------------------------------------- start
def start_engine_arg_check(cfg: ServingConfig, model_path: str) -> Callable[[], None]:
    """Check the config's engine arguments against the installed vLLM in a thread: importing
    vLLM takes seconds, which a Ray head's start-up can overlap. The returned function waits for
    the check and raises what it raised (a renamed engine argument, say)."""
    failure: list[BaseException] = []

    def check():
        try:
            cfg.to_engine_kwargs(model_path)
        except BaseException as err:  # re-raised in the caller's thread
            failure.append(err)

    thread = threading.Thread(target=check, name="engine-arg-check", daemon=True)
    thread.start()

    def result() -> None:
        thread.join()
        if failure:
            raise failure[0]

    return result


def ensure_cluster(cfg: ServingConfig) -> tuple[ClusterState, bool]:
    """The cluster to deploy on, and whether this is a redeploy onto a running qwen-vl
    cluster (whose owner is the `serve` that started it, not us)."""
    state = read_state()
    srv = cfg.server
    if state is not None and state.role == "worker":
        raise LaunchError(f"this run directory holds a worker node of {state.address} "
                          f"(`qwen-vl join`); deploy from the head, or `qwen-vl stop` it first")
    if state is not None and state.started_by_us:
        if cluster_processes(state):
            if (state.http_host, state.http_port) != (srv.host, srv.port):
                raise LaunchError(
                    f"a qwen-vl cluster is already running with its API on "
                    f"{base_url(state.http_host, state.http_port)}; run `qwen-vl stop` first"
                )
            running = node_ray_env(state)
            if running is not None and running != srv.ray_env():
                raise LaunchError(
                    "server.ray_throughput_optimized / ray_ha_proxy / replica_deregistration_s "
                    "/ proxy_check_s differ from the "
                    f"running cluster's ({running or 'none'}); Ray reads them when a node "
                    "starts: `qwen-vl stop`, then serve again")
            state.drain_timeout_s = cfg.deployment.drain_timeout_s  # a redeploy may change it
            state.stopping = False  # a stop that was cut short left it running
            write_state(state)
            say(f"redeploying onto the running cluster ({state.address}): Ray Serve replaces "
                 f"replicas a few at a time; requests they hold finish first (at most "
                 f"deployment.drain_timeout_s = {cfg.deployment.drain_timeout_s:.0f}s)")
            return state, True
        clear_state()
    if os.environ.get("RAY_ADDRESS"):  # an existing cluster: deploy there, never stop it
        state = ClusterState(
            address=os.environ["RAY_ADDRESS"], temp_dir="", started_by_us=False,
            metrics_port=srv.metrics_port, http_host=srv.host, http_port=srv.port,
            app_name=srv.app_name, drain_timeout_s=cfg.deployment.drain_timeout_s,
        )
        write_state(state)
        return state, False
    for what, port in (("API", srv.port), ("metrics", srv.metrics_port)):
        if port_in_use(srv.host, port):
            raise LaunchError(
                f"{what} port {port} is already in use; set server."
                f"{'port' if what == 'API' else 'metrics_port'} in the config or free it"
            )
    # Logical CPUs, not cores: an engine replica takes 2 (its actor's bundle and the engine's).
    num_cpus = srv.ray_num_cpus or (2 * cfg.deployment.most_replicas + 2)
    say(f"starting a local Ray head ({num_cpus} logical CPUs)...")
    address, temp_dir = start_head(num_cpus=num_cpus, metrics_port=srv.metrics_port,
                                   node_ip=srv.node_ip_address, port=srv.ray_port,
                                   env=srv.ray_env())
    state = ClusterState(
        address=address, temp_dir=temp_dir, started_by_us=True,
        metrics_port=srv.metrics_port, http_host=srv.host, http_port=srv.port,
        app_name=srv.app_name, drain_timeout_s=cfg.deployment.drain_timeout_s,
    )
    write_state(state)
    return state, False


def node_ray_env(state: ClusterState) -> dict[str, str] | None:
    """The Ray Serve settings (``ServerSettings.ray_env``) a running node's raylet started
    with, or None where it cannot be read."""
    import psutil

    from engine.config import RAY_NODE_ENV

    for pid in cluster_processes(state):
        try:
            p = psutil.Process(pid)
            if p.name() == "raylet":
                env = p.environ()
                return {k: env[k] for k in RAY_NODE_ENV if env.get(k) not in (None, "", "0")}
        except (psutil.NoSuchProcess, psutil.AccessDenied):
            continue
    return None


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


def _replica_counts(dep) -> str:
    return ", ".join(f"{n} {s}" for s, n in (dep.replica_states or {}).items())


def _progress(app_status, elapsed: float, waiting=()) -> str:
    if app_status is None:
        line = f"[{elapsed:5.0f}s] deploying..."
    else:
        line = f"[{elapsed:5.0f}s] " + "; ".join(
            f"{name}: {_replica_counts(dep) or status_name(dep.status)}"
            for name, dep in app_status.deployments.items())
    if waiting:
        from .scheduling import describe

        line += f" (waiting for resources: {describe(list(waiting))})"
    return line


def deploy(cfg: ServingConfig, state: ClusterState) -> None:
    from ray import serve
    from ray.serve.config import HTTPOptions
    from ray.serve.api import RunTarget

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
            say(_progress(app_status, elapsed, waiting))
            last_print = elapsed
        time.sleep(2)


# ----------------------------------------------------------------------------- stop/status
class _stderr_muted:
    """Redirect file descriptor 2 (Ray's background threads write there directly)."""

    def __enter__(self):
        sys.stderr.flush()
        self._saved = os.dup(2)
        devnull = os.open(os.devnull, os.O_WRONLY)
        os.dup2(devnull, 2)
        os.close(devnull)

    def __exit__(self, *exc):
        sys.stderr.flush()
        os.dup2(self._saved, 2)
        os.close(self._saved)
        return False


SHUTDOWN_GRACE_S = 90  # connect + Serve shutdown, on top of the drain timeout
STOPPED_GRACE_S = 2  # SIGTERM to SIGKILL for a cluster whose Serve has shut down


def drain_application(state: ClusterState, quiet: bool = False) -> None:
    """New requests get 503 + Retry-After; wait (``drain_timeout_s`` at most) until every
    replica reports that the requests it held are done (``launch.drain``)."""
    from ray import serve

    from launch import drain
    from launch.app import ENGINE_PREFIX

    app_status = serve.status().applications.get(state.app_name)
    serving = [d for name, d in (app_status.deployments if app_status else {}).items()
               if name.startswith(ENGINE_PREFIX)]
    if not serving:
        return
    replicas = sum((d.replica_states or {}).get("RUNNING", 0) for d in serving)
    since = drain.set_draining(state.app_name)
    deadline = since + state.drain_timeout_s
    last_print, last_held = 0.0, None
    while True:
        reports = drain.inflight_reports(state.app_name, since)
        held = sum(reports.values())
        complete = len(reports) >= replicas  # every replica has answered since the drain set
        if complete and held == 0:
            return
        now = time.time()
        if now >= deadline:
            if not quiet:
                say(f"drain timeout ({state.drain_timeout_s:.0f}s, deployment.drain_timeout_s)"
                     f": {held} requests still running are cut off")
            return
        # Said once every replica has answered (a count before that is partial), then again
        # when the count changes or every 5 s.
        if not quiet and complete and (held != last_held or now - last_print >= 5):
            say(f"draining: {held} requests still running "
                 f"(at most {deadline - now:.0f}s more)")
            last_print, last_held = now, held
        time.sleep(drain.POLL_S)


def shutdown(state: ClusterState, quiet: bool = False) -> None:
    """Our own cluster: drain, Serve down, then every process of it. A cluster we joined via
    RAY_ADDRESS: drain, then only our application is deleted. A worker node we joined: its
    processes only (Serve moves its replicas elsewhere).

    The Serve part runs in a thread with a deadline: a half-dead cluster (GCS up, raylet gone)
    makes ``ray.init`` wait for minutes, and stop must still end every process."""
    if read_state() == state:  # a foreground `serve` of this cluster sees the stop begin
        state.stopping = True
        write_state(state)
    # A head of ours whose GCS server is gone answers no Serve call: ``ray.init`` would wait
    # out the whole deadline below for nothing, so its processes are ended at once.
    head_gone = state.started_by_us and state.role != "worker" and not head_alive(state)
    if head_gone and not quiet:
        say("the Ray head is gone (its GCS server); ending the cluster's processes")
    served_down = threading.Event()  # Serve shut down: no replica holds a request
    if state.role != "worker" and not head_gone:
        done = threading.Event()

        def serve_down():
            try:
                import ray
                from ray import serve

                from launch import drain

                connect(state.address)
                drain_application(state, quiet)
                with _stderr_muted():  # Ray prints noise about its dying controller
                    if state.started_by_us:
                        serve.shutdown()
                    else:
                        serve.delete(state.app_name)
                        drain.clear(state.app_name)
                    served_down.set()
                    ray.shutdown()
            except Exception as err:  # the cluster may be gone; processes are reaped below
                if not quiet:
                    say(f"serve shutdown: {one_line(str(err))}")
            finally:
                done.set()

        threading.Thread(target=serve_down, daemon=True).start()
        if not done.wait(state.drain_timeout_s + SHUTDOWN_GRACE_S):
            say(f"serve shutdown: no answer from the cluster in "
                 f"{state.drain_timeout_s + SHUTDOWN_GRACE_S:.0f}s; ending its processes")
    if state.started_by_us:
        # With Serve down nothing in flight is left to lose, and Ray's daemons (GCS server,
        # raylet, agents) take SIGTERM as a request to linger: a short grace before SIGKILL.
        stop_processes(state, grace_s=STOPPED_GRACE_S if served_down.is_set() else 10)
    clear_state()


def cluster_ended(state: ClusterState) -> tuple[int, str] | None:
    """Why the head a foreground ``serve`` started is gone, with the exit code that ``serve``
    then ends with; None while it runs. Stopped by ``qwen-vl stop`` from another shell: 0 (that
    stop drains and ends it). Its GCS server gone without a stop: 1, with the root cause the
    Ray logs hold, as a failed start reports it."""
    current = read_state()
    if current is None or current.address != state.address or current.stopping:
        return 0, "stopped by `qwen-vl stop` elsewhere; this `serve` ends with it"
    if head_alive(state):
        return None
    cause = root_cause_from_logs(state.temp_dir)
    return 1, ("the Ray head died (its GCS server is gone); nothing is served any more"
               + (f". Root cause: {cause}" if cause else f"; its logs: {state.temp_dir}"
                  "/session_latest/logs") + ". `qwen-vl stop` clears what is left")


def abandon_start(state: ClusterState) -> None:
    """End a head this start created: it has served nothing yet, so its processes end without
    a Serve shutdown, which would wait on replicas that never started."""
    clear_state()
    try:
        stop_processes(state, grace_s=3)
    except ClusterError as err:  # the start's own failure is the one to report
        say(f"stopping: {err}")


def needs_download(cfg: ServingConfig) -> bool:
    """Whether the checkpoint comes from the Hugging Face Hub (not embedded, not a local path)."""
    from engine.checkpoint import is_local_path
    from engine.embedded_model import is_embedded

    return not (is_embedded(cfg.model.source) or is_local_path(cfg.model.source))


def download_checkpoint(cfg: ServingConfig) -> str:
    """Fetch the Hub checkpoint into the Hugging Face cache; its local path."""
    from huggingface_hub import snapshot_download

    return snapshot_download(cfg.model.source, revision=cfg.model.revision)


def join_cluster(address: str, *, num_cpus: int, num_gpus: int | None, metrics_port: int,
                 node_ip: str, env: dict[str, str] | None = None) -> None:
    """Start a Ray worker node that joins the cluster at ``address`` (a head that ``serve``
    started, or any Ray cluster) and record it in the run directory; Serve places replicas
    on it."""
    state = read_state()
    if state is not None:
        if cluster_processes(state):
            raise LaunchError(f"this run directory already holds a {state.role} of "
                              f"{state.address}; `qwen-vl stop` it first, or set "
                              "QWEN_VL_RUN_DIR to another directory")
        clear_state()
    temp_dir = start_worker(address, num_cpus=num_cpus, num_gpus=num_gpus,
                            metrics_port=metrics_port, node_ip=node_ip, env=env)
    write_state(ClusterState(address=address, temp_dir=temp_dir, started_by_us=True,
                             metrics_port=metrics_port, http_host="", http_port=0,
                             app_name="", role="worker"))


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


def use_token_auth() -> None:
    """Ray 2.60 turns token auth on implicitly when ~/.ray/auth_token exists; be explicit so the
    head we start and this client always agree (``start_head`` creates the token if missing)."""
    os.environ.setdefault("RAY_AUTH_MODE", "token")



def status_report(state: ClusterState) -> tuple[list[str], int]:
    """``qwen-vl status``'s lines for a recorded cluster, and its exit code (0: healthy)."""
    from ray import serve

    from launch.replicas import replica_report
    from .scheduling import alive_nodes, describe, nodes_summary, waiting_replicas

    out: list[str] = []
    line = out.append

    connect(state.address)
    line(f"cluster: {state.address} (started by qwen-vl: {state.started_by_us}"
         + (", this machine is a worker node)" if state.role == "worker" else ")"))
    nodes = node_rows()
    line(f"nodes:   {sum(n['alive'] for n in nodes)} alive")
    for n in nodes:
        line(f"  {n['node_id'][:12]}  {n['ip']:<15} {'head  ' if n['head'] else 'worker'} "
             f"{'alive' if n['alive'] else 'DEAD '}  CPU {n['cpus']:g}, GPU {n['gpus']:g}")
    if state.role == "worker":
        return out, 0
    status = serve.status().applications.get(state.app_name)
    url = base_url(state.http_host, state.http_port)
    code, body = http_get(url + "/health", timeout=15)
    line(f"api:     {url}/v1")
    if state.temp_dir:
        line(f"logs:    {state.temp_dir}/session_latest/logs")
    if status is None:
        line("application: not deployed")
        return out, 1
    line(f"application {state.app_name}: {status_name(status.status)}")
    for name, dep in status.deployments.items():
        line(f"  {name}: {status_name(dep.status)} ({_replica_counts(dep) or 'no replicas'})")
    waiting = waiting_replicas(state.app_name)
    if waiting:
        line(f"waiting: {describe(waiting)}; {nodes_summary(alive_nodes())}")
    line("replicas:")
    for r in asyncio.run(replica_report(state.app_name)):
        if r["replica_id"] is None:  # the deployment itself is marked unhealthy by Serve
            line(f"  {r['deployment']:<28} {r['health']}")
            continue
        line(f"  {r['deployment']:<28} {r['replica_id']:<10} {r['state']:<9} "
             f"node {r['node_ip']} ({(r['node_id'] or '')[:12]})  pid {r['pid']}  {r['health']}")
    health = (body or {}).get("status") or ((body or {}).get("error") or {}).get("message")
    line(f"health:  {'ok' if code == 200 else f'HTTP {code}'} ({health})")
    return out, 0 if code == 200 else 1
