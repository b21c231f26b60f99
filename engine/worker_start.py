"""vLLM's worker process, started the way ``vllm serve`` starts it: forked from the engine core.

vLLM starts its processes with multiprocessing "spawn" whenever the starting process is a Ray
actor, because Ray's own threads make a fork there unsafe. The engine replica is a Ray actor, so
its engine core is spawned, which is right; but the engine core inherits the replica's
``VLLM_WORKER_MULTIPROC_METHOD=spawn`` and so spawns its worker too, although the engine core is
no Ray actor and ``vllm serve`` forks its worker from the same process. A spawned worker imports
torch and vLLM again before it can load the model; a forked one starts with them imported, so a
replica starts sooner and its start takes less of the machine.

The replica marks its environment (``mark_replica``) unless the operator chose a start method
(``VLLM_WORKER_MULTIPROC_METHOD`` in the replica's environment: theirs holds). In the engine
core, after vLLM's multiprocess executor module is imported and before it starts a worker,
``after_import`` lets the worker fork. vLLM still checks at the start of each worker and spawns
where a fork is unsafe for its own reasons (CUDA initialized in the engine core, NUMA binding).
Installed in every process by ``engine.process_hooks``.
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


def after_import(_module) -> None:
    """In the engine core (a child of a marked replica, no Ray worker itself): fork workers."""
    if os.environ.get(MARK) == "1" and not _in_ray_worker():
        os.environ[METHOD] = "fork"
