"""Capacity planning: what a serving config needs and holds, computed from the model's
``config.json`` and the accelerator, before anything is downloaded or started.

Exact where vLLM's own arithmetic is (checked against a live engine by the tests):
- weight bytes, from the architecture (language model and vision tower; GPTQ/AWQ layers in
  their packed format: qweight, qzeros, scales and GPTQ's g_idx);
- KV bytes per token = layers x KV heads (per GPU) x head_dim x 2 (K and V) x dtype bytes;
- KV capacity: blocks = KV memory // (block_size x KV bytes per token), and the token count vLLM
  logs at start-up ("KV cache size: N tokens") = blocks / ceil(max_model_len / block_size) x
  max_model_len;
- tokens per image: ``qwen_vl_utils.smart_resize`` (factor 28) then one token per 28x28 area,
  plus the vision start/end tokens.

Bounds, not predictions (a real engine stays below them):
- decode tokens/s from memory bandwidth: each step reads the language model's weights once and
  each sequence's KV cache;
- prefill and the vision encoder from peak dense compute (2 FLOPs per weight per token, plus
  attention).

An estimate: on GPUs the KV memory is what vLLM leaves after weights, its profiled activation
peak and non-torch memory (CUDA context, cuBLAS, CUDA graphs); the latter two are estimated
here (``activation_bytes``, ``RUNTIME_OVERHEAD_BYTES``) and listed so they can be corrected.
On CPU the KV memory is ``engine.cpu_kv_cache_gib`` exactly.
"""

from ..architecture import Architecture, DTYPE_BYTES, PlanError, architecture_for, official_config
from .kv_cache import GPU_DEFAULT_BATCHED_TOKENS
from .media import vision_flops
from .plan import Plan, make_plan
from .speed import decode_bound
from .weights import (
    RUNTIME_OVERHEAD_BYTES,
    activation_bytes,
    decode_read_bytes,
    gib,
    language_weight_bytes,
    vision_params,
    weight_bytes,
)
from .workload import Workload, parse_size

__all__ = [
    "Architecture",
    "DTYPE_BYTES",
    "GPU_DEFAULT_BATCHED_TOKENS",
    "Plan",
    "PlanError",
    "RUNTIME_OVERHEAD_BYTES",
    "Workload",
    "activation_bytes",
    "architecture_for",
    "decode_bound",
    "decode_read_bytes",
    "gib",
    "language_weight_bytes",
    "make_plan",
    "official_config",
    "parse_size",
    "vision_flops",
    "vision_params",
    "weight_bytes",
]
