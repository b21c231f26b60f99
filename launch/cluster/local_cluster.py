"""A local Ray head that ``qwen-vl serve`` starts when no cluster is given, and ``stop`` ends.

The cluster in use is explicit, never guessed: ``RAY_ADDRESS`` names an existing cluster (for
example in Kubernetes); otherwise ``serve`` starts a head on free ports and records it in the
run directory (``$QWEN_VL_RUN_DIR``, default ``~/.cache/qwen-vl-serving/run``), which ``stop``
and ``status`` read back.
"""

from __future__ import annotations

import json
import os
import random
import shutil
import socket
import subprocess
import sys
from dataclasses import asdict, dataclass
from pathlib import Path

from .reason import one_line


class ClusterError(RuntimeError):
    """The local Ray cluster could not be started, reached or stopped."""


@dataclass
class ClusterState:
    address: str  # GCS address host:port
    temp_dir: str
    started_by_us: bool
    metrics_port: int
    http_host: str
    http_port: int
    app_name: str
    drain_timeout_s: float = 60.0
    role: str = "head"  # "head": a cluster (ours or RAY_ADDRESS's); "worker": a node we joined
    stopping: bool = False  # set when `qwen-vl stop` (or the foreground serve's Ctrl-C) begins


def run_dir() -> Path:
    default = Path.home() / ".cache" / "qwen-vl-serving" / "run"
    return Path(os.environ.get("QWEN_VL_RUN_DIR", default))


def ray_temp_dir() -> str:
    """Ray's temp dir for the head we start: short, because Ray puts AF_UNIX sockets under it
    (at most 107 bytes a path) and a deep run directory would exceed that."""
    import hashlib

    digest = hashlib.sha256(str(run_dir().resolve()).encode()).hexdigest()[:10]
    return f"/tmp/qwen-vl-ray-{digest}"


def _state_file(directory: Path | None = None) -> Path:
    return (directory or run_dir()) / "cluster.json"


def read_state(directory: Path | None = None) -> ClusterState | None:
    """The recorded cluster of ``directory`` (default: the run directory), if any."""
    try:
        return ClusterState(**json.loads(_state_file(directory).read_text()))
    except (OSError, ValueError, TypeError):
        return None


def write_state(state: ClusterState) -> None:
    """Atomically: a foreground ``serve`` reads the file while a redeploy or a stop writes it."""
    run_dir().mkdir(parents=True, exist_ok=True)
    tmp = _state_file().with_suffix(f".{os.getpid()}.tmp")
    tmp.write_text(json.dumps(asdict(state), indent=2))
    tmp.replace(_state_file())


def clear_state() -> None:
    _state_file().unlink(missing_ok=True)


# Ports handed to servers that bind them later (Ray's components, the Serve proxy, the metrics
# exporter, up to a minute later) lie outside the kernel's ephemeral range: a port inside it,
# free when picked, can become the source port of any outbound connection (Ray opens many while
# it starts) before its server binds it. They also lie above the worker ports the local nodes
# get (HEAD_WORKER_PORTS, WORKER_NODE_WORKER_PORTS).
HEAD_WORKER_PORTS, WORKER_NODE_WORKER_PORTS = (20000, 24999), (25000, 29999)
_PORTS_FROM, _PORTS_TO = max(HEAD_WORKER_PORTS[1], WORKER_NODE_WORKER_PORTS[1]) + 1, 65535
_EPHEMERAL_RANGE = Path("/proc/sys/net/ipv4/ip_local_port_range")
_handed_out: set[int] = set()  # a port picked but not yet bound stays picked in this process
# Ports a parent process picked for the node's HAProxy and passed down in these variables
# (``loadtest.deploy.haproxy_env``): HAProxy binds them only once the application deploys,
# after the Ray ports this process picks are taken, so they must not be among them.
HAPROXY_PORT_ENV = ("RAY_SERVE_HAPROXY_METRICS_PORT", "RAY_SERVE_HAPROXY_STATS_PORT")
_random = random.SystemRandom()  # independent of any seed a caller sets


def ephemeral_range() -> tuple[int, int]:
    try:
        low, high = (int(v) for v in _EPHEMERAL_RANGE.read_text().split())
        return low, high
    except (OSError, ValueError):
        return 32768, 60999  # Linux's default


def _bindable(port: int) -> bool:
    with socket.socket() as s:
        try:
            s.bind(("0.0.0.0", port))  # fails when any address holds the port
        except OSError:
            return False
    return True


def free_port() -> int:
    """A TCP port free on every address now, outside the ephemeral range where there is room."""
    low, high = ephemeral_range()
    candidates = [*range(_PORTS_FROM, min(low, _PORTS_TO + 1)),
                  *range(max(high + 1, _PORTS_FROM), _PORTS_TO + 1)]
    for _ in range(200 if len(candidates) >= 1000 else 0):
        port = _random.choice(candidates)
        if port not in _handed_out and port not in _ports_in_env() and _bindable(port):
            _handed_out.add(port)
            return port
    with socket.socket() as s:  # no room outside the ephemeral range: the kernel's choice
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _ports_in_env() -> set[int]:
    return {int(v) for v in map(os.environ.get, HAPROXY_PORT_ENV) if v and v.isdigit()}


