"""Round-to-nearest GPTQ and AWQ packing, in exactly the on-disk formats of the official
Qwen2-VL GPTQ-Int4/Int8 and AWQ releases.

No checkpoint can be downloaded where this stack is tested, and the quantization libraries
(GPTQModel, AutoGPTQ, AutoAWQ) need CUDA builds, so the embedded model's quantized variants are
packed here. The *format* is the releases'; the *algorithm* is plain round-to-nearest (no
Hessian/activation-aware search), which is all a random-weight model needs:

GPTQ (AutoGPTQ "gptq" checkpoint format, ``sym: true``, ``desc_act: false``)
    ``qweight`` int32 ``[in/pack, out]`` (packed along the input dim, low bits first),
    ``qzeros`` int32 ``[in/group, out/pack]`` holding ``zero - 1`` (AutoGPTQ's v1 convention;
    symmetric, so ``zero = 2**(bits-1)``), ``scales`` float16 ``[in/group, out]``,
    ``g_idx`` int32 ``[in]`` = ``i // group``. ``w = scale * (q - zero)``.
AWQ (AutoAWQ "gemm" version, ``zero_point: true``, 4-bit)
    ``qweight`` int32 ``[in, out/8]`` and ``qzeros`` int32 ``[in/group, out/8]``, both packed
    along the output dim in AWQ's interleaved order ``0 2 4 6 1 3 5 7``, ``scales`` float16
    ``[in/group, out]``. ``w = scale * (q - zero)``.

Scales are rounded *up* to float16 before quantizing, so ``dequantize(pack(W))`` is within half
a quantization step of ``W`` element-wise (tested). Only the language model's linear layers are
quantized; embeddings, norms, the LM head and the whole vision tower stay in float16, as in the
releases.
"""

from __future__ import annotations

import json
import re
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Literal

if TYPE_CHECKING:  # torch is imported where used: config load needs QuantScheme, not torch
    import torch

AWQ_ORDER = (0, 2, 4, 6, 1, 3, 5, 7)
# q/k/v/o and gate/up/down of every language-model decoder layer (transformers 5 key names,
# with the older "model.layers." names of the official releases accepted too).
QUANTIZED_LINEAR = re.compile(
    r"^(?:model\.language_model\.|model\.)layers\.\d+\."
    r"(?:self_attn\.(?:q|k|v|o)_proj|mlp\.(?:gate|up|down)_proj)$"
)
STORAGE_DTYPE = "float16"  # the releases' torch_dtype


class QuantizeError(ValueError):
    """A weight that cannot be packed in the requested format."""


@dataclass(frozen=True)
class QuantScheme:
    method: Literal["gptq", "awq"]
    bits: int = 4
    group_size: int = 128

    def __post_init__(self):
        if self.method == "awq" and self.bits != 4:
            raise QuantizeError("AWQ (gemm) is 4-bit only")
        if self.bits not in (4, 8):
            raise QuantizeError(f"bits must be 4 or 8, not {self.bits}")

    @property
    def label(self) -> str:
        return f"GPTQ-Int{self.bits}" if self.method == "gptq" else "AWQ"

    @classmethod
    def from_config(cls, qc: dict) -> "QuantScheme":
        """The scheme of a checkpoint's ``quantization_config`` (only what this module packs)."""
        method = str(qc.get("quant_method", "")).lower()
        if method == "gptq" and qc.get("sym", True) and not qc.get("desc_act", False):
            return cls("gptq", int(qc["bits"]), int(qc["group_size"]))
        if method == "awq" and qc.get("zero_point", True) and \
                str(qc.get("version", "gemm")).lower() == "gemm":
            return cls("awq", int(qc["bits"]), int(qc["group_size"]))
        raise QuantizeError(f"unsupported quantization_config: {qc}")

    def quantization_config(self) -> dict:
        """The ``quantization_config`` block of the official releases' config.json."""
        if self.method == "gptq":
            return {"bits": self.bits, "damp_percent": 0.01, "desc_act": False,
                    "group_size": self.group_size, "modules_in_block_to_quantize": None,
                    "quant_method": "gptq", "sym": True, "true_sequential": True}
        return {"bits": 4, "group_size": self.group_size, "modules_to_not_convert": None,
                "quant_method": "awq", "version": "gemm", "zero_point": True}


