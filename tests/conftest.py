"""Shared fixtures. Servers start once per module, on free ports, and are waited on for health."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent
CONFIGS = ROOT / "configs"


def pytest_collection_modifyitems(config, items):
    """GPU tests are skipped (not deleted) where no NVIDIA GPU is visible."""
    try:
        import torch

        has_gpu = torch.cuda.is_available()
    except Exception:
        has_gpu = False
    if has_gpu:
        return
    skip = pytest.mark.skip(reason="needs an NVIDIA GPU")
    for item in items:
        if "gpu" in item.keywords:
            item.add_marker(skip)


def run_cli(*args: str, env: dict | None = None, timeout: float = 1200) -> subprocess.CompletedProcess:
    return subprocess.run(
        [sys.executable, "-m", "launch.cli", *args],
        capture_output=True, text=True, timeout=timeout, cwd=ROOT,
        env={**os.environ, **(env or {})},
    )


def write_config(tmp: Path, overrides: dict | None = None) -> tuple[Path, dict]:
    """configs/default.yaml with per-section overrides and free API/metrics ports."""
    import yaml

    from launch.local_cluster import free_port

    data = yaml.safe_load((CONFIGS / "default.yaml").read_text())
    for section, values in (overrides or {}).items():
        data.setdefault(section, {}).update(values)
    data["server"].update(port=free_port(), metrics_port=free_port())
    path = tmp / "config.yaml"
    path.write_text(yaml.safe_dump(data))
    return path, data


def start_stack(tmp: Path, overrides: dict | None = None, env: dict | None = None) -> dict:
    """`qwen-vl serve --detach` with the default config (plus overrides) on free ports."""
    from engine.config import parse_config

    cfg_path, data = write_config(tmp, overrides)
    port, metrics_port = data["server"]["port"], data["server"]["metrics_port"]
    env = {"QWEN_VL_RUN_DIR": str(tmp / "run"), **(env or {})}
    r = run_cli("serve", "--config", str(cfg_path), "--detach", env=env, timeout=1200)
    assert r.returncode == 0, f"serve failed:\n{r.stdout[-3000:]}\n{r.stderr[-3000:]}"
    assert "ready: http://127.0.0.1:" in r.stdout and "curl -s" in r.stdout
    cfg = parse_config(data)
    return {"base": f"http://127.0.0.1:{port}", "model": cfg.model.served_name, "cfg": cfg,
            "metrics": f"http://127.0.0.1:{metrics_port}/metrics", "env": env,
            "cfg_path": str(cfg_path)}


def stop_stack(info: dict) -> None:
    """`qwen-vl stop`, then check that no process of the cluster is left."""
    from launch.local_cluster import cluster_processes, read_state

    state = read_state(Path(info["env"]["QWEN_VL_RUN_DIR"]))
    stop = run_cli("stop", env=info["env"], timeout=300)
    assert stop.returncode == 0, stop.stderr
    assert state is not None and cluster_processes(state) == [], "processes left after stop"


class MediaServer:
    """A real HTTP server for media URLs: files, redirects, slow and endless responses."""

    def __init__(self, host: str, files: dict[str, bytes]):
        import http.server
        import threading
        import time

        self.files = files
        self.redirects: dict[str, str] = {}
        outer = self

        class Handler(http.server.BaseHTTPRequestHandler):
            def log_message(self, *a):
                pass

            def do_GET(self):
                if self.path in outer.redirects:
                    self.send_response(302)
                    self.send_header("Location", outer.redirects[self.path])
                    self.end_headers()
                elif self.path == "/slow":
                    time.sleep(5)
                    self.send_response(200)
                    self.end_headers()
                elif self.path.startswith("/sleep/"):  # /sleep/<seconds>/<file>
                    _, _, secs, name = self.path.split("/", 3)
                    time.sleep(float(secs))
                    body = outer.files.get("/" + name, b"")
                    self.send_response(200 if body else 404)
                    self.send_header("Content-Length", str(len(body)))
                    self.end_headers()
                    self.wfile.write(body)
                elif self.path == "/endless":  # no Content-Length, more bytes than any cap
                    self.send_response(200)
                    self.end_headers()
                    try:
                        for _ in range(4096):
                            self.wfile.write(b"\0" * 65536)
                    except OSError:
                        pass
                elif self.path in outer.files:
                    body = outer.files[self.path]
                    self.send_response(200)
                    self.send_header("Content-Length", str(len(body)))
                    self.end_headers()
                    self.wfile.write(body)
                else:
                    self.send_response(404)
                    self.end_headers()

        self.httpd = http.server.ThreadingHTTPServer((host, 0), Handler)
        self.httpd.daemon_threads = True
        self.url = f"http://{host}:{self.httpd.server_address[1]}"
        threading.Thread(target=self.httpd.serve_forever, daemon=True).start()

    def close(self):
        self.httpd.shutdown()