def port_in_use(host: str, port: int) -> bool:
    with socket.socket() as s:
        s.settimeout(0.5)
        return s.connect_ex((host if host != "0.0.0.0" else "127.0.0.1", port)) == 0


def _ray_bin() -> str:
    exe = Path(sys.executable).parent / "ray"
    return str(exe) if exe.exists() else (shutil.which("ray") or "ray")


def start_head(num_cpus: int, metrics_port: int, node_ip: str = "127.0.0.1",
               port: int | None = None, env: dict[str, str] | None = None) -> tuple[str, str]:
    """Start a Ray head (GCS on ``port``, else a free one) with ``env`` added to its
    environment; returns (address, temp_dir)."""
    gcs_port = port or free_port()
    temp_dir = ray_temp_dir()
    ensure_auth_token()
    cmd = [
        _ray_bin(), "start", "--head",
        f"--port={gcs_port}",
        f"--num-cpus={num_cpus}",
        f"--num-gpus={_gpu_count()}",
        *_node_args(metrics_port, temp_dir, node_ip, worker_ports=HEAD_WORKER_PORTS),
        "--include-dashboard=false",
        f"--dashboard-port={free_port()}",
    ]
    _ray_start(cmd, env)
    return f"{node_ip}:{gcs_port}", temp_dir


def ensure_auth_token() -> None:
    """With ``RAY_AUTH_MODE=token`` (``qwen-vl`` sets it), ``ray start --head`` refuses to start
    until a token exists; it never creates one. ``ray get-auth-token --generate`` writes
    ``~/.ray/auth_token`` on a machine that has none, and changes nothing where ``RAY_AUTH_TOKEN``,
    ``RAY_AUTH_TOKEN_PATH`` or the file already gives one. The token it prints is not shown,
    and a file created here is made readable by its owner only (Ray writes it 0644)."""
    if os.environ.get("RAY_AUTH_MODE", "").lower() != "token":
        return
    default_file = Path.home() / ".ray" / "auth_token"
    existed = default_file.exists()
    proc = subprocess.run([_ray_bin(), "get-auth-token", "--generate"], capture_output=True,
                          text=True, timeout=120)
    if proc.returncode != 0:
        raise ClusterError(f"no Ray auth token and `ray get-auth-token --generate` failed: "
                           f"{one_line(proc.stderr)}")
    if not existed and default_file.exists():
        default_file.chmod(0o600)


def start_worker(address: str, num_cpus: int, num_gpus: int | None, metrics_port: int,
                 node_ip: str = "127.0.0.1", env: dict[str, str] | None = None) -> str:
    """Join the cluster at ``address`` as a worker node; returns its temp dir. Its own ports
    and temp dir, so a worker can share a machine with its head (tests, a laptop)."""
    temp_dir = ray_temp_dir()
    cmd = [
        _ray_bin(), "start", f"--address={address}",
        f"--num-cpus={num_cpus}",
        f"--num-gpus={_gpu_count() if num_gpus is None else num_gpus}",
        *_node_args(metrics_port, temp_dir, node_ip, worker_ports=WORKER_NODE_WORKER_PORTS),
    ]
    _ray_start(cmd, env)
    return temp_dir


def _node_args(metrics_port: int, temp_dir: str, node_ip: str,
               worker_ports: tuple[int, int]) -> list[str]:
    Path(temp_dir).mkdir(parents=True, exist_ok=True)
    return [
        f"--metrics-export-port={metrics_port}",
        f"--node-manager-port={free_port()}",
        f"--object-manager-port={free_port()}",
        f"--dashboard-agent-listen-port={free_port()}",
        f"--dashboard-agent-grpc-port={free_port()}",
        f"--runtime-env-agent-port={free_port()}",
        f"--ray-client-server-port={free_port()}",
        # Keep worker ports apart from the ports users pick (8000, 8080, 18080...), and a
        # head's apart from a worker node's on the same machine.
        f"--min-worker-port={worker_ports[0]}",
        f"--max-worker-port={worker_ports[1]}",
        f"--node-ip-address={node_ip}",
        "--disable-usage-stats",
        f"--temp-dir={temp_dir}",
    ]


