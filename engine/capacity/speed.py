"""Speed bounds: decode tokens/s from memory bandwidth, prefill and the vision encoder from
peak compute. Bounds, not predictions: a real engine stays below them."""

from __future__ import annotations

from typing import Any

from ..architecture import Architecture
from ..devices import Device
from .weights import decode_read_bytes, language_weight_bytes
from .workload import Workload


def decode_bound(speed: dict[str, Any], batch: int) -> float:
    """Decode tokens/s at most for ``batch`` sequences (a plan's ``speed`` section): every step
    reads the weights once and each sequence's KV cache at the average context."""
    step_bytes = (speed["decode_read_bytes_per_step"]
                  + batch * speed["average_context_tokens"] * speed["kv_bytes_per_token_per_gpu"])
    return batch * speed["bandwidth_gbs"] * 1e9 / step_bytes


def cached_image_share(image_repeat: float, replicas: int, affinity: bool) -> float:
    """The share of a workload's images that reach a replica whose caches hold them: of the
    repeats, all with the image-affinity router (or one replica), else one in ``replicas`` (a
    repeat lands on any replica alike)."""
    return image_repeat * (1.0 if affinity or replicas <= 1 else 1.0 / replicas)


def speed_plan(arch: Architecture, device: Device | None, bandwidth_gbs: float | None,
               dtype_bytes: int, tp: int, kv_bytes_per_token: int, workload: Workload,
               prompt_tokens: int, fit: int, image_flops: float, image_prompt_tokens: int,
               video_flops: float, cached_images: float) -> dict[str, Any]:
    """The plan's ``speed`` section: decode bounds when the bandwidth is known (batch 1 and the
    batch that fits), prefill and vision bounds on a GPU (its peak BF16 compute).
    ``cached_images``: the share of the workload's images the engine finds in its caches
    (``cached_image_share``), whose vision encoder and prefill it skips."""
    speed: dict[str, Any] = {
        "bandwidth_gbs": bandwidth_gbs,
        "decode_read_bytes_per_step": int(decode_read_bytes(arch, dtype_bytes) / tp),
        "average_context_tokens": prompt_tokens + workload.output_tokens / 2,
        "kv_bytes_per_token_per_gpu": kv_bytes_per_token}
    if bandwidth_gbs:
        at_fit = decode_bound(speed, max(fit, 1))
        speed["decode_tokens_per_s_batch1_max"] = decode_bound(speed, 1)
        speed["decode_tokens_per_s_at_fit_max"] = at_fit
        speed["tpot_ms_at_fit_min"] = 1000 * max(fit, 1) / at_fit
    if device is not None:
        flops = device.bf16_tflops * 1e12 * tp
        lm_params = sum(language_weight_bytes(arch, 2).values()) / 2
        computed = workload.images * (1 - cached_images)  # images the engine encodes
        text = prompt_tokens - workload.images * cached_images * image_prompt_tokens
        prefill = (2 * lm_params * text + computed * image_flops
                   + workload.videos * video_flops)
        speed["prefill_ms_min"] = 1000 * prefill / flops
        speed["vision_ms_per_image_min"] = 1000 * image_flops / flops
        speed["peak_tflops"] = device.bf16_tflops * tp
    return speed
