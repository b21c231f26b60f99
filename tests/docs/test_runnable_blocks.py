"""The README's and Getting started's commands, run: ``make serve`` (the README's first command)
starts the stack in the foreground as a reader would, every block marked
``<!-- runnable ... -->`` runs against it (shell blocks in bash with ``set -euo pipefail``,
Python blocks with the venv's interpreter), then Ctrl-C stops it with nothing left behind.

``make test``, the README's second command, is this suite: CI runs it (``.ci/run``).
The stack listens on free ports: ``127.0.0.1:8000`` and ``:8080`` in a block become them.
"""

from __future__ import annotations

import os
import re
import signal
import subprocess
import sys
import threading
from pathlib import Path

import pytest

from tests.utils import ROOT, fenced_blocks, wait_ready, write_config

pytestmark = pytest.mark.slow
PAGES = [ROOT / "README.md", ROOT / "docs" / "getting-started.md"]
MARK = re.compile(r"^<!-- runnable(?: expect=\"([^\"]*)\")?")


def runnable_blocks() -> list[tuple[str, str, str, str | None]]:
    """(id, language, body, expected substring of the output) of every marked block except
    the ones that start the stack (``make serve``), which the fixture runs."""
    out = []
    for page in PAGES:
        for i, (lang, body, before) in enumerate(fenced_blocks(page.read_text())):
            m = MARK.match(before)
            if m is None or body.lstrip().startswith("make serve"):
                continue
            out.append((f"{page.name}:{i}", lang, body, m.group(1)))
    return out


BLOCKS = runnable_blocks()


@pytest.fixture(scope="module")
def make_serve(tmp_path_factory):
    """`make serve CONFIG=...` in its own process group, as in a terminal, until it is ready."""
    tmp = tmp_path_factory.mktemp("docs")
    cfg, data = write_config(tmp)
    env = {**os.environ, "QWEN_VL_RUN_DIR": str(tmp / "run"), "PYTHONUNBUFFERED": "1"}
    proc = subprocess.Popen(["make", "serve", f"CONFIG={cfg}"], cwd=ROOT, env=env,
                            stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True,
                            start_new_session=True)
    lines: list[str] = []
    ready = threading.Event()

    def read():
        for line in proc.stdout:
            lines.append(line)
            if line.startswith("ready: "):
                ready.set()

    reader = threading.Thread(target=read, daemon=True)
    reader.start()
    info = {"proc": proc, "lines": lines, "reader": reader, "env": env, "tmp": tmp,
            "port": data["server"]["port"], "metrics_port": data["server"]["metrics_port"]}
    try:
        wait_ready(ready, proc, lines, 1200, "make serve")
        yield info
    finally:
        if proc.poll() is None:
            os.killpg(proc.pid, signal.SIGINT)
            try:
                proc.wait(timeout=300)
            except subprocess.TimeoutExpired:
                os.killpg(proc.pid, signal.SIGKILL)
        from launch.cluster.local_cluster import cluster_processes, read_state

        state = read_state(tmp / "run")
        if state is not None and cluster_processes(state):
            subprocess.run([sys.executable, "-m", "launch.cli", "stop"], cwd=ROOT, env=env,
                           timeout=300)


def test_there_are_blocks_to_run():
    assert len([b for b in BLOCKS if b[0].startswith("README")]) >= 1
    assert len([b for b in BLOCKS if b[0].startswith("getting-started")]) >= 4
    assert {b[1] for b in BLOCKS} == {"bash", "python"}


@pytest.mark.parametrize("block_id, lang, body, expect", BLOCKS, ids=[b[0] for b in BLOCKS])
def test_block_runs_against_the_stack(make_serve, block_id, lang, body, expect):
    body = body.replace("127.0.0.1:8000", f"127.0.0.1:{make_serve['port']}") \
        .replace("127.0.0.1:8080", f"127.0.0.1:{make_serve['metrics_port']}")
    env = {**make_serve["env"], "PATH": f"{Path(sys.executable).parent}:{os.environ['PATH']}"}
    argv = ["bash", "-c", "set -euo pipefail\n" + body] if lang == "bash" \
        else [sys.executable, "-c", body]
    r = subprocess.run(argv, cwd=ROOT, env=env, capture_output=True, text=True, timeout=300)
    assert r.returncode == 0, f"{block_id} failed ({r.returncode}):\n{r.stdout[-2000:]}\n" \
                              f"{r.stderr[-2000:]}"
    if expect is not None:
        assert expect in r.stdout, r.stdout[-2000:]


def test_ctrl_c_drains_and_leaves_nothing(make_serve):
    """Ctrl-C (SIGINT to the terminal's process group) ends `make serve`: the stack drains and
    stops, and none of its processes is left."""
    from launch.cluster.local_cluster import cluster_processes, read_state

    state = read_state(make_serve["tmp"] / "run")
    proc = make_serve["proc"]
    os.killpg(proc.pid, signal.SIGINT)
    proc.wait(timeout=300)
    make_serve["reader"].join(timeout=10)
    out = "".join(make_serve["lines"])
    assert "stopping..." in out and "stopped (" in out, out[-2000:]
    assert state is not None and cluster_processes(state) == []
