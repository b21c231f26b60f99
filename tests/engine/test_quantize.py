"""The GPTQ/AWQ packer: exact packing, bounded rounding, and the official release formats."""

from __future__ import annotations

import json

import pytest
import torch

from engine.embedded_model import SPECS, ensure_checkpoint
from engine.quantize import (
    AWQ_ORDER,
    QuantScheme,
    QuantizeError,
    checkpoint_scheme,
    dequantize_linear,
    pack_int32,
    quantize_linear,
    read_safetensors,
    step_sizes,
    unpack_int32,
    write_dequantized_checkpoint,
)

SCHEMES = {"gptq-int4": QuantScheme("gptq", 4), "gptq-int8": QuantScheme("gptq", 8),
           "awq": QuantScheme("awq", 4)}


def _weight(out_f=256, in_f=384, seed=0) -> torch.Tensor:
    g = torch.Generator().manual_seed(seed)
    w = torch.randn(out_f, in_f, generator=g) * 0.05
    w[3, 7], w[100, 200] = 2.5, -3.0  # outliers: a group whose range is set by one value
    w[:, 128:256] += 0.4  # an offset group (AWQ's zero point matters)
    return w


@pytest.mark.parametrize("bits", [4, 8])
@pytest.mark.parametrize("dim", [0, 1])
def test_pack_unpack_is_exact(bits, dim):
    q = torch.randint(0, 1 << bits, (64, 96), dtype=torch.int32)
    packed = pack_int32(q, bits, dim)
    assert packed.dtype == torch.int32
    assert packed.shape[dim] == q.shape[dim] * bits // 32
    assert torch.equal(unpack_int32(packed, bits, dim), q)


def test_packing_matches_vllms_own_unpacker():
    """Same bit order as vLLM's GPTQ loader, and AWQ's interleave is the one vLLM reverses."""
    from vllm.model_executor.layers.quantization.auto_awq import _REVERSE_AWQ_PACK_ORDER
    from vllm.model_executor.layers.quantization.utils.quant_utils import (
        unpack_quantized_values_into_int32,
    )
    from vllm.scalar_type import scalar_types

    q = torch.randint(0, 16, (64, 32), dtype=torch.int32)
    for dim in (0, 1):
        ours = pack_int32(q, 4, dim)
        assert torch.equal(unpack_quantized_values_into_int32(ours, scalar_types.uint4b8, dim), q)
    assert [AWQ_ORDER.index(i) for i in range(8)] == list(_REVERSE_AWQ_PACK_ORDER)


@pytest.mark.parametrize("name", list(SCHEMES))
def test_round_trip_within_half_a_step(name):
    """dequantize(pack(W)) is within half a quantization step of W, element-wise."""
    scheme, w = SCHEMES[name], _weight()
    packed = quantize_linear(w, scheme)
    err = (dequantize_linear(packed, scheme) - w).abs()
    step = step_sizes(packed, scheme)
    assert (err <= step * 0.5 * (1 + 1e-5)).all(), float((err / step).max())
    assert (err > 0).any()  # it did quantize


