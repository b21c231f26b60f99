"""The 4-bit GEMM fallback for CPUs whose vLLM kernel library lacks one.

Checked against vLLM's own weight preprocessing (``CPUWNA16LinearKernel``) and, where vLLM's
kernel exists (AVX-512 processors), against that kernel itself."""

from __future__ import annotations

import subprocess
import sys

import pytest
import torch

from engine import cpu_kernels
from engine.quantize import QuantScheme, dequantize_linear, quantize_linear


@pytest.fixture
def w4a16_layer_setup(monkeypatch):
    """One process (rank 0 of 1: vLLM's weight parameters ask), and the bf16-activation layout."""
    import vllm.model_executor.parameter as parameter

    monkeypatch.setattr(parameter, "get_tensor_model_parallel_rank", lambda: 0)
    monkeypatch.setattr(parameter, "get_tensor_model_parallel_world_size", lambda: 1)
    # On AMX processors vLLM repacks 4-bit weights for its int8-activation kernel by default;
    # the fallback replaces the bf16-activation kernel (processors without AVX-512 have no AMX),
    # so the weights are prepared for that one.
    monkeypatch.setenv("VLLM_CPU_INT4_W4A8", "0")


def _vllm_processed(packed: dict, scheme: QuantScheme):
    """Run vLLM's own CPUWNA16 preprocessing on packed GPTQ/AWQ tensors; returns the layer."""
    from vllm.model_executor.kernels.linear.mixed_precision.cpu import CPUWNA16LinearKernel
    from vllm.model_executor.kernels.linear.mixed_precision.MPLinearKernel import (
        MPLinearLayerConfig,
    )
    from vllm.model_executor.layers.quantization.auto_awq import (
        _convert_awq_to_standard_format,
    )
    from vllm.model_executor.parameter import PackedvLLMParameter
    from vllm.scalar_type import scalar_types

    qweight = packed["qweight"]
    in_f = qweight.shape[0] * 8 if scheme.method == "gptq" else qweight.shape[0]
    out_f = packed["scales"].shape[1]
    layer = torch.nn.Module()
    noop = lambda *a, **k: None  # noqa: E731
    if scheme.method == "gptq":
        layer.qweight = PackedvLLMParameter(data=qweight.clone(), input_dim=0, output_dim=1,
                                            packed_dim=0, packed_factor=8, weight_loader=noop)
        layer.qzeros = torch.nn.Parameter(packed["qzeros"].clone(), requires_grad=False)
        wtype, zero_points = scalar_types.uint4b8, False
    else:
        layer.qweight = torch.nn.Parameter(qweight.clone(), requires_grad=False)
        layer.qzeros = torch.nn.Parameter(packed["qzeros"].clone(), requires_grad=False)
        _convert_awq_to_standard_format(layer, "qweight", "qzeros", 4)
        wtype, zero_points = scalar_types.uint4, True
    layer.scales = torch.nn.Parameter(packed["scales"].to(torch.bfloat16), requires_grad=False)
    layer.scales.output_dim = 1
    layer.bias = None
    cfg = MPLinearLayerConfig(full_weight_shape=(in_f, out_f),
                              partition_weight_shape=(in_f, out_f), weight_type=wtype,
                              act_type=torch.bfloat16, group_size=scheme.group_size,
                              zero_points=zero_points)
    kernel = CPUWNA16LinearKernel(cfg, w_q_param_name="qweight", w_s_param_name="scales",
                                  w_zp_param_name="qzeros")
    kernel.process_weights_after_loading(layer)
    return layer


@pytest.mark.parametrize("method", ["gptq", "awq"])
def test_fallback_reads_vllms_blocked_layout(method, w4a16_layer_setup):
    scheme = QuantScheme(method, 4)
    torch.manual_seed(0)
    w = torch.randn(160, 256) * 0.1
    w[:, :128] += 0.05  # asymmetric groups for AWQ
    packed = quantize_linear(w, scheme)
    layer = _vllm_processed(packed, scheme)
    zeros = getattr(layer, "qzeros", None)
    x = torch.randn(5, 256).to(torch.bfloat16)
    out = torch.empty(5, 160, dtype=torch.bfloat16)
    cpu_kernels.gemm_wna16(x, layer.qweight.data, out, layer.scales.data,
                           zeros.data if zeros is not None else None, None, 8, "vec")
    reference = x.float() @ dequantize_linear(packed, scheme).t()
    torch.testing.assert_close(out.float(), reference, rtol=2e-2, atol=2e-2)
    if cpu_kernels.vllm_has_wna16():  # AVX-512: vLLM's own kernel gives the same
        from vllm import _custom_ops as ops

        theirs = ops.cpu_gemm_wna16(x, layer.qweight.data, layer.scales.data,
                                    zeros.data if zeros is not None else None, None, 8,
                                    layer.isa_hint)
        torch.testing.assert_close(out.float(), theirs.float(), rtol=2e-2, atol=2e-2)


def test_installed_only_where_vllm_lacks_the_kernel():
    """In a fresh interpreter (the .pth hook, as in vLLM's workers) the op exists either way,
    and it is ours exactly when vLLM's library for this processor has none."""
    code = (
        "import torch\n"
        "import vllm.model_executor.kernels.linear.mixed_precision.cpu\n"
        "from engine import cpu_kernels\n"
        "print(hasattr(torch.ops._C, 'cpu_gemm_wna16'), cpu_kernels._fragment is not None)\n"
    )
    r = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=300)
    assert r.returncode == 0, r.stderr[-2000:]
    has_op, ours = r.stdout.split()[-2:]
    assert has_op == "True"
    import torch as t

    vllm_native = t.cpu._is_avx512_supported()  # vLLM loads _C/_C_AVX512 (with the kernel)
    assert ours == str(not vllm_native)
