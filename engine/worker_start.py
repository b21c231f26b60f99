"""vLLM's worker process, forked from the engine core where nothing of vLLM's set-up is lost.

vLLM starts its processes with multiprocessing "spawn" whenever the starting process is a Ray
actor, because Ray's own threads make a fork there unsafe. The engine replica is a Ray actor, so
its engine core is spawned, which is right; but the engine core inherits the replica's
``VLLM_WORKER_MULTIPROC_METHOD=spawn`` and so spawns its worker too, although the engine core is
no Ray actor. A spawned worker imports torch and vLLM again before it can load the model; a
forked one starts with them imported, so a replica starts sooner and its start takes less of the
machine.

On CPU the spawn also carries vLLM's thread binding: vLLM sets ``GOMP_CPU_AFFINITY`` (or its
Intel OpenMP and plain OpenMP equivalents) to the worker's cores just before it starts it, and
OpenMP reads that once, when its library loads in the new process. A forked worker has the
engine core's library already loaded, unbound, so the binding would silently be lost. So the
engine core forks only where that costs nothing: on a GPU platform, where vLLM binds no
threads (``VLLM_CPU_OMP_THREADS_BIND=nobind``), or where each worker is bound to a single core,
which the forked worker applies to itself (``os.sched_setaffinity``: for a one-core list the
same as OpenMP's binding). A worker bound to several cores is spawned, as vLLM does it.

The replica marks its environment (``mark_replica``) unless the operator chose a start method
(``VLLM_WORKER_MULTIPROC_METHOD`` in the replica's environment: theirs holds). In the engine
core, ``after_import`` (on vLLM's multiprocess executor module) makes the choice just before the
executor starts its workers. vLLM still checks at the start of each worker and spawns where a
fork is unsafe for its own reasons (CUDA initialized in the engine core). Installed in every
process by ``engine.process_hooks``.
"""

from __future__ import annotations

import os
import sys

TARGET = "vllm.v1.executor.multiproc_executor"
MARK = "QWEN_VL_ENGINE_CORE_FORKS_WORKERS"
METHOD = "VLLM_WORKER_MULTIPROC_METHOD"


def mark_replica() -> None:
    """In the engine replica, before its engine starts: its engine core may fork its worker."""
    if METHOD not in os.environ:
        os.environ[MARK] = "1"


def _in_ray_worker() -> bool:
    ray = sys.modules.get("ray")
    return bool(ray is not None and getattr(ray, "is_initialized", lambda: False)())


def start_method(is_cpu: bool, binding_skipped: bool, cpu_lists: list[list[int]]) -> str:
    """How the engine core starts its workers: "fork" where vLLM's CPU thread binding survives
    it (no CPU platform, no binding, one core per worker), else "spawn"."""
    if not is_cpu or binding_skipped:
        return "fork"
    return "fork" if cpu_lists and all(len(cpus) == 1 for cpus in cpu_lists) else "spawn"


def after_import(module) -> None:
    """In the engine core (a child of a marked replica, no Ray worker itself): choose the
    workers' start method when the executor starts them, and bind a forked worker's core."""
    if os.environ.get(MARK) != "1" or _in_ray_worker():
        return
    executor = module.MultiprocExecutor
    init_executor = executor._init_executor

    def _init_executor(self):
        from vllm.platforms import current_platform

        is_cpu, skipped, lists = current_platform.is_cpu(), True, []
        if is_cpu:  # vLLM's own binding, computed as its executor computes it below
            manager = module.OMPProcessManager(self.vllm_config)
            skipped, lists = manager.skip_setup, manager.cpu_lists
        method = start_method(is_cpu, skipped, lists)
        os.environ[METHOD] = method
        if method == "fork" and not skipped:
            _bind_forked_workers(module.WorkerProc, lists)
        return init_executor(self)

    executor._init_executor = _init_executor


def _bind_forked_workers(worker_proc, cpu_lists: list[list[int]]) -> None:
    """Each forked worker binds itself to its rank's core before it does anything else."""
    worker_main = worker_proc.worker_main

    def bound_worker_main(*args, **kwargs):
        os.sched_setaffinity(0, cpu_lists[kwargs["local_rank"]])
        return worker_main(*args, **kwargs)

    worker_proc.worker_main = staticmethod(bound_worker_main)
