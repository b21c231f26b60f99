"""``engine:``: vLLM's engine settings (KV cache, batch, lengths)."""

from __future__ import annotations

from typing import Any, Literal

from pydantic import Field

from .base import _Strict


class EngineSettings(_Strict):
    """Paged attention, scheduling and KV cache."""

    max_model_len: int = Field(4096, ge=64, description="Context length (prompt + output).")
    block_size: int = Field(
        32, ge=1, description="Tokens per KV cache block (paged attention); CPU: a multiple of 32."
    )
    max_num_seqs: int = Field(16, ge=1, description="Sequences batched per engine step.")
    max_num_batched_tokens: int | None = Field(
        None, ge=64, description="Tokens per engine step; None lets vLLM choose."
    )
    gpu_memory_utilization: float = Field(
        0.9, gt=0, le=1, description="GPU only: fraction of GPU memory for weights and KV cache."
    )
    cpu_kv_cache_gib: float = Field(
        1.0, gt=0, description="CPU only: KV cache size in GiB."
    )
    enable_prefix_caching: bool = Field(
        True, description="Reuse the KV cache of a prompt prefix seen before (images included).")
    kv_cache_dtype: Literal["auto", "fp8", "fp8_e4m3", "fp8_e5m2"] = Field(
        "auto", description="KV cache element type; auto: the model's dtype. fp8 halves the cache "
        "(GPU).")
    enforce_eager: bool = Field(False, description="Skip torch.compile / CUDA graphs.")
    compact_json: bool = Field(
        True, description="Constrained JSON is decoded without free whitespace: "
        "response_format json_schema/json_object and structured_outputs json with none "
        "between tokens (vLLM's disable_any_whitespace, xgrammar backend), tool calls (tool_choice "
        "'required', a named function, strict arguments) with at most one character between "
        "tokens (xgrammar's structural tags allow no less). Off: the grammar allows whitespace "
        "anywhere JSON does, and a model that prefers it can fill max_tokens with it.")
    seed: int = Field(0, description="The engine's random seed (sampling without a per-request "
                      "seed).")
    extra_args: dict[str, Any] = Field(
        default_factory=dict,
        description="Any other vLLM engine argument, by its EngineArgs name (checked).",
    )

    @property
    def cpu_kv_cache_bytes(self) -> int:
        """vLLM's ``kv_cache_memory_bytes`` on CPU (its KV cache takes exactly this)."""
        return int(self.cpu_kv_cache_gib * (1 << 30))
