"""The engine core forks vLLM's worker (engine.worker_start) where vLLM's CPU thread binding
survives the fork, unless the operator chose a start method or the process is a Ray worker."""

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


def fake_executor_module(cpu_lists: list[list[int]], skip_setup: bool):
    """vLLM's multiprocess executor module as far as the hook uses it; the executor's start
    records the start method it runs under, the worker's main records its call."""
    seen: dict = {}

    class MultiprocExecutor:
        vllm_config = object()

        def _init_executor(self):
            seen["method"] = os.environ[worker_start.METHOD]

    class OMPProcessManager:
        def __init__(self, config):
            self.cpu_lists, self.skip_setup = cpu_lists, skip_setup

    class WorkerProc:
        @staticmethod
        def worker_main(*args, **kwargs):
            seen["main"] = kwargs

    module = types.SimpleNamespace(MultiprocExecutor=MultiprocExecutor,
                                   OMPProcessManager=OMPProcessManager, WorkerProc=WorkerProc)
    return module, seen


@pytest.mark.parametrize("is_cpu, skipped, lists, method", [
    (False, True, [], "fork"),  # a GPU platform: vLLM binds no threads
    (True, True, [], "fork"),  # VLLM_CPU_OMP_THREADS_BIND=nobind
    (True, False, [[0]], "fork"),  # one core per worker: the forked worker binds itself
    (True, False, [[3], [7]], "fork"),
    (True, False, [[0, 1]], "spawn"),  # OpenMP binds each thread when it loads: spawn
    (True, False, [[0], [1, 2]], "spawn"),
    (True, False, [], "spawn"),
])
def test_start_method(is_cpu, skipped, lists, method):
    assert worker_start.start_method(is_cpu, skipped, lists) == method


def test_a_replica_marks_its_engine_core(env):
    worker_start.mark_replica()
    assert os.environ[worker_start.MARK] == "1"


@pytest.mark.parametrize("lists, method", [([[1]], "fork"), ([[0, 1]], "spawn")])
def test_the_executor_starts_workers_as_the_binding_allows(env, lists, method):
    """On CPU (this machine), with vLLM's binding on: the executor runs under the start
    method the binding allows; a forked worker binds itself to its rank's cores first."""
    env.setenv(worker_start.MARK, "1")
    env.setenv(worker_start.METHOD, "spawn")  # as the engine core inherits it
    bound = []
    env.setattr(os, "sched_setaffinity", lambda pid, cpus: bound.append((pid, list(cpus))))
    module, seen = fake_executor_module(lists, skip_setup=False)
    worker_start.after_import(module)
    module.MultiprocExecutor()._init_executor()
    assert seen["method"] == method
    module.WorkerProc.worker_main(local_rank=0, rank=0)
    assert seen["main"] == {"local_rank": 0, "rank": 0}
    assert bound == ([(0, [1])] if method == "fork" else [])


def test_no_binding_forks_and_binds_nothing(env):
    env.setenv(worker_start.MARK, "1")
    bound = []
    env.setattr(os, "sched_setaffinity", lambda pid, cpus: bound.append(cpus))
    module, seen = fake_executor_module([], skip_setup=True)
    worker_start.after_import(module)
    module.MultiprocExecutor()._init_executor()
    module.WorkerProc.worker_main(local_rank=0)
    assert (seen["method"], bound) == ("fork", [])


def test_the_operators_start_method_holds(env):
    env.setenv(worker_start.METHOD, "spawn")
    worker_start.mark_replica()
    assert worker_start.MARK not in os.environ
    module, seen = fake_executor_module([[0]], skip_setup=False)
    worker_start.after_import(module)
    module.MultiprocExecutor()._init_executor()
    assert seen["method"] == "spawn"


def test_a_ray_worker_never_forks(env):
    """The replica itself is a Ray actor: vLLM's spawn stays there."""
    env.setitem(sys.modules, "ray", types.SimpleNamespace(is_initialized=lambda: True))
    env.setenv(worker_start.MARK, "1")
    env.setenv(worker_start.METHOD, "spawn")
    module, seen = fake_executor_module([[0]], skip_setup=False)
    worker_start.after_import(module)
    module.MultiprocExecutor()._init_executor()
    assert seen["method"] == "spawn"


@pytest.mark.parametrize("mark, hooked", [("1", True), (None, False)])
def test_the_hook_wraps_vllms_executor(mark, hooked):
    """A fresh interpreter (the process hooks installed by the virtualenv's .pth, as in an engine
    core spawned by a replica): vLLM's real executor start is wrapped only when marked, and the
    names the hook uses exist in this vLLM."""
    env = {k: v for k, v in os.environ.items() if k not in (worker_start.MARK,)}
    env[worker_start.METHOD] = "spawn"
    if mark:
        env[worker_start.MARK] = mark
    code = ("from vllm.v1.executor import multiproc_executor as m\n"
            "print('wrapped', 'after_import' in m.MultiprocExecutor._init_executor.__qualname__)\n"
            "print('names', callable(m.OMPProcessManager), callable(m.WorkerProc.worker_main))")
    r = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                       cwd=ROOT, env=env, timeout=300)
    assert r.returncode == 0, r.stderr[-3000:]
    lines = r.stdout.splitlines()
    assert f"wrapped {hooked}" in lines and "names True True" in lines, r.stdout
