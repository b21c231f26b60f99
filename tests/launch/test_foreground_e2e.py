"""A foreground `qwen-vl serve` (what `make serve` runs) ends with its cluster: stopped by
`qwen-vl stop` from another shell it says so and exits 0; a head that dies under it makes it
exit 1 naming that. Either way within a few of its checks (``launch.cli.WATCH_S``), never
"serving" over nothing."""

from __future__ import annotations

import os
import subprocess
import sys
import threading
from pathlib import Path

import pytest

from tests.utils import ROOT, run_cli, wait_ready, write_config

pytestmark = pytest.mark.slow


def foreground(tmp: Path) -> tuple[subprocess.Popen, dict, list[str], threading.Thread]:
    """`qwen-vl serve` in the foreground, returned once it says it is serving."""
    # Text only (no image or video per prompt): these tests send no request, and vLLM then
    # skips its multimodal warm-up and encoder profiling, much of a start.
    cfg, data = write_config(tmp, {"engine": {"cpu_kv_cache_gib": 0.25},
                                   "multimodal": {"max_images_per_prompt": 0,
                                                  "max_videos_per_prompt": 0}})
    env = {**os.environ, "QWEN_VL_RUN_DIR": str(tmp / "run"), "PYTHONUNBUFFERED": "1"}
    proc = subprocess.Popen([sys.executable, "-m", "launch.cli", "serve", "--config", str(cfg)],
                            cwd=ROOT, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT,
                            text=True)
    lines: list[str] = []
    serving = threading.Event()

    def read():
        for line in proc.stdout:
            lines.append(line)
            if line.startswith("serving; press Ctrl-C"):
                serving.set()

    reader = threading.Thread(target=read, daemon=True)
    reader.start()
    try:
        wait_ready(serving, proc, lines, 900, "serve")
    except AssertionError:
        proc.kill()
        raise
    return proc, {"QWEN_VL_RUN_DIR": env["QWEN_VL_RUN_DIR"],
                  "port": data["server"]["port"]}, lines, reader


def ended(proc: subprocess.Popen, lines: list[str], reader: threading.Thread,
          timeout: float) -> tuple[int, str]:
    try:
        code = proc.wait(timeout=timeout)
    except subprocess.TimeoutExpired:
        proc.kill()
        raise AssertionError("serve is still running over a cluster that is gone:\n"
                             + "".join(lines[-20:])) from None
    reader.join(timeout=10)  # it ends at the pipe's end, having read the last lines
    return code, "".join(lines)


def test_a_stop_from_another_shell_ends_the_foreground_serve(tmp_path):
    from launch.cli import WATCH_S

    proc, env, lines, reader = foreground(tmp_path)
    try:
        r = run_cli("stop", env={"QWEN_VL_RUN_DIR": env["QWEN_VL_RUN_DIR"]}, timeout=300)
        assert r.returncode == 0, r.stdout + r.stderr
        code, out = ended(proc, lines, reader, timeout=3 * WATCH_S + 10)
    finally:
        if proc.poll() is None:
            proc.kill()
    assert code == 0, out[-2000:]
    assert "stopped by `qwen-vl stop` elsewhere; this `serve` ends with it" in out, out[-2000:]
    assert "stopping..." not in out  # the other shell's stop did the work; this one did not


def test_a_dead_head_ends_the_foreground_serve_with_exit_1(tmp_path):
    import psutil

    from launch.cli import WATCH_S
    from launch.cluster.local_cluster import cluster_processes, port_in_use, read_state

    proc, env, lines, reader = foreground(tmp_path)
    state = read_state(tmp_path / "run")
    try:
        gcs = []
        for pid in cluster_processes(state):
            try:
                if psutil.Process(pid).name() == "gcs_server":
                    gcs.append(pid)
            except psutil.NoSuchProcess:
                continue
        assert len(gcs) == 1, gcs
        psutil.Process(gcs[0]).kill()
        code, out = ended(proc, lines, reader, timeout=3 * WATCH_S + 10)
    finally:
        if proc.poll() is None:
            proc.kill()
        stop = run_cli("stop", env={"QWEN_VL_RUN_DIR": env["QWEN_VL_RUN_DIR"]}, timeout=300)
    # `stop` sees the head is gone and ends the processes without asking Serve (which cannot
    # answer without a GCS server) to drain.
    assert stop.returncode == 0, stop.stdout + stop.stderr
    assert "the Ray head is gone (its GCS server)" in stop.stdout, stop.stdout
    assert "serve shutdown" not in stop.stdout, stop.stdout
    assert code == 1, out[-2000:]
    assert "qwen-vl: the Ray head died (its GCS server is gone)" in out, out[-2000:]
    assert cluster_processes(state) == [], "processes left after stop"
    # HAProxy, whose manager died with the head, is gone too: the next stack gets the ports.
    assert not port_in_use("127.0.0.1", env["port"]), "the API port is still held"
