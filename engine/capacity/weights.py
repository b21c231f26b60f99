"""Weight bytes per part (GPTQ/AWQ layers in their packed format), the bytes a decode step
reads, and the activation peak vLLM profiles."""

from __future__ import annotations

import math

from ..architecture import Architecture


def _linear(arch: Architecture, n_in: int, n_out: int, dtype_bytes: int, bias: bool,
            quantized: bool) -> int:
    bias_bytes = n_out * dtype_bytes if bias else 0
    if not quantized:
        return n_in * n_out * dtype_bytes + bias_bytes
    bits, group = arch.quant_bits or 4, arch.quant_group_size or 128
    group = n_in if group in (-1, 0) else group
    groups = math.ceil(n_in / group)
    packed = n_in * n_out * bits // 8  # qweight
    zeros = groups * n_out * bits // 8  # qzeros
    scales = groups * n_out * 2  # float16
    g_idx = n_in * 4 if arch.quant_method == "gptq" else 0  # int32 per input
    return packed + zeros + scales + g_idx + bias_bytes


def language_weight_bytes(arch: Architecture, dtype_bytes: int) -> dict[str, int]:
    """Embedding, decoder layers (norms included), final norm, LM head (0 when tied)."""
    h, i, hd = arch.hidden_size, arch.intermediate_size, arch.head_dim
    q_out, kv_out = arch.num_heads * hd, arch.num_kv_heads * hd
    quant = arch.quant_method in ("gptq", "awq")
    qdtype = 2 if quant else dtype_bytes  # quantized checkpoints run 16-bit activations

    def lin(n_in, n_out, bias=False):
        return _linear(arch, n_in, n_out, qdtype, bias, quant)

    layer = (lin(h, q_out, True) + 2 * lin(h, kv_out, True) + lin(q_out, h)
             + 2 * lin(h, i) + lin(i, h) + 2 * h * dtype_bytes)
    embed = arch.vocab_size * h * dtype_bytes
    return {"embedding": embed, "layers": arch.num_layers * layer, "norm": h * dtype_bytes,
            "lm_head": 0 if arch.tied_embeddings else embed}


def vision_params(arch: Architecture) -> dict[str, int]:
    e, m = arch.vision_embed_dim, int(arch.vision_embed_dim * arch.vision_mlp_ratio)
    merged = e * arch.merge_size ** 2
    block = 4 * e + (e * 3 * e + 3 * e) + (e * e + e) + (e * m + m) + (m * e + e)
    return {
        "patch_embed": e * arch.vision_in_channels * arch.temporal_patch_size
        * arch.patch_size ** 2,
        "blocks": arch.vision_depth * block,
        "merger": 2 * e + merged * merged + merged + merged * arch.hidden_size + arch.hidden_size,
    }


def weight_bytes(arch: Architecture, dtype_bytes: int) -> dict[str, int]:
    """Bytes of weights the engine holds: language model and vision tower (unquantized)."""
    lm = sum(language_weight_bytes(arch, dtype_bytes).values())
    vision = sum(vision_params(arch).values()) * dtype_bytes
    return {"language_model": lm, "vision_tower": vision, "total": lm + vision}


def decode_read_bytes(arch: Architecture, dtype_bytes: int) -> int:
    """Weight bytes one decode step reads: everything in the language model but the embedding
    table (one row per token), which a tied LM head reads whole."""
    parts = language_weight_bytes(arch, dtype_bytes)
    head = parts["embedding"] if arch.tied_embeddings else parts["lm_head"]
    return parts["layers"] + parts["norm"] + head


def activation_bytes(arch: Architecture, batched_tokens: int, max_num_seqs: int,
                     dtype_bytes: int) -> int:
    """Estimated peak of vLLM's profiling run: one step of ``max_num_batched_tokens`` through a
    decoder layer (residual, QKV, the MLP's gate/up) and the sampler's float32 logits."""
    h, i = arch.hidden_size, arch.intermediate_size
    qkv = (arch.num_heads + 2 * arch.num_kv_heads) * arch.head_dim
    per_token = (4 * h + qkv + 3 * i) * dtype_bytes
    logits = 3 * max_num_seqs * arch.vocab_size * 4
    return batched_tokens * per_token + logits


# Non-torch memory on a GPU (CUDA context, cuBLAS/NCCL workspaces) and CUDA graphs; an estimate.
RUNTIME_OVERHEAD_BYTES = {"graphs": 3 << 29, "eager": 1 << 29}  # 1.5 GiB, 0.5 GiB


def gib(n: float) -> str:
    return f"{n / (1 << 30):.2f} GiB"
