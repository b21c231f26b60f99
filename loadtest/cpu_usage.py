"""CPU seconds per request, per process group of a deployment, from the processes' own counters.

Wall time on a machine whose engine busy-waits on every core mixes the serving path's cost with
contention; CPU time does not. Each process of a target is put in one group by its title (Ray
and vLLM set them): the HTTP proxy, the ingress replica, the engine replica's Python side,
vLLM's engine core and workers, the Serve controller, GCS and raylet, Ray's other daemons; for
``vllm serve``, its API server and engine core. ``CpuMeter`` reads every process's user+system
seconds before and after a block and splits the difference by group.

Background work (Ray's daemons poll, the controller reconciles) costs CPU whether requests come
or not, so each measurement also reads an idle window just before the block and one just after,
and subtracts their combined rate over the block's duration: what is left is what the requests
cost. Two windows, because that work comes in bursts (metrics exports, reports every few
seconds): one short window before a long block can miss the bursts the block catches, and
charge them to the requests.
"""

from __future__ import annotations

import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable

# Display order; "serving path" is everything but the engine's own computation.
GROUPS = ("HTTP proxy", "HAProxy", "ingress replica", "ingress router", "engine replica (Python)",
          "API server (vllm serve)", "engine core", "workers", "Serve controller",
          "quota ledger", "GCS/raylet", "Ray dashboard", "Ray dashboard agent",
          "Ray runtime-env agent", "Ray log monitor", "Ray autoscaler monitor",
          "Ray client server", "other")
ENGINE_GROUPS = frozenset({"engine core", "workers"})

# Ordered: the first mark found in a process's title or command line names its group.
MARKS = (
    ("EngineCore", "engine core"),
    ("VLLM::Worker", "workers"),
    ("ProxyActor", "HTTP proxy"),
    ("HAProxyManager", "HAProxy"),
    ("haproxy", "HAProxy"),
    ("ServeController", "Serve controller"),
    ("LLMRouter", "ingress router"),
    ("OpenAiIngress", "ingress replica"),
    ("LLMServer", "engine replica (Python)"),
    ("QwenVLServer", "engine replica (Python)"),
    ("QuotaLedger", "quota ledger"),
    ("vllm.entrypoints.openai.api_server", "API server (vllm serve)"),
    ("gcs_server", "GCS/raylet"),
    ("raylet", "GCS/raylet"),
    # Ray's daemons one by one: which of them a request costs is what the overhead report asks.
    ("DashboardAgent", "Ray dashboard agent"),
    ("dashboard/agent.py", "Ray dashboard agent"),
    ("dashboard", "Ray dashboard"),
    ("RuntimeEnvAgent", "Ray runtime-env agent"),
    ("log_monitor", "Ray log monitor"),
    ("monitor.py", "Ray autoscaler monitor"),
    ("ray.util.client", "Ray client server"),
)


def group_of(argv: list[str]) -> str:
    """The group of a process from its command line: a title set by Ray or vLLM, else the
    program (and for Python, its script or module; a daemon's later flags name other
    daemons)."""
    if not argv:
        return "other"
    head = argv[0]
    if not head.startswith(("ray::", "VLLM::")) and Path(head).name.startswith("python"):
        head = " ".join(argv[:3])
    for mark, group in MARKS:
        if mark in head:
            return group
    return "other"


def read_counters(pids: list[int]) -> dict[int, tuple[str, float]]:
    """pid -> (group, user+system CPU seconds) of each process still alive."""
    import psutil

    out = {}
    for pid in pids:
        try:
            p = psutil.Process(pid)
            with p.oneshot():
                argv = p.cmdline() or [p.name()]
                t = p.cpu_times()
            out[pid] = (group_of(argv), t.user + t.system)
        except (psutil.NoSuchProcess, psutil.AccessDenied, psutil.ZombieProcess):
            pass
    return out


def by_group(before: dict[int, tuple[str, float]],
             after: dict[int, tuple[str, float]]) -> dict[str, float]:
    """CPU seconds spent between two readings, per group (a process born in between counts
    from zero; one that ended in between is lost, which a running deployment does not do)."""
    out: dict[str, float] = {}
    for pid, (group, t) in after.items():
        prev = before.get(pid)
        out[group] = out.get(group, 0.0) + t - (prev[1] if prev else 0.0)
    return out


@dataclass
class CpuReading:
    """CPU seconds of one block per group, with the idle rate subtracted."""

    seconds: float  # the block's wall time
    spent: dict[str, float]  # raw CPU seconds per group
    idle_per_s: dict[str, float]  # CPU seconds per second per group while idle
    net: dict[str, float] = field(init=False)

    def __post_init__(self):
        groups = set(self.spent) | set(self.idle_per_s)
        self.net = {g: max(0.0, self.spent.get(g, 0.0) - self.idle_per_s.get(g, 0.0)
                           * self.seconds) for g in groups}

    def per_request_ms(self, requests: int) -> dict[str, float]:
        """Net CPU milliseconds per request, per group, in display order."""
        return {g: 1000 * self.net[g] / requests for g in GROUPS if g in self.net}

    def serving_path_ms(self, requests: int) -> float:
        """Net CPU ms per request of every group but the engine's computation."""
        return 1000 * sum(v for g, v in self.net.items() if g not in ENGINE_GROUPS) / requests

    def cores(self, span: float) -> dict[str, float]:
        """Net cores per group over ``span`` seconds: the time the load was on, inside a block
        that also holds the load generator's start-up, when the deployment idles."""
        return {g: v / span for g, v in self.net.items()} if span > 0 else {}

    def busiest(self, span: float) -> tuple[str, float]:
        """(group, net cores over ``span``) of the busiest serving-path group."""
        serving = {g: c for g, c in self.cores(span).items() if g not in ENGINE_GROUPS}
        if not serving:
            return "none", 0.0
        g = max(serving, key=serving.get)
        return g, serving[g]


class CpuMeter:
    """Measures blocks of work on the processes ``pids()`` returns (read at each reading, so a
    replica that starts in between is seen)."""

    def __init__(self, pids: Callable[[], list[int]], idle_s: float = 5.0):
        self.pids, self.idle_s = pids, idle_s

    def idle_rate(self) -> dict[str, float]:
        before = read_counters(self.pids())
        t0 = time.monotonic()
        time.sleep(self.idle_s)
        after = read_counters(self.pids())
        dt = time.monotonic() - t0
        return {g: max(0.0, v) / dt for g, v in by_group(before, after).items()}

    def measure(self, block: Callable[[], object]) -> tuple[CpuReading, object]:
        """(reading, block's result): an idle window, the block, another idle window."""
        first = self.idle_rate()
        before = read_counters(self.pids())
        t0 = time.monotonic()
        result = block()
        dt = time.monotonic() - t0
        after = read_counters(self.pids())
        idle = mean_rate(first, self.idle_rate())
        return CpuReading(dt, by_group(before, after), idle), result


def mean_rate(a: dict[str, float], b: dict[str, float]) -> dict[str, float]:
    """The mean of two equally long idle windows' rates, per group (a group missing from one
    window spent nothing there)."""
    return {g: (a.get(g, 0.0) + b.get(g, 0.0)) / 2 for g in set(a) | set(b)}
