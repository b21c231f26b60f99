"""``qwen-vl``: serve, stop and inspect the stack.

    qwen-vl serve --config configs/default.yaml [--detach]
    qwen-vl join --address HOST:PORT      (on another machine: add a worker node)
    qwen-vl status
    qwen-vl stop
    qwen-vl plan --config F [--device L4] [--rps 2] ...   (capacity plan, nothing started)

A failed command exits non-zero with its cause in one line (exit 2: bad config; 1: anything else).
"""

from __future__ import annotations

import argparse
import json
import logging
import os
import signal
import sys
import threading
import time
import urllib.error
import urllib.request
from typing import Any

from engine.config import ConfigError, ServingConfig, load_config

from .errors import one_line
from .local_cluster import (
    ClusterError,
    ClusterState,
    clear_state,
    free_port,
    port_in_use,
    read_state,
    start_head,
    start_worker,
    stop_processes,
    write_state,
)
from .replicas import FAILED_STATUSES, status_name

log = logging.getLogger("qwen-vl")


class LaunchError(RuntimeError):
    """The stack could not be started, reached or stopped; the message is the cause."""


def _say(msg: str) -> None:
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


# ---------------------------------------------------------------------------------- serve
def ensure_cluster(cfg: ServingConfig) -> tuple[ClusterState, bool]:
    """The cluster to deploy on, and whether this is a redeploy onto a running qwen-vl
    cluster (whose owner is the `serve` that started it, not us)."""
    state = read_state()
    srv = cfg.server
    if state is not None and state.role == "worker":
        raise LaunchError(f"this run directory holds a worker node of {state.address} "
                          f"(`qwen-vl join`); deploy from the head, or `qwen-vl stop` it first")
    if state is not None and state.started_by_us:
        from .local_cluster import cluster_processes

        if cluster_processes(state):
            if (state.http_host, state.http_port) != (srv.host, srv.port):
                raise LaunchError(
                    f"a qwen-vl cluster is already running with its API on "
                    f"{base_url(state.http_host, state.http_port)}; run `qwen-vl stop` first"
                )
            state.drain_timeout_s = cfg.deployment.drain_timeout_s  # a redeploy may change it
            write_state(state)
            _say(f"redeploying onto the running cluster ({state.address}): Ray Serve replaces "
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
    _say(f"starting a local Ray head ({num_cpus} logical CPUs)...")
    address, temp_dir = start_head(num_cpus=num_cpus, metrics_port=srv.metrics_port,
                                   node_ip=srv.node_ip_address, port=srv.ray_port)
    state = ClusterState(
        address=address, temp_dir=temp_dir, started_by_us=True,
        metrics_port=srv.metrics_port, http_host=srv.host, http_port=srv.port,
        app_name=srv.app_name, drain_timeout_s=cfg.deployment.drain_timeout_s,
    )
    write_state(state)
    return state, False


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

    from .app import build_from_args, serve_application

    from . import drain

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
    """The engine's own error line from the Ray worker logs of this session, if any.

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
    one (``launch.scheduling``)."""
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
            _say(_progress(app_status, elapsed, waiting))
            last_print = elapsed
        time.sleep(2)


def curl_example(cfg: ServingConfig) -> str:
    url = base_url(cfg.server.host, cfg.server.port)
    # A 28x28 red PNG (the smallest image accepted), so the example is self-contained.
    png = (
        "iVBORw0KGgoAAAANSUhEUgAAABwAAAAcCAIAAAD9b0jDAAAAKElEQVR42mM8ISfHQG3AxEADMGroqKGjho4aOmroqKGjho4aOvgMBQB+BAE8FfyCFgAAAABJRU5ErkJggg=="
    )
    body = {
        "model": cfg.model.served_name,
        "messages": [{"role": "user", "content": [
            {"type": "image_url", "image_url": {"url": f"data:image/png;base64,{png}"}},
            {"type": "text", "text": "What is in this image?"},
        ]}],
        "max_tokens": 32,
    }
    return (
        f"curl -s {url}/v1/chat/completions -H 'Content-Type: application/json' \\\n"
        f"  -d '{json.dumps(body)}'"
    )


def _interrupt(*_):
    raise KeyboardInterrupt


def cmd_serve(args) -> int:
    # SIGTERM while starting unwinds like Ctrl-C: what was started is stopped again.
    signal.signal(signal.SIGTERM, _interrupt)
    cfg = load_config(args.config)
    _say(f"model {cfg.model.served_name} from {cfg.model.source}")
    model_path = cfg.model_path()  # builds the embedded model on first use
    cfg.to_engine_kwargs(model_path)  # fail on engine-arg drift before starting anything
    state, redeploy = ensure_cluster(cfg)
    try:
        deploy(cfg, state)
        signal.signal(signal.SIGTERM, _interrupt)  # ray.init installed its own
        wait_healthy(cfg, cfg.server.startup_timeout_s, temp_dir=state.temp_dir,
                     address=state.address)
    except BaseException:
        # A failed redeploy leaves the running cluster up (fix the config and deploy again).
        # A head this command started has served nothing yet: its processes are ended without
        # a Serve shutdown, which would wait on replicas that never started.
        if state.started_by_us and not redeploy and not args.keep_on_failure:
            _say("start failed; stopping the Ray head this command started")
            clear_state()
            try:
                stop_processes(state, grace_s=3)
            except ClusterError as err:  # the start's own failure is the one to report
                _say(f"stopping: {err}")
        raise
    url = base_url(cfg.server.host, cfg.server.port)
    if redeploy:
        _say(f"\nredeployed: {url}/v1  (model: {cfg.model.served_name}); the cluster stays "
             f"with the `qwen-vl serve` that started it (`qwen-vl stop` ends it)")
        return 0
    _say(f"\nready: {url}/v1  (model: {cfg.model.served_name})")
    _say(f"metrics: http://127.0.0.1:{cfg.server.metrics_port}/metrics")
    _say("try it:\n" + curl_example(cfg) + "\n")
    if state.started_by_us:
        _say(f"add a worker node (another machine): qwen-vl join --address {state.address}")
    if args.detach:
        _say("running in the background; stop it with `qwen-vl stop`")
        return 0
    _say("serving; press Ctrl-C to stop")
    stop = threading.Event()
    for sig in (signal.SIGINT, signal.SIGTERM):
        signal.signal(sig, lambda *_: stop.set())
    while not stop.wait(1):
        pass
    _say("stopping...")
    t0 = time.monotonic()
    shutdown(state)
    _say(f"stopped ({time.monotonic() - t0:.0f}s)")
    return 0


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


def drain_application(state: ClusterState, quiet: bool = False) -> None:
    """New requests get 503 + Retry-After; wait (``drain_timeout_s`` at most) until every
    ingress replica reports that the requests it held are done (``launch.drain``)."""
    from ray import serve

    from . import drain
    from .app import INGRESS_DEPLOYMENT

    app_status = serve.status().applications.get(state.app_name)
    if app_status is None or INGRESS_DEPLOYMENT not in app_status.deployments:
        return
    ingresses = (app_status.deployments[INGRESS_DEPLOYMENT].replica_states or {}).get(
        "RUNNING", 0)
    since = drain.set_draining(state.app_name)
    deadline = since + state.drain_timeout_s
    last_print = 0.0
    while True:
        reports = drain.inflight_reports(state.app_name, since)
        held = sum(reports.values())
        if len(reports) >= ingresses and held == 0:
            return
        now = time.time()
        if now >= deadline:
            if not quiet:
                _say(f"drain timeout ({state.drain_timeout_s:.0f}s, deployment.drain_timeout_s)"
                     f": {held} requests still running are cut off")
            return
        if not quiet and now - last_print >= 5:
            _say(f"draining: {held} requests still running "
                 f"(at most {deadline - now:.0f}s more)")
            last_print = now
        time.sleep(drain.POLL_S)


def shutdown(state: ClusterState, quiet: bool = False) -> None:
    """Our own cluster: drain, Serve down, then every process of it. A cluster we joined via
    RAY_ADDRESS: drain, then only our application is deleted. A worker node we joined: its
    processes only (Serve moves its replicas elsewhere).

    The Serve part runs in a thread with a deadline: a half-dead cluster (GCS up, raylet gone)
    makes ``ray.init`` wait for minutes, and stop must still end every process."""
    if state.role != "worker":
        done = threading.Event()

        def serve_down():
            try:
                import ray
                from ray import serve

                from . import drain

                connect(state.address)
                drain_application(state, quiet)
                with _stderr_muted():  # Ray prints noise about its dying controller
                    if state.started_by_us:
                        serve.shutdown()
                    else:
                        serve.delete(state.app_name)
                        drain.clear(state.app_name)
                    ray.shutdown()
            except Exception as err:  # the cluster may be gone; processes are reaped below
                if not quiet:
                    _say(f"serve shutdown: {one_line(str(err))}")
            finally:
                done.set()

        threading.Thread(target=serve_down, daemon=True).start()
        if not done.wait(state.drain_timeout_s + SHUTDOWN_GRACE_S):
            _say(f"serve shutdown: no answer from the cluster in "
                 f"{state.drain_timeout_s + SHUTDOWN_GRACE_S:.0f}s; ending its processes")
    if state.started_by_us:
        stop_processes(state)
    clear_state()


def cmd_stop(args) -> int:
    state = read_state()
    if state is None:
        _say("nothing to stop (no qwen-vl cluster recorded)")
        return 0
    t0 = time.monotonic()
    shutdown(state)
    _say(f"stopped ({time.monotonic() - t0:.0f}s)")
    return 0


def cmd_join(args) -> int:
    """Start a Ray worker node that joins the cluster at ``--address`` (a head that
    ``qwen-vl serve`` started, or any Ray cluster); Serve places replicas on it."""
    state = read_state()
    if state is not None:
        from .local_cluster import cluster_processes

        if cluster_processes(state):
            raise LaunchError(f"this run directory already holds a {state.role} of "
                              f"{state.address}; `qwen-vl stop` it first, or set "
                              "QWEN_VL_RUN_DIR to another directory")
        clear_state()
    metrics_port = args.metrics_port or free_port()
    _say(f"joining {args.address} as a worker node ({args.num_cpus} logical CPUs)...")
    temp_dir = start_worker(args.address, num_cpus=args.num_cpus, num_gpus=args.num_gpus,
                            metrics_port=metrics_port, node_ip=args.node_ip)
    write_state(ClusterState(address=args.address, temp_dir=temp_dir, started_by_us=True,
                             metrics_port=metrics_port, http_host="", http_port=0,
                             app_name="", role="worker"))
    _say(f"joined {args.address}; metrics on :{metrics_port}. `qwen-vl stop` takes this node "
         "out (Ray Serve restarts its replicas elsewhere).")
    return 0


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


def cmd_status(args) -> int:
    state = read_state()
    if state is None:
        _say("not running")
        return 3
    import asyncio

    from ray import serve

    from .replicas import replica_report

    connect(state.address)
    _say(f"cluster: {state.address} (started by qwen-vl: {state.started_by_us}"
         + (", this machine is a worker node)" if state.role == "worker" else ")"))
    nodes = node_rows()
    _say(f"nodes:   {sum(n['alive'] for n in nodes)} alive")
    for n in nodes:
        _say(f"  {n['node_id'][:12]}  {n['ip']:<15} {'head  ' if n['head'] else 'worker'} "
             f"{'alive' if n['alive'] else 'DEAD '}  CPU {n['cpus']:g}, GPU {n['gpus']:g}")
    if state.role == "worker":
        return 0
    status = serve.status().applications.get(state.app_name)
    url = base_url(state.http_host, state.http_port)
    code, body = http_get(url + "/health", timeout=15)
    _say(f"api:     {url}/v1")
    if state.temp_dir:
        _say(f"logs:    {state.temp_dir}/session_latest/logs")
    if status is None:
        _say("application: not deployed")
        return 1
    _say(f"application {state.app_name}: {status_name(status.status)}")
    for name, dep in status.deployments.items():
        _say(f"  {name}: {status_name(dep.status)} ({_replica_counts(dep) or 'no replicas'})")
    from .scheduling import alive_nodes, describe, nodes_summary, waiting_replicas

    waiting = waiting_replicas(state.app_name)
    if waiting:
        _say(f"waiting: {describe(waiting)}; {nodes_summary(alive_nodes())}")
    _say("replicas:")
    for r in asyncio.run(replica_report(state.app_name)):
        if r["replica_id"] is None:  # the deployment itself is marked unhealthy by Serve
            _say(f"  {r['deployment']:<28} {r['health']}")
            continue
        _say(f"  {r['deployment']:<28} {r['replica_id']:<10} {r['state']:<9} "
             f"node {r['node_ip']} ({(r['node_id'] or '')[:12]})  pid {r['pid']}  {r['health']}")
    health = (body or {}).get("status") or ((body or {}).get("error") or {}).get("message")
    _say(f"health:  {'ok' if code == 200 else f'HTTP {code}'} ({health})")
    return 0 if code == 200 else 1


# ------------------------------------------------------------------------ download/chart
def cmd_download(args) -> int:
    """Fetch the checkpoint into the Hugging Face cache (the chart's init container runs this
    before the engine starts, so a long download is visible as such)."""
    from engine.checkpoint import is_local_path
    from engine.embedded_model import is_embedded

    cfg = load_config(args.config)
    src = cfg.model.source
    if is_embedded(src) or is_local_path(src):
        _say(f"{src}: {cfg.model_path()} (local, nothing to download)")
        return 0
    from huggingface_hub import snapshot_download

    _say(f"downloading {src}" + (f" at {cfg.model.revision}" if cfg.model.revision else "")
         + " into the Hugging Face cache...")
    t0 = time.monotonic()
    path = snapshot_download(src, revision=cfg.model.revision)
    _say(f"{src}: {path} ({time.monotonic() - t0:.0f}s)")
    return 0


def cmd_plan(args) -> int:
    from engine.capacity import PlanError
    from engine.capacity_check import CheckError

    from .plan import run

    try:
        sys.stdout.write(run(args))
    except (PlanError, CheckError) as err:
        raise LaunchError(str(err)) from None
    return 0


def cmd_chart_values(args) -> int:
    from .chart import chart_values

    sys.stdout.write(chart_values(args.config))
    return 0


# ------------------------------------------------------------------------------------ main
def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="qwen-vl", description=__doc__.split("\n")[0])
    sub = p.add_subparsers(dest="command", required=True)
    s = sub.add_parser("serve", help="start Ray (if needed), deploy, wait until healthy")
    s.add_argument("--config", required=True, help="YAML config (see configs/)")
    s.add_argument("--detach", action="store_true", help="return once healthy")
    s.add_argument("--keep-on-failure", action="store_true",
                   help="leave the cluster running after a failed start (for debugging)")
    s.set_defaults(func=cmd_serve)
    sub.add_parser("stop", help="shut the application and local Ray down").set_defaults(
        func=cmd_stop)
    sub.add_parser("status", help="nodes, replicas (where each runs) and health").set_defaults(
        func=cmd_status)
    j = sub.add_parser("join", help="start a Ray worker node that joins a running cluster")
    j.add_argument("--address", required=True, help="the head's GCS address HOST:PORT "
                   "(printed by `qwen-vl serve` and `qwen-vl status`)")
    j.add_argument("--num-cpus", type=int, default=os.cpu_count() or 1,
                   help="logical CPUs this node offers (default: this machine's cores)")
    j.add_argument("--num-gpus", type=int, default=None, help="GPUs (default: all visible)")
    j.add_argument("--node-ip", default="127.0.0.1",
                   help="this node's IP as the head can reach it (default 127.0.0.1)")
    j.add_argument("--metrics-port", type=int, default=None,
                   help="Prometheus port of this node (default: a free port)")
    j.set_defaults(func=cmd_join)
    d = sub.add_parser("download", help="fetch the config's checkpoint into the HF cache")
    d.add_argument("--config", required=True, help="YAML config")
    d.set_defaults(func=cmd_download)
    c = sub.add_parser("chart-values",
                       help="print a config as the Helm chart's serving: values block")
    c.add_argument("--config", required=True, help="YAML config")
    c.set_defaults(func=cmd_chart_values)
    from .plan import add_arguments

    pl = sub.add_parser("plan", help="capacity plan: memory, KV cache, tokens per image, speed "
                        "bounds and replicas for a workload on a GPU type or this CPU")
    add_arguments(pl)
    pl.set_defaults(func=cmd_plan)
    return p


