"""The accelerators a capacity plan can be made for: memory, bandwidth and peak compute.

Memory is the total the CUDA driver reports (``torch.cuda.mem_get_info``, what vLLM's
``gpu_memory_utilization`` is a fraction of), in MiB. Bandwidth and dense BF16 tensor throughput
are the vendors' data-sheet figures: upper bounds, which real kernels approach but do not reach.
``cpu`` has no table row: its bandwidth is measured (or given), and its KV cache is the
configured ``engine.cpu_kv_cache_gib``.
"""

from __future__ import annotations

from dataclasses import dataclass


@dataclass(frozen=True)
class Device:
    name: str
    memory_mib: int  # per GPU
    bandwidth_gbs: float  # GB/s (10^9 bytes), per GPU
    bf16_tflops: float  # dense tensor-core peak, per GPU

    @property
    def memory_bytes(self) -> int:
        return self.memory_mib << 20


GPUS: dict[str, Device] = {d.name: d for d in (
    Device("A10G", 23028, 600, 70),
    Device("L4", 23034, 300, 121),
    Device("L40S", 46068, 864, 362),
    Device("A100-40GB", 40960, 1555, 312),
    Device("A100-80GB", 81920, 2039, 312),
    Device("H100", 81559, 3350, 989),  # SXM, 80 GB HBM3
    Device("H200", 143771, 4800, 989),
)}


def gpu(name: str) -> Device:
    """A table row by name, case-insensitive (``a100-80gb``, ``h100``)."""
    for key, dev in GPUS.items():
        if key.lower() == name.lower():
            return dev
    raise KeyError(f"unknown GPU {name!r}; known: {', '.join(GPUS)} (or cpu)")
