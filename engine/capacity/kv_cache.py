"""The KV cache of one replica: the memory left for it (on CPU the configured size; on a GPU
what vLLM leaves after the weights, its activation peak and the runtime) and what that holds,
in blocks and in the token count vLLM logs at start-up."""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any

from ..architecture import Architecture
from ..devices import Device
from .weights import RUNTIME_OVERHEAD_BYTES, activation_bytes, gib

GPU_DEFAULT_BATCHED_TOKENS = 8192  # vLLM's default max_num_batched_tokens for online serving


@dataclass
class KvCache:
    memory: dict[str, Any]  # the plan's "memory" section
    section: dict[str, Any]  # the plan's "kv_cache" section


def kv_cache_plan(cfg, arch: Architecture, device: Device | None, weights_per_gpu: int,
                  dtype_bytes: int, kv_dtype_bytes: int, tp: int,
                  warnings: list[str]) -> KvCache:
    """The KV cache of a ``ServingConfig``'s replica on ``device`` (None: CPU)."""
    e = cfg.engine
    kv_heads_per_gpu = max(1, arch.num_kv_heads // tp)
    if tp > arch.num_kv_heads:
        warnings.append(f"tensor_parallel_size {tp} > {arch.num_kv_heads} KV heads: each GPU "
                        "holds a replicated KV head, so KV memory per token does not shrink")
    per_token = arch.num_layers * kv_heads_per_gpu * arch.head_dim * 2 * kv_dtype_bytes
    per_token_total = arch.num_layers * arch.num_kv_heads * arch.head_dim * 2 * kv_dtype_bytes

    memory: dict[str, Any] = {"weights_per_gpu_bytes": weights_per_gpu}
    if device is None:
        kv_memory = e.cpu_kv_cache_bytes
        memory.update({"kv_cache_bytes": kv_memory, "source": "engine.cpu_kv_cache_gib"})
    else:
        batched = e.max_num_batched_tokens or GPU_DEFAULT_BATCHED_TOKENS
        act = activation_bytes(arch, batched, e.max_num_seqs, dtype_bytes)
        overhead = RUNTIME_OVERHEAD_BYTES["eager" if e.enforce_eager else "graphs"]
        budget = int(device.memory_bytes * e.gpu_memory_utilization)
        kv_memory = max(budget - weights_per_gpu - act - overhead, 0)
        memory.update({"gpu_bytes": device.memory_bytes,
                       "gpu_memory_utilization": e.gpu_memory_utilization,
                       "budget_bytes": budget, "activation_peak_bytes_estimate": act,
                       "runtime_overhead_bytes_estimate": overhead,
                       "kv_cache_bytes": kv_memory,
                       "source": "budget - weights - activation peak - runtime overhead"})
        if weights_per_gpu > budget:
            warnings.append(f"cannot start: the weights ({gib(weights_per_gpu)} per GPU) exceed "
                            f"{e.gpu_memory_utilization:g} x {device.name} memory "
                            f"({gib(budget)}); use a bigger GPU, tensor parallelism or 4-bit")

    blocks = kv_memory // (per_token * e.block_size)
    max_len_concurrency = blocks / math.ceil(e.max_model_len / e.block_size)
    tokens_reported = int(max_len_concurrency * e.max_model_len)  # as vLLM logs it
    if tokens_reported < e.max_model_len:
        warnings.append(f"cannot start: the KV cache holds {tokens_reported} tokens, fewer "
                        f"than engine.max_model_len {e.max_model_len} (vLLM refuses); lower "
                        "max_model_len or give the KV cache more memory")
    section = {"bytes_per_token_per_gpu": per_token, "bytes_per_token": per_token_total,
               "blocks": int(blocks), "tokens": int(blocks * e.block_size),
               "tokens_reported_by_vllm": tokens_reported,
               "max_concurrency_at_max_model_len": max_len_concurrency}
    return KvCache(memory, section)