@pytest.mark.parametrize("name", list(SCHEMES))
def test_tensor_formats_are_the_releases(name):
    scheme, w = SCHEMES[name], _weight()
    t = quantize_linear(w, scheme)
    out_f, in_f = w.shape
    groups = in_f // 128
    assert t["scales"].dtype == torch.float16 and t["scales"].shape == (groups, out_f)
    if scheme.method == "gptq":
        assert set(t) == {"qweight", "qzeros", "scales", "g_idx"}
        assert t["qweight"].shape == (in_f * scheme.bits // 32, out_f)
        assert t["qzeros"].shape == (groups, out_f * scheme.bits // 32)
        # symmetric: every zero is 2**(bits-1), stored minus one (AutoGPTQ's v1 convention)
        assert (unpack_int32(t["qzeros"], scheme.bits, 1) == (1 << (scheme.bits - 1)) - 1).all()
        assert torch.equal(t["g_idx"], torch.arange(in_f, dtype=torch.int32) // 128)
    else:
        assert set(t) == {"qweight", "qzeros", "scales"}
        assert t["qweight"].shape == (in_f, out_f // 8)
        assert t["qzeros"].shape == (groups, out_f // 8)
    assert all(v.dtype == torch.int32 for k, v in t.items() if k != "scales")


def test_shapes_that_cannot_be_packed_are_refused():
    with pytest.raises(QuantizeError, match="group 128"):
        quantize_linear(torch.zeros(64, 100), QuantScheme("gptq", 4))
    with pytest.raises(QuantizeError, match="4-bit only"):
        QuantScheme("awq", 8)


# ------------------------------------------------------------------ embedded checkpoints
@pytest.fixture(scope="module")
def checkpoints():
    return {v: ensure_checkpoint(f"embedded:qwen2-vl-tiny-{v}") for v in SCHEMES}


@pytest.mark.parametrize("variant", list(SCHEMES))
def test_checkpoint_config_is_the_releases(checkpoints, variant):
    cfg = json.loads((checkpoints[variant] / "config.json").read_text())
    qc = cfg["quantization_config"]
    if variant.startswith("gptq"):
        assert qc == {"bits": int(variant[-1]), "damp_percent": 0.01, "desc_act": False,
                      "group_size": 128, "modules_in_block_to_quantize": None,
                      "quant_method": "gptq", "sym": True, "true_sequential": True}
    else:
        assert qc == {"bits": 4, "group_size": 128, "modules_to_not_convert": None,
                      "quant_method": "awq", "version": "gemm", "zero_point": True}
    assert checkpoint_scheme(checkpoints[variant]) == SPECS[f"qwen2-vl-tiny-{variant}"].quant


@pytest.mark.parametrize("variant", list(SCHEMES))
def test_only_language_model_linears_are_quantized(checkpoints, variant):
    state = read_safetensors(checkpoints[variant])
    quantized = {k.rsplit(".", 1)[0] for k in state if k.endswith(".qweight")}
    spec = SPECS[f"qwen2-vl-tiny-{variant}"]
    assert len(quantized) == 7 * spec.num_hidden_layers  # q k v o gate up down
    assert all(".layers." in m and not m.startswith("visual") for m in quantized)
    vision = {k: v for k, v in state.items() if k.startswith("visual.")}
    assert vision and all(v.dtype == torch.float16 for v in vision.values())
    assert not any(k.endswith(".weight") and k.rsplit(".", 1)[0] in quantized for k in state)
    assert state["model.embed_tokens.weight"].dtype == torch.float16


@pytest.mark.parametrize("variant", list(SCHEMES))
def test_dequantized_reference_loads_in_transformers(checkpoints, variant, tmp_path):
    """Every tensor of the quantized checkpoint has its place in plain transformers' model,
    and the dequantized weights are within half a step of the unquantized model's."""
    from transformers import Qwen2VLForConditionalGeneration

    write_dequantized_checkpoint(checkpoints[variant], tmp_path)
    model, info = Qwen2VLForConditionalGeneration.from_pretrained(
        tmp_path, dtype=torch.float32, output_loading_info=True)
    assert not any(info.values()), info
    base = read_safetensors(ensure_checkpoint("embedded:qwen2-vl-tiny"))
    scheme = SPECS[f"qwen2-vl-tiny-{variant}"].quant
    packed = read_safetensors(checkpoints[variant])
    name = "model.layers.1.mlp.down_proj"
    tensors = {k: packed[f"{name}.{k}"] for k in ("qweight", "qzeros", "scales", "g_idx")
               if f"{name}.{k}" in packed}
    err = (dequantize_linear(tensors, scheme) - base[f"{name}.weight"]).abs()
    assert (err <= step_sizes(tensors, scheme) * 0.5 * (1 + 1e-3)).all()
    loaded = dict(model.named_parameters())
    got = next(v for k, v in loaded.items() if k.endswith("layers.1.mlp.down_proj.weight"))
    assert torch.equal(got, dequantize_linear(tensors, scheme))


def test_int8_packs_and_unpacks_exactly(checkpoints):
    state = read_safetensors(checkpoints["gptq-int8"])
    for key, t in state.items():
        if key.endswith(".qweight"):
            assert torch.equal(pack_int32(unpack_int32(t, 8, 0), 8, 0), t)
        elif key.endswith(".qzeros"):
            assert torch.equal(pack_int32(unpack_int32(t, 8, 1), 8, 1), t)