def _ray_start(cmd: list[str], env: dict[str, str] | None = None) -> None:
    # Own session: Ctrl-C in the terminal reaches the CLI (which shuts down in order), not the
    # Ray daemons directly. The daemons, and every worker process they start, inherit ``env``.
    from engine.config import HAPROXY_BINARY_ENV

    binary = (env or {}).get(HAPROXY_BINARY_ENV)
    if binary and not os.access(binary, os.X_OK):
        # Ray would start the node and fail each HAProxy start later, in its own log only.
        raise ClusterError(f"{binary} (the HAProxy Ray Serve starts, {HAPROXY_BINARY_ENV}) is "
                           "not an executable file: install this package into the environment "
                           "that runs qwen-vl (`make install`, or `pip install -e .`)")
    proc = subprocess.run(cmd, capture_output=True, text=True, timeout=180,
                          start_new_session=True, env={**os.environ, **(env or {})})
    if proc.returncode != 0:
        raise ClusterError(f"`ray start` failed: {one_line(proc.stderr or proc.stdout)}")


def _gpu_count() -> int:
    from engine.devices import nvidia_smi

    return len(nvidia_smi("index") or [])


def stop_processes(state: ClusterState, grace_s: float = 10) -> None:
    """End every process of the cluster (or worker node) we started, and only ours: SIGTERM,
    then SIGKILL.

    Called after ``serve.shutdown()`` has drained the application, so nothing in flight is
    lost by the SIGKILL (gcs_server ignores SIGTERM for longer than any sensible grace)."""
    import psutil

    pids = cluster_processes(state)
    # HAProxy outlives its manager when the manager dies first (a reload's new process, or
    # the node's raylet gone with the head): such a process is not a child of the
    # cluster, but shares its config directory with one that was, or binds the cluster's port.
    haproxy_dirs = {os.path.dirname(c) for pid, c in _haproxy_configs().items()
                    if pid in pids or (state.http_port and _binds(c, state.http_port))}
    _, alive = psutil.wait_procs(_signalled(_processes(pids), "terminate"), timeout=grace_s)
    psutil.wait_procs(_signalled(alive, "kill"), timeout=10)
    # A reload during Serve's shutdown starts one after the listing above.
    psutil.wait_procs(_signalled(_processes(_haproxies_in(haproxy_dirs)), "kill"), timeout=10)
    left = cluster_processes(state) + _haproxies_in(haproxy_dirs)
    if left:
        raise ClusterError(f"processes of the Ray cluster survived SIGKILL: {left}")


def _processes(pids: list[int]) -> list:
    """The ``psutil.Process`` of each pid still running."""
    import psutil

    out = []
    for pid in pids:
        try:
            out.append(psutil.Process(pid))
        except psutil.NoSuchProcess:
            pass
    return out


def _signalled(procs: list, how: str) -> list:
    """Sends each process ``how`` ("terminate": SIGTERM, "kill": SIGKILL); those it reached."""
    import psutil

    out = []
    for p in procs:
        try:
            getattr(p, how)()
            out.append(p)
        except psutil.NoSuchProcess:
            pass
    return out


def _haproxy_configs() -> dict[int, str]:
    """pid -> config file of each HAProxy process on this machine."""
    import psutil

    found = {}
    for p in psutil.process_iter(["pid", "name", "cmdline"]):
        argv = p.info["cmdline"] or []
        if p.info["name"] == "haproxy" and "-f" in argv[:-1]:
            found[p.info["pid"]] = argv[argv.index("-f") + 1]
    return found


def _binds(config: str, port: int) -> bool:
    """Whether an HAProxy config binds ``port`` (Ray writes ``bind <host>:<port>``)."""
    try:
        lines = open(config).read().splitlines()
    except OSError:
        return False
    return any(len(w) > 1 and w[0] == "bind" and w[1].endswith(f":{port}")
               for w in map(str.split, lines))


def _haproxies_in(dirs: set[str]) -> list[int]:
    """HAProxy processes running a config from one of ``dirs``."""
    return [pid for pid, c in _haproxy_configs().items() if os.path.dirname(c) in dirs] \
        if dirs else []


def head_alive(state: ClusterState) -> bool:
    """Whether the head's GCS server, the one process a Ray cluster cannot lose, still runs."""
    import psutil

    for pid in cluster_processes(state):
        try:
            if psutil.Process(pid).name() == "gcs_server":
                return True
        except psutil.Error:
            continue
    return False


def cluster_processes(state: ClusterState) -> list[int]:
    """PIDs of our cluster: processes naming its temp dir or GCS address, and their children.
    For a worker node we joined: its temp dir only (the GCS address names the whole cluster)."""
    import psutil

    gcs_port = state.address.rsplit(":", 1)[-1]
    worker = state.role == "worker"
    roots = []
    for p in psutil.process_iter(["pid", "cmdline"]):
        try:
            cmd = " ".join(p.info["cmdline"] or [])
        except (psutil.NoSuchProcess, psutil.AccessDenied):
            continue
        if p.info["pid"] == os.getpid():
            continue
        if state.temp_dir in cmd or (not worker and (
                f":{gcs_port} " in cmd + " " or f"={state.address}" in cmd)):
            roots.append(p)
    pids = set()
    for p in roots:
        pids.add(p.pid)
        try:
            pids.update(c.pid for c in p.children(recursive=True))
        except psutil.NoSuchProcess:
            pass
    pids.discard(os.getpid())
    return sorted(pids)

