"""The engine core forks vLLM's worker (engine.worker_start), as ``vllm serve`` does, unless the
operator chose a start method or the process is a Ray worker."""

from __future__ import annotations

import os
import subprocess
import sys
import types

import pytest

from engine import worker_start
from tests.utils import ROOT


@pytest.fixture
def env(monkeypatch):
    monkeypatch.delenv(worker_start.MARK, raising=False)
    monkeypatch.delenv(worker_start.METHOD, raising=False)
    return monkeypatch


def test_a_replica_marks_its_engine_core(env):
    worker_start.mark_replica()
    assert os.environ[worker_start.MARK] == "1"


def test_the_operators_start_method_holds(env):
    env.setenv(worker_start.METHOD, "spawn")
    worker_start.mark_replica()
    assert worker_start.MARK not in os.environ
    worker_start.after_import(None)
    assert os.environ[worker_start.METHOD] == "spawn"


def test_an_unmarked_process_keeps_vllms_choice(env):
    env.setenv(worker_start.METHOD, "spawn")
    worker_start.after_import(None)
    assert os.environ[worker_start.METHOD] == "spawn"


def test_a_ray_worker_never_forks(env):
    """The replica itself is a Ray actor: vLLM's spawn stays there."""
    env.setitem(sys.modules, "ray", types.SimpleNamespace(is_initialized=lambda: True))
    env.setenv(worker_start.MARK, "1")
    env.setenv(worker_start.METHOD, "spawn")
    worker_start.after_import(None)
    assert os.environ[worker_start.METHOD] == "spawn"


@pytest.mark.parametrize("mark, method", [("1", "fork"), (None, "spawn")])
def test_vllm_starts_the_worker_as_the_hook_says(mark, method):
    """A fresh interpreter (the process hooks installed by the virtualenv's .pth, as in an engine
    core spawned by a replica, which inherits ``spawn``): vLLM's own start-method choice."""
    env = {k: v for k, v in os.environ.items() if k not in (worker_start.MARK,)}
    env[worker_start.METHOD] = "spawn"
    if mark:
        env[worker_start.MARK] = mark
    code = ("import vllm.v1.executor.multiproc_executor\n"
            "from vllm.utils.system_utils import get_mp_context\n"
            "print('method', get_mp_context().get_start_method())")
    r = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                       cwd=ROOT, env=env, timeout=300)
    assert r.returncode == 0, r.stderr[-3000:]
    assert f"method {method}" in r.stdout.splitlines(), r.stdout