def use_token_auth() -> None:
    """Ray 2.60 turns token auth on implicitly when ~/.ray/auth_token exists; be explicit so the
    head we start and this client always agree (``start_head`` creates the token if missing)."""
    os.environ.setdefault("RAY_AUTH_MODE", "token")


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    # This process imports vLLM only to check engine-arg names; its import-time warning about
    # Triton on CPU (emitted before vLLM configures logging) is noise on a terminal.
    logging.getLogger("vllm.triton_utils.importing").setLevel(logging.ERROR)
    use_token_auth()
    logging.basicConfig(level=logging.WARNING, format="%(message)s")
    try:
        return args.func(args)
    except ConfigError as err:
        print(f"qwen-vl: {err}", file=sys.stderr)
        return 2
    except (LaunchError, ClusterError) as err:
        print(f"qwen-vl: {err}", file=sys.stderr)
        return 1
    except KeyboardInterrupt:
        print("qwen-vl: interrupted", file=sys.stderr)
        return 130
    except Exception as err:  # never a 200-line traceback on the terminal
        print(f"qwen-vl: {type(err).__name__}: {one_line(str(err))}", file=sys.stderr)
        if os.environ.get("QWEN_VL_DEBUG"):
            raise
        return 1


if __name__ == "__main__":
    sys.exit(main())
