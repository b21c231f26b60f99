"""The accelerators a capacity plan can be made for: memory, bandwidth and peak compute.

Memory is the total the CUDA driver reports (``torch.cuda.mem_get_info``, what vLLM's
``gpu_memory_utilization`` is a fraction of), in MiB. Bandwidth and dense BF16 tensor throughput
are the vendors' data-sheet figures: upper bounds, which real kernels approach but do not reach.
``cpu`` has no table row: its bandwidth is measured (or given), and its KV cache is the
configured ``engine.cpu_kv_cache_gib``.
"""

from __future__ import annotations

import shutil
import subprocess
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


# nvidia-smi's GPU names -> the table's rows (first match wins: H200 before H100, the 80 GB
# A100 before the 40 GB one).
_NAME_MARKERS = (("H200", "H200"), ("H100", "H100"), ("A100-SXM4-80GB", "A100-80GB"),
                 ("A100 80GB", "A100-80GB"), ("A100", "A100-40GB"), ("L40S", "L40S"),
                 ("L4", "L4"), ("A10G", "A10G"))


def row_for_gpu_name(label: str) -> str | None:
    """The table's row for a GPU name as nvidia-smi prints it, or None."""
    name = label.upper()
    return next((row for marker, row in _NAME_MARKERS if marker in name), None)


def nvidia_smi(*fields: str) -> list[list[str]] | None:
    """One row per visible NVIDIA GPU with the ``--query-gpu`` fields (no header, no units),
    or None where nvidia-smi is missing or fails."""
    if not shutil.which("nvidia-smi"):
        return None
    try:
        out = subprocess.run(["nvidia-smi", f"--query-gpu={','.join(fields)}",
                              "--format=csv,noheader,nounits"],
                             capture_output=True, text=True, timeout=10, check=True).stdout
    except (subprocess.SubprocessError, OSError):
        return None
    return [[v.strip() for v in line.split(",")] for line in out.splitlines() if line.strip()]
