"""The machine's memory read bandwidth: what bounds single-stream decode, for the capacity
planner (``qwen-vl plan`` on CPU) and the load tests' bandwidth limit alike."""

from __future__ import annotations

import time


def measure_bandwidth(gib: float = 1.0, passes: int = 5) -> float:
    """Read bandwidth in bytes/s, the best of ``passes``: summing a buffer much larger than the
    caches with every thread (CPU), or copying one (GPU)."""
    import torch

    if torch.cuda.is_available():
        src = torch.empty(int(gib * (1 << 30)) // 4, dtype=torch.float32, device="cuda")
        dst = torch.empty_like(src)
        best = float("inf")
        for _ in range(passes):
            torch.cuda.synchronize()
            st = time.perf_counter()
            dst.copy_(src)
            torch.cuda.synchronize()
            best = min(best, time.perf_counter() - st)
        return 2 * src.numel() * 4 / best  # read + write
    buf = torch.ones(int(gib * (1 << 30)) // 4, dtype=torch.float32)  # sum() uses every thread
    best = float("inf")
    for _ in range(passes):
        st = time.perf_counter()
        buf.sum()
        best = min(best, time.perf_counter() - st)
    return buf.numel() * 4 / best
