"""Describe the machine a benchmark ran on."""

from __future__ import annotations

import os
import platform


def describe() -> str:
    cpu = platform.processor() or platform.machine()
    try:
        for line in open("/proc/cpuinfo"):
            if line.startswith("model name"):
                cpu = line.split(":", 1)[1].strip()
                break
    except OSError:
        pass
    mem = ""
    try:
        for line in open("/proc/meminfo"):
            if line.startswith("MemTotal"):
                mem = f", {int(line.split()[1]) / 2**20:.0f} GiB RAM"
                break
    except OSError:
        pass
    return (f"{cpu}, {os.cpu_count()} logical CPUs{mem}, {isa()}, "
            f"Python {platform.python_version()}")


def isa() -> str:
    """The vector instruction sets that decide which vLLM CPU kernels exist here."""
    from engine.cpu_features import cpu_flags

    flags = cpu_flags()
    if flags is None:
        return "ISA unknown"
    if "avx512f" in flags:
        extra = [f for f in ("avx512_bf16", "amx_tile") if f in flags]
        return "AVX-512" + (f" ({', '.join(extra)})" if extra else "")
    return "AVX2 (no AVX-512)" if "avx2" in flags else "no AVX2"
