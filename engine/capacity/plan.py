"""The capacity plan of a config on a device for a workload (``make_plan``): its parts put
together, and how many requests fit and how many replicas the load needs."""

from __future__ import annotations

import math
from dataclasses import asdict, dataclass, field
from typing import Any

from ..architecture import Architecture, DTYPE_BYTES
from ..devices import Device
from .kv_cache import kv_cache_plan
from .media import workload_images, workload_videos
from .speed import cached_image_share, speed_plan
from .weights import weight_bytes
from .workload import Workload


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
    """The plan for a ``ServingConfig`` on ``device`` (None: CPU) under ``workload``: the
    weights, the KV cache (``kv_cache``), the workload's media (``media``), how many of its
    requests fit, the speed bounds (``speed``) and the replicas the load needs."""
    e, d = cfg.engine, cfg.deployment
    warnings: list[str] = []
    dtype = _dtype(cfg, arch)
    kv_dtype = dtype if e.kv_cache_dtype == "auto" else e.kv_cache_dtype
    tp = d.tensor_parallel_size if device is not None else 1
    if device is None and d.device == "gpu":
        warnings.append("the config is for GPUs (deployment.device: gpu) but the plan is for cpu")

    weights = weight_bytes(arch, DTYPE_BYTES[dtype])
    kv = kv_cache_plan(cfg, arch, device, math.ceil(weights["total"] / tp), DTYPE_BYTES[dtype],
                       DTYPE_BYTES[kv_dtype], tp, warnings)
    images, image_flops = workload_images(cfg, arch, workload, warnings)
    videos, video_flops = workload_videos(cfg, arch, workload, warnings)

    # A request of the workload, and how many fit in the KV cache at once.
    prompt = (workload.prompt_tokens + math.ceil(workload.images * images["prompt_tokens"])
              + workload.videos * videos.get("prompt_tokens", 0))
    seq = prompt + workload.output_tokens
    if seq > e.max_model_len:
        warnings.append(f"a request of {seq} tokens (prompt {prompt} + output "
                        f"{workload.output_tokens}) exceeds engine.max_model_len {e.max_model_len}")
    fit_by_kv = kv.section["blocks"] // math.ceil(seq / e.block_size)
    fit = min(fit_by_kv, e.max_num_seqs)
    if fit_by_kv == 0:
        warnings.append("not one request of this workload fits in the KV cache")

    bandwidth = device.bandwidth_gbs if device is not None else cpu_bandwidth_gbs
    cached = cached_image_share(workload.image_repeat, d.most_replicas,
                                d.routing.image_affinity)
    speed = speed_plan(arch, device, bandwidth, DTYPE_BYTES[dtype], tp,
                       kv.section["bytes_per_token_per_gpu"], workload, prompt, fit, image_flops,
                       images["prompt_tokens"], video_flops, cached)
    images["cached_share"] = cached
    load = {"request_tokens": seq, "prompt_tokens": prompt, "fit_concurrency": fit,
            "fit_limited_by": "KV cache" if fit_by_kv < e.max_num_seqs else "engine.max_num_seqs",
            **_replicas_needed(workload, fit, speed, tp if device is not None else 0, warnings)}
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
        memory=kv.memory, kv_cache=kv.section, images=images, videos=videos, speed=speed,
        load=load, warnings=warnings,
    )


def _dtype(cfg, arch: Architecture) -> str:
    """The dtype the engine's weights and activations take."""
    dtype = cfg.engine_dtype()
    if dtype == "auto":
        dtype = arch.checkpoint_dtype if arch.checkpoint_dtype in DTYPE_BYTES else "bfloat16"
        if dtype == "float32":  # vLLM runs float32 checkpoints in 16 bits unless told
            dtype = "bfloat16"
    return dtype


def _replicas_needed(workload: Workload, fit: int, speed: dict[str, Any], gpus_per_replica: int,
                     warnings: list[str]) -> dict[str, Any]:
    """The replicas (and GPUs) the workload's concurrency or request rate needs, and the SLOs
    the bounds already rule out."""
    load: dict[str, Any] = {}
    needs = []
    if workload.concurrency:
        needs.append(workload.concurrency / max(fit, 1))
    if workload.requests_per_s and "decode_tokens_per_s_at_fit_max" in speed:
        out_rate = workload.requests_per_s * workload.output_tokens
        needs.append(out_rate / speed["decode_tokens_per_s_at_fit_max"])
        load["output_tokens_per_s_needed"] = out_rate
    if needs:
        load["replicas_needed_min"] = max(1, math.ceil(max(needs) - 1e-9))
        load["gpus_needed_min"] = load["replicas_needed_min"] * gpus_per_replica
    if workload.slo_tpot_ms and speed.get("tpot_ms_at_fit_min", 0) > workload.slo_tpot_ms:
        warnings.append(f"TPOT SLO {workload.slo_tpot_ms:g} ms cannot be met at the fitting "
                        f"batch ({fit}): the bandwidth bound alone is "
                        f"{speed['tpot_ms_at_fit_min']:.1f} ms; use fewer sequences per replica")
    if workload.slo_ttft_ms and speed.get("prefill_ms_min", 0) > workload.slo_ttft_ms:
        warnings.append(f"TTFT SLO {workload.slo_ttft_ms:g} ms cannot be met: prefill alone "
                        f"takes at least {speed['prefill_ms_min']:.0f} ms at peak compute")
    return load