# ----------------------------------------------------------------------------- int32 packing
def pack_int32(q: torch.Tensor, bits: int, dim: int) -> torch.Tensor:
    """Pack unsigned ``bits``-bit values along ``dim``, value ``j`` of each word at bits*j."""
    import torch

    per = 32 // bits
    q = q.to(torch.int64).movedim(dim, -1)
    if q.shape[-1] % per:
        raise QuantizeError(f"size {q.shape[-1]} is not a multiple of {per}")
    q = q.reshape(*q.shape[:-1], q.shape[-1] // per, per)
    shifts = torch.arange(per, dtype=torch.int64) * bits
    words = (q << shifts).sum(-1)
    words = torch.where(words >= 1 << 31, words - (1 << 32), words)  # two's complement int32
    return words.to(torch.int32).movedim(-1, dim).contiguous()


def unpack_int32(words: torch.Tensor, bits: int, dim: int) -> torch.Tensor:
    import torch

    per = 32 // bits
    w = words.to(torch.int64).movedim(dim, -1) & 0xFFFFFFFF
    shifts = torch.arange(per, dtype=torch.int64) * bits
    q = (w.unsqueeze(-1) >> shifts) & ((1 << bits) - 1)
    return q.reshape(*w.shape[:-1], w.shape[-1] * per).movedim(-1, dim).to(torch.int32)


def _awq_interleave(x: torch.Tensor) -> torch.Tensor:
    rows, cols = x.shape
    return x.view(rows, cols // 8, 8)[:, :, list(AWQ_ORDER)].reshape(rows, cols)


def _awq_deinterleave(x: torch.Tensor) -> torch.Tensor:
    inverse = [AWQ_ORDER.index(i) for i in range(8)]
    rows, cols = x.shape
    return x.view(rows, cols // 8, 8)[:, :, inverse].reshape(rows, cols)


def _fp16_at_least(x: torch.Tensor) -> torch.Tensor:
    """Round float32 ``x`` to float16, never below ``x`` (keeps |w/scale| inside the range)."""
    import torch

    h = x.to(torch.float16)
    low = h.float() < x
    h[low] = torch.nextafter(h[low], torch.tensor(float("inf"), dtype=torch.float16))
    return h


# ----------------------------------------------------------------------------- formats
def quantize_linear(weight: torch.Tensor, scheme: QuantScheme) -> dict[str, torch.Tensor]:
    """Pack one ``nn.Linear`` weight (``[out, in]``) into the scheme's tensors."""
    import torch

    out_f, in_f = weight.shape
    g = scheme.group_size
    if in_f % g or out_f % (32 // scheme.bits):
        raise QuantizeError(f"weight {tuple(weight.shape)} does not fit group {g} / "
                            f"{32 // scheme.bits} values per int32")
    w = weight.detach().float().t().contiguous()  # [in, out]
    grouped = w.view(in_f // g, g, out_f)
    maxq = (1 << scheme.bits) - 1
    if scheme.method == "gptq":
        xmax = grouped.abs().amax(1).clamp_min(1e-8)  # [groups, out]
        scales = _fp16_at_least(2 * xmax / maxq)
        zero = 1 << (scheme.bits - 1)
        zeros = torch.full_like(scales, zero, dtype=torch.int32)
    else:
        # the range always includes 0, so the integer zero point is inside [0, maxq]
        wmax, wmin = grouped.amax(1).clamp_min(0), grouped.amin(1).clamp_max(0)
        scales = _fp16_at_least(((wmax - wmin) / maxq).clamp_min(1e-5))
        zeros = torch.round(-wmin / scales.float()).clamp(0, maxq).to(torch.int32)
    s = scales.float().repeat_interleave(g, 0)
    z = zeros.repeat_interleave(g, 0)
    q = torch.clamp(torch.round(w / s) + z, 0, maxq).to(torch.int32)  # [in, out]
    if scheme.method == "gptq":
        return {
            "qweight": pack_int32(q, scheme.bits, 0),
            "qzeros": pack_int32(zeros - 1, scheme.bits, 1),
            "scales": scales,
            "g_idx": (torch.arange(in_f, dtype=torch.int32) // g),
        }
    return {
        "qweight": pack_int32(_awq_interleave(q), 4, 1),
        "qzeros": pack_int32(_awq_interleave(zeros), 4, 1),
        "scales": scales,
    }


def unpack_linear(t: dict[str, torch.Tensor], scheme: QuantScheme) -> tuple[torch.Tensor, ...]:
    """``(q, zeros_per_row, scales_per_row)`` as ``[in, out]`` tensors, for dequantizing."""
    import torch

    if scheme.method == "gptq":
        q = unpack_int32(t["qweight"], scheme.bits, 0)
        zeros = unpack_int32(t["qzeros"], scheme.bits, 1) + 1
        rows = t["g_idx"].long()
    else:
        q = _awq_deinterleave(unpack_int32(t["qweight"], 4, 1))
        zeros = _awq_deinterleave(unpack_int32(t["qzeros"], 4, 1))
        rows = torch.arange(q.shape[0]) // scheme.group_size
    return q, zeros[rows], t["scales"].float()[rows]


def dequantize_linear(t: dict[str, torch.Tensor], scheme: QuantScheme) -> torch.Tensor:
    """The float32 ``[out, in]`` weight that the packed tensors stand for."""
    q, zeros, scales = unpack_linear(t, scheme)
    return ((q - zeros).float() * scales).t().contiguous()


def step_sizes(t: dict[str, torch.Tensor], scheme: QuantScheme) -> torch.Tensor:
    """The quantization step of every element, ``[out, in]``."""
    return unpack_linear(t, scheme)[2].t()


# ----------------------------------------------------------------------------- checkpoints
def quantize_state_dict(state: dict[str, torch.Tensor], scheme: QuantScheme) -> dict:
    """Quantize the language model's linear layers; everything else is stored in float16."""
    import torch

    out: dict[str, torch.Tensor] = {}
    for name, tensor in state.items():
        module, _, leaf = name.rpartition(".")
        if leaf == "weight" and QUANTIZED_LINEAR.match(module):
            for k, v in quantize_linear(tensor, scheme).items():
                out[f"{module}.{k}"] = v
        elif tensor.is_floating_point():
            out[name] = tensor.to(getattr(torch, STORAGE_DTYPE))
        else:
            out[name] = tensor
    if not any(k.endswith(".qweight") for k in out):
        raise QuantizeError("no language-model linear layer found to quantize")
    return out


def dequantize_state_dict(state: dict[str, torch.Tensor], scheme: QuantScheme) -> dict:
    """The float32 state dict a quantized checkpoint stands for (the reference model)."""
    out: dict[str, torch.Tensor] = {}
    packed: dict[str, dict[str, torch.Tensor]] = {}
    for name, tensor in state.items():
        module, _, leaf = name.rpartition(".")
        if leaf in ("qweight", "qzeros", "scales", "g_idx"):
            packed.setdefault(module, {})[leaf] = tensor
        else:
            out[name] = tensor.float() if tensor.is_floating_point() else tensor
    for module, tensors in packed.items():
        out[f"{module}.weight"] = dequantize_linear(tensors, scheme)
    return out


def read_safetensors(directory: Path) -> dict[str, torch.Tensor]:
    from safetensors.torch import load_file

    state: dict[str, torch.Tensor] = {}
    for f in sorted(Path(directory).glob("*.safetensors")):
        state.update(load_file(f))
    return state


def _write_twin(src: Path, dst: Path, state: dict, quant: dict | None, dtype: str) -> None:
    """``dst`` = ``src`` with other weights, quantization_config and dtype (same other files)."""
    import shutil

    from safetensors.torch import save_file

    src, dst = Path(src), Path(dst)
    save_file(state, str(dst / "model.safetensors"), metadata={"format": "pt"})
    for f in src.iterdir():
        if f.is_file() and f.suffix != ".safetensors" and f.name not in (
                "config.json", "model.safetensors.index.json"):
            shutil.copyfile(f, dst / f.name)
    cfg = json.loads((src / "config.json").read_text())
    cfg.pop("quantization_config", None)
    if quant is not None:
        cfg["quantization_config"] = quant
    for block in (cfg, cfg.get("text_config"), cfg.get("vision_config")):
        if isinstance(block, dict):
            for key in ("dtype", "torch_dtype"):
                if key in block or block is cfg:
                    block[key] = dtype
    (dst / "config.json").write_text(json.dumps(cfg, indent=2))


def write_quantized_checkpoint(src: Path, dst: Path, scheme: QuantScheme) -> None:
    """Write ``dst`` as the quantized twin of the unquantized checkpoint ``src``."""
    state = quantize_state_dict(read_safetensors(src), scheme)
    _write_twin(src, dst, state, scheme.quantization_config(), "float16")


def checkpoint_scheme(directory: Path) -> QuantScheme | None:
    qc = json.loads((Path(directory) / "config.json").read_text()).get("quantization_config")
    return QuantScheme.from_config(qc) if qc else None


def write_dequantized_checkpoint(src: Path, dst: Path) -> None:
    """Write ``dst``: the float32 checkpoint that the quantized ``src`` stands for, loadable by
    plain transformers (the reference the stack's quantized output is checked against)."""
    scheme = checkpoint_scheme(src)
    if scheme is None:
        raise QuantizeError(f"{src} is not a GPTQ/AWQ checkpoint")
    state = dequantize_state_dict(read_safetensors(src), scheme)
    _write_twin(src, dst, state, None, "float32")
