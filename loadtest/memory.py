"""Memory beside speed: what the serving replica holds, sampled during a run.

- CPU: resident memory (RSS) of the engine's processes (the Ray replica actor and vLLM's engine
  core, or ``vllm serve`` and its engine core), summed. On CPU this includes vLLM's KV cache,
  which it allocates up front (``engine.cpu_kv_cache_gib``), as a GPU engine does on the GPU.
- GPU: memory in use on the GPUs, from ``nvidia-smi`` (what the model card reports).
- vLLM's KV cache usage (``kv_cache_usage_perc``) from the deployment's Prometheus text.
"""

from __future__ import annotations

import threading
import time
import urllib.request
from typing import Callable

from engine.devices import nvidia_smi

GIB = float(1 << 30)
KV_METRICS = ("ray_vllm_kv_cache_usage_perc", "vllm:kv_cache_usage_perc")


def process_tree(pids: list[int]) -> list[int]:
    """``pids`` and all their descendants that are alive."""
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


def rss_bytes(pids: list[int]) -> int:
    import psutil

    total = 0
    for pid in pids:
        try:
            total += psutil.Process(pid).memory_info().rss
        except (psutil.NoSuchProcess, psutil.AccessDenied):
            pass
    return total


def gpu_memory_bytes() -> int | None:
    """Memory used on all visible NVIDIA GPUs, or None without ``nvidia-smi``."""
    rows = nvidia_smi("memory.used")
    try:
        return None if rows is None else sum(int(r[0]) for r in rows) << 20
    except ValueError:
        return None


def kv_cache_usage(metrics_text: str) -> float | None:
    """Highest ``kv_cache_usage_perc`` (0..1) in a Prometheus text, or None if absent."""
    best = None
    for line in metrics_text.splitlines():
        if line.startswith(KV_METRICS):
            try:
                value = float(line.rsplit(" ", 1)[1])
            except (IndexError, ValueError):
                continue
            best = value if best is None else max(best, value)
    return best


def scrape(url: str, api_key: str | None = None, timeout: float = 5.0) -> str:
    req = urllib.request.Request(url, headers={"Authorization": f"Bearer {api_key}"}
                                 if api_key else {})
    with urllib.request.urlopen(req, timeout=timeout) as r:
        return r.read().decode()


class MemorySampler:
    """Samples engine memory and KV cache usage every ``interval`` seconds in a thread.

    The engine's process list is looked up again only every ``pids_every`` seconds: finding a
    local stack's engine processes walks every process on the machine, and the sampler shares
    the cores of the deployment it measures, so it reads memory of a known list in between."""

    def __init__(self, engine_pids: Callable[[], list[int]] | None, metrics_url: str | None,
                 api_key: str | None = None, interval: float = 1.0, pids_every: float = 10.0):
        self.engine_pids = engine_pids
        self.metrics_url = metrics_url
        self.api_key = api_key
        self.interval = interval
        self.pids_every = pids_every
        self.rss: list[int] = []
        self.gpu: list[int] = []
        self.kv: list[float] = []
        self._pids: list[int] = []
        self._pids_at: float | None = None
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)

    def _current_pids(self, fresh: bool = False) -> list[int]:
        now = time.monotonic()
        if fresh or self._pids_at is None or now - self._pids_at >= self.pids_every:
            self._pids, self._pids_at = self.engine_pids(), now
        return self._pids

    def sample(self, fresh_pids: bool = False) -> None:
        if self.engine_pids is not None:
            pids = self._current_pids(fresh_pids)
            if pids:
                self.rss.append(rss_bytes(pids))
        gpu = gpu_memory_bytes()
        if gpu is not None:
            self.gpu.append(gpu)
        if self.metrics_url:
            try:
                kv = kv_cache_usage(scrape(self.metrics_url, self.api_key))
            except OSError:
                kv = None
            if kv is not None:
                self.kv.append(kv)

    def _run(self) -> None:
        while not self._stop.is_set():
            self.sample()
            self._stop.wait(self.interval)

    def __enter__(self) -> "MemorySampler":
        self.sample()
        self._thread.start()
        return self

    def __exit__(self, *exc) -> None:
        self._stop.set()
        self._thread.join(timeout=30)
        self.sample(fresh_pids=True)

    def summary(self) -> dict:
        """Peak and mean memory in GiB; KV cache usage peak as a fraction."""
        out: dict = {"memory_samples": max(len(self.rss), len(self.gpu))}
        if self.rss:
            out["engine_rss_gib_peak"] = max(self.rss) / GIB
            out["engine_rss_gib_mean"] = sum(self.rss) / len(self.rss) / GIB
        if self.gpu:
            out["gpu_memory_gib_peak"] = max(self.gpu) / GIB
        out["memory_gib_peak"] = out.get("gpu_memory_gib_peak", out.get("engine_rss_gib_peak"))
        out["kv_cache_usage_peak"] = max(self.kv) if self.kv else None
        return out
