"""The capacity plan of a config on a device for a workload (``make_plan``), and its units."""

from __future__ import annotations

import math
from dataclasses import asdict, dataclass, field
from typing import Any

from ..architecture import Architecture, DTYPE_BYTES
from ..devices import Device
from ..vision import image_tokens
from .media import vision_flops, workload_videos
from .speed import decode_bound
from .weights import (RUNTIME_OVERHEAD_BYTES, activation_bytes, decode_read_bytes,
                      language_weight_bytes, weight_bytes)
from .workload import Workload


GPU_DEFAULT_BATCHED_TOKENS = 8192  # vLLM's default max_num_batched_tokens for online serving


@dataclass
class Plan:
    model: dict[str, Any]
    device: dict[str, Any]
    memory: dict[str, Any]
    kv_cache: dict[str, Any]
    images: dict[str, Any]
    videos: dict[str, Any]
    speed: dict[str, Any]
    load: dict[str, Any]
    warnings: list[str] = field(default_factory=list)

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


def make_plan(cfg, arch: Architecture, origin: str, device: Device | None,
              workload: Workload, cpu_bandwidth_gbs: float | None = None) -> Plan:
    """The plan for a ``ServingConfig`` on ``device`` (None: CPU) under ``workload``."""
    e, mm, d = cfg.engine, cfg.multimodal, cfg.deployment
    warnings: list[str] = []
    dtype = cfg.engine_dtype()
    if dtype == "auto":
        dtype = arch.checkpoint_dtype if arch.checkpoint_dtype in DTYPE_BYTES else "bfloat16"
        if dtype == "float32":  # vLLM runs float32 checkpoints in 16 bits unless told
            dtype = "bfloat16"
    dtype_bytes = DTYPE_BYTES[dtype]
    kv_dtype = dtype if e.kv_cache_dtype == "auto" else e.kv_cache_dtype
    kv_dtype_bytes = DTYPE_BYTES[kv_dtype]
    tp = d.tensor_parallel_size if device is not None else 1
    if device is None and d.device == "gpu":
        warnings.append("the config is for GPUs (deployment.device: gpu) but the plan is for cpu")

    weights = weight_bytes(arch, dtype_bytes)
    weights_per_gpu = math.ceil(weights["total"] / tp)
    kv_heads_per_gpu = max(1, arch.num_kv_heads // tp)
    if tp > arch.num_kv_heads:
        warnings.append(f"tensor_parallel_size {tp} > {arch.num_kv_heads} KV heads: each GPU "
                        "holds a replicated KV head, so KV memory per token does not shrink")
    kv_per_token = arch.num_layers * kv_heads_per_gpu * arch.head_dim * 2 * kv_dtype_bytes
    kv_per_token_total = arch.num_layers * arch.num_kv_heads * arch.head_dim * 2 * kv_dtype_bytes

    memory: dict[str, Any] = {"weights_per_gpu_bytes": weights_per_gpu}
    if device is None:
        kv_memory = e.cpu_kv_cache_bytes
        memory["kv_cache_bytes"] = kv_memory
        memory["source"] = "engine.cpu_kv_cache_gib"
    else:
        batched = e.max_num_batched_tokens or GPU_DEFAULT_BATCHED_TOKENS
        act = activation_bytes(arch, batched, e.max_num_seqs, dtype_bytes)
        overhead = RUNTIME_OVERHEAD_BYTES["eager" if e.enforce_eager else "graphs"]
        budget = int(device.memory_bytes * e.gpu_memory_utilization)
        kv_memory = budget - weights_per_gpu - act - overhead
        memory.update({"gpu_bytes": device.memory_bytes,
                       "gpu_memory_utilization": e.gpu_memory_utilization,
                       "budget_bytes": budget, "activation_peak_bytes_estimate": act,
                       "runtime_overhead_bytes_estimate": overhead,
                       "kv_cache_bytes": max(kv_memory, 0),
                       "source": "budget - weights - activation peak - runtime overhead"})
        if weights_per_gpu > budget:
            warnings.append(f"cannot start: the weights ({gib(weights_per_gpu)} per GPU) exceed "
                            f"{e.gpu_memory_utilization:g} x {device.name} memory "
                            f"({gib(budget)}); use a bigger GPU, tensor parallelism or 4-bit")
        kv_memory = max(kv_memory, 0)

    block_bytes = kv_per_token * e.block_size
    blocks = kv_memory // block_bytes
    blocks_per_max_len = math.ceil(e.max_model_len / e.block_size)
    max_len_concurrency = blocks / blocks_per_max_len
    kv_tokens_reported = int(max_len_concurrency * e.max_model_len)  # as vLLM logs it
    if kv_tokens_reported < e.max_model_len:
        warnings.append(f"cannot start: the KV cache holds {kv_tokens_reported} tokens, fewer "
                        f"than engine.max_model_len {e.max_model_len} (vLLM refuses); lower "
                        "max_model_len or give the KV cache more memory")

    # Images
    w, h = workload.image_size
    per_image = image_tokens(h, w, mm.min_pixels, mm.max_pixels)
    largest = image_tokens(int(math.isqrt(mm.max_pixels)), int(math.isqrt(mm.max_pixels)),
                           mm.min_pixels, mm.max_pixels)
    max_image_prompt = mm.max_images_per_prompt * largest["prompt_tokens"]
    if max_image_prompt > e.max_model_len:
        warnings.append(
            f"multimodal.max_images_per_prompt ({mm.max_images_per_prompt}) x up to "
            f"{largest['prompt_tokens']} tokens per image (max_pixels {mm.max_pixels}) = "
            f"{max_image_prompt} > engine.max_model_len {e.max_model_len}: such prompts cannot "
            "be served (and vLLM may refuse to start); lower max_pixels or the image count")
    if workload.images > mm.max_images_per_prompt:
        warnings.append(f"the workload sends {workload.images} images per request, more than "
                        f"multimodal.max_images_per_prompt {mm.max_images_per_prompt}: refused")
    vflops = vision_flops(arch, per_image["patches"])
    videos, video_flops = workload_videos(cfg, arch, workload, warnings)

    # Requests
    prompt = (workload.prompt_tokens + math.ceil(workload.images * per_image["prompt_tokens"])
              + workload.videos * videos.get("prompt_tokens", 0))
    seq = prompt + workload.output_tokens
    if seq > e.max_model_len:
        warnings.append(f"a request of {seq} tokens (prompt {prompt} + output "
                        f"{workload.output_tokens}) exceeds engine.max_model_len {e.max_model_len}")
    blocks_per_request = math.ceil(seq / e.block_size)
    fit_by_kv = int(blocks // blocks_per_request)
    fit = min(fit_by_kv, e.max_num_seqs)
    if fit_by_kv == 0:
        warnings.append("not one request of this workload fits in the KV cache")

    # Speed bounds
    bandwidth = (device.bandwidth_gbs if device is not None else cpu_bandwidth_gbs)
    read = decode_read_bytes(arch, dtype_bytes) / tp
    avg_ctx = prompt + workload.output_tokens / 2
    speed: dict[str, Any] = {"bandwidth_gbs": bandwidth, "decode_read_bytes_per_step": int(read),
                             "average_context_tokens": avg_ctx,
                             "kv_bytes_per_token_per_gpu": kv_per_token}
    if bandwidth:
        at_fit = decode_bound(speed, max(fit, 1))
        speed["decode_tokens_per_s_batch1_max"] = decode_bound(speed, 1)
        speed["decode_tokens_per_s_at_fit_max"] = at_fit
        speed["tpot_ms_at_fit_min"] = 1000 * max(fit, 1) / at_fit
    if device is not None:
        flops = device.bf16_tflops * 1e12 * tp
        lm_params = (sum(language_weight_bytes(arch, 2).values()) / 2)
        prefill = 2 * lm_params * prompt + workload.images * vflops + workload.videos * video_flops
        speed["prefill_ms_min"] = 1000 * prefill / flops
        speed["vision_ms_per_image_min"] = 1000 * vflops / flops
        speed["peak_tflops"] = device.bf16_tflops * tp

    # Load
    load: dict[str, Any] = {"fit_concurrency": fit, "fit_limited_by":
                            "KV cache" if fit_by_kv < e.max_num_seqs else "engine.max_num_seqs"}
    needs = []
    if workload.concurrency:
        needs.append(workload.concurrency / max(fit, 1))
    if workload.requests_per_s and "decode_tokens_per_s_at_fit_max" in speed:
        out_rate = workload.requests_per_s * workload.output_tokens
        needs.append(out_rate / speed["decode_tokens_per_s_at_fit_max"])
        load["output_tokens_per_s_needed"] = out_rate
    if needs:
        load["replicas_needed_min"] = max(1, math.ceil(max(needs) - 1e-9))
        load["gpus_needed_min"] = load["replicas_needed_min"] * tp if device is not None else 0
    if workload.slo_tpot_ms and speed.get("tpot_ms_at_fit_min", 0) > workload.slo_tpot_ms:
        warnings.append(f"TPOT SLO {workload.slo_tpot_ms:g} ms cannot be met at the fitting "
                        f"batch ({fit}): the bandwidth bound alone is "
                        f"{speed['tpot_ms_at_fit_min']:.1f} ms; use fewer sequences per replica")
    if workload.slo_ttft_ms and speed.get("prefill_ms_min", 0) > workload.slo_ttft_ms:
        warnings.append(f"TTFT SLO {workload.slo_ttft_ms:g} ms cannot be met: prefill alone "
                        f"takes at least {speed['prefill_ms_min']:.0f} ms at peak compute")

    return Plan(
        model={"source": cfg.model.source, "config_from": origin, "dtype": dtype,
               "quantization": (f"{arch.quant_method} {arch.quant_bits}-bit g"
                                f"{arch.quant_group_size}" if arch.quant_method else "none"),
               "tensor_parallel_size": tp, "weights_bytes": weights,
               "max_model_len": e.max_model_len, "block_size": e.block_size,
               "kv_cache_dtype": kv_dtype},
        device={"name": device.name if device else "cpu",
                "memory_bytes": device.memory_bytes if device else None,
                "bandwidth_gbs": bandwidth},
        memory=memory,
        kv_cache={"bytes_per_token_per_gpu": kv_per_token, "bytes_per_token": kv_per_token_total,
                  "blocks": int(blocks), "tokens": int(blocks * e.block_size),
                  "tokens_reported_by_vllm": kv_tokens_reported,
                  "max_concurrency_at_max_model_len": max_len_concurrency},
        images={"size": f"{w}x{h}", **per_image, "vision_gflops": vflops / 1e9,
                "largest_prompt_tokens": largest["prompt_tokens"]},
        videos=videos,
        speed=speed,
        load={"request_tokens": seq, "prompt_tokens": prompt, **load},
        warnings=warnings,
    )


def gib(n: float) -> str:
    return f"{n / (1 << 30):.2f} GiB"
