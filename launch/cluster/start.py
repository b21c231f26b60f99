"""The cluster a stack starts on: ``RAY_ADDRESS``'s, the running one ``serve`` started, or a
new local Ray head (``launch.cluster.local_cluster``); a worker node joining one; the
checkpoint download and the engine-argument check that overlap the start."""

from __future__ import annotations

import os
import threading
from typing import Callable

from engine.config import ServingConfig
from engine.vllm_args import engine_kwargs

from .connect import LaunchError, base_url, progress_log
from .local_cluster import (
    ClusterState,
    clear_state,
    cluster_processes,
    port_in_use,
    read_state,
    start_head,
    start_worker,
    write_state,
)


def start_engine_arg_check(cfg: ServingConfig, model_path: str) -> Callable[[], None]:
    """Check the config's engine arguments against the installed vLLM in a thread: importing
    vLLM takes seconds, which a Ray head's start-up can overlap. The returned function waits for
    the check and raises what it raised (a renamed engine argument, say)."""
    failure: list[BaseException] = []

    def check():
        try:
            engine_kwargs(cfg, model_path)
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
            want = cfg.ray_env()
            if running is not None and running != want:
                differ = "; ".join(f"{k}: running {running.get(k, 'unset')}, wanted "
                                   f"{want.get(k, 'unset')}" for k in sorted({*running, *want})
                                   if running.get(k) != want.get(k))
                raise LaunchError(
                    "server.ray_throughput_optimized / ray_ha_proxy / replica_deregistration_s "
                    "/ proxy_check_s or deployment.routing.image_affinity (or where this "
                    "package's qwen-vl-haproxy is installed) differ from the running cluster's "
                    f"({differ}); Ray reads them when a node starts: `qwen-vl stop`, then "
                    "serve again")
            state.drain_timeout_s = cfg.deployment.drain_timeout_s  # a redeploy may change it
            state.stopping = False  # a stop that was cut short left it running
            write_state(state)
            progress_log.info(
                f"redeploying onto the running cluster ({state.address}): Ray Serve replaces "
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
    progress_log.info(f"starting a local Ray head ({num_cpus} logical CPUs)...")
    address, temp_dir = start_head(num_cpus=num_cpus, metrics_port=srv.metrics_port,
                                   node_ip=srv.node_ip_address, port=srv.ray_port,
                                   env=cfg.ray_env())
    state = ClusterState(
        address=address, temp_dir=temp_dir, started_by_us=True,
        metrics_port=srv.metrics_port, http_host=srv.host, http_port=srv.port,
        app_name=srv.app_name, drain_timeout_s=cfg.deployment.drain_timeout_s,
    )
    write_state(state)
    return state, False


def node_ray_env(state: ClusterState) -> dict[str, str] | None:
    """The Ray Serve settings (``ServingConfig.ray_env``) a running node's raylet started
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


def needs_download(cfg: ServingConfig) -> bool:
    """Whether the checkpoint comes from the Hugging Face Hub (not embedded, not a local path)."""
    from engine.checkpoint import is_local_path
    from engine.embedded_model import is_embedded

    return not (is_embedded(cfg.model.source) or is_local_path(cfg.model.source))


def download_checkpoint(cfg: ServingConfig) -> str:
    """Fetch the Hub checkpoint into the Hugging Face cache; its local path."""
    from huggingface_hub import snapshot_download

    return snapshot_download(cfg.model.source, revision=cfg.model.revision)
