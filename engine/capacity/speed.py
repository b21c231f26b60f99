"""Speed bounds from the plan's ``speed`` section: decode tokens/s at a batch size."""

from __future__ import annotations

from typing import Any


def decode_bound(speed: dict[str, Any], batch: int) -> float:
    """Decode tokens/s at most for ``batch`` sequences (a plan's ``speed`` section): every step
    reads the weights once and each sequence's KV cache at the average context."""
    step_bytes = (speed["decode_read_bytes_per_step"]
                  + batch * speed["average_context_tokens"] * speed["kv_bytes_per_token_per_gpu"])
    return batch * speed["bandwidth_gbs"] * 1e9 / step_bytes
