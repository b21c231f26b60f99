"""What this machine's CPU can do natively, read from ``/proc/cpuinfo`` (no torch import).

vLLM's CPU engine runs BF16 through oneDNN only where the CPU has BF16 instructions
(AVX512-BF16 or AMX); elsewhere its BF16 linear layers fall back to plain torch, which is far
slower than float32, most of all in prefill and batched decode. ``engine.config`` uses
``native_bf16`` to run unquantized checkpoints in float32 there when ``model.dtype`` is
``auto``.
"""

from __future__ import annotations

import functools

BF16_FLAGS = ("avx512_bf16", "amx_bf16")


@functools.lru_cache(maxsize=1)
def cpu_flags() -> frozenset[str] | None:
    """The x86 feature flags, or None where they cannot be read (not Linux, not x86)."""
    try:
        with open("/proc/cpuinfo") as f:
            for line in f:
                if line.startswith("flags"):
                    return frozenset(line.split(":", 1)[1].split())
    except OSError:
        pass
    return None


def native_bf16() -> bool | None:
    """True where the CPU computes BF16 natively, False where it does not, None: unknown."""
    flags = cpu_flags()
    if flags is None:
        return None
    return any(f in flags for f in BF16_FLAGS)
