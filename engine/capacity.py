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

from __future__ import annotations

import math
from dataclasses import asdict, dataclass, field
from typing import Any

from .checkpoint import stored_dtype
from .releases import OFFICIAL_RELEASE, OFFICIAL_TEXT, OFFICIAL_VISION
from .devices import Device
from .vision import PATCH, VISION_EXTRA_TOKENS, image_tokens, temporal_patches, video_frames

DTYPE_BYTES = {"float32": 4, "bfloat16": 2, "float16": 2, "fp8": 1, "fp8_e4m3": 1,
               "fp8_e5m2": 1}
# Non-torch memory on a GPU (CUDA context, cuBLAS/NCCL workspaces) and CUDA graphs; an estimate.
RUNTIME_OVERHEAD_BYTES = {"graphs": 3 << 29, "eager": 1 << 29}  # 1.5 GiB, 0.5 GiB
GPU_DEFAULT_BATCHED_TOKENS = 8192  # vLLM's default max_num_batched_tokens for online serving

class PlanError(ValueError):
    """The plan cannot be made (no architecture, bad workload); the message says why."""


def official_config(source: str) -> dict | None:
    """The config.json of an official Qwen2-VL release named by ``source``, or None."""
    m = OFFICIAL_RELEASE.search(source)
    if m is None:
        return None
    size, quant = m.group(1).upper(), (m.group(2) or "").upper()
    text = OFFICIAL_TEXT[size]
    cfg: dict[str, Any] = {**text, "torch_dtype": "float16" if quant else "bfloat16",
                           "vision_config": {**OFFICIAL_VISION, "hidden_size": text["hidden_size"]}}
    if quant.startswith("GPTQ"):
        cfg["quantization_config"] = {"quant_method": "gptq", "bits": int(quant[-1]),
                                      "group_size": 128, "desc_act": False, "sym": True}
    elif quant == "AWQ":
        cfg["quantization_config"] = {"quant_method": "awq", "bits": 4, "group_size": 128,
                                      "zero_point": True}
    return cfg


# ------------------------------------------------------------------------------ architecture
@dataclass(frozen=True)
class Architecture:
    """The sizes a plan needs, from a Qwen2-VL ``config.json`` (flat or ``text_config``)."""

    vocab_size: int
    hidden_size: int
    intermediate_size: int
    num_layers: int
    num_heads: int
    num_kv_heads: int
    head_dim: int
    tied_embeddings: bool
    checkpoint_dtype: str
    vision_depth: int
    vision_embed_dim: int
    vision_heads: int
    vision_mlp_ratio: float
    vision_in_channels: int
    patch_size: int
    merge_size: int
    temporal_patch_size: int
    quant_method: str | None = None  # "gptq" / "awq"
    quant_bits: int | None = None
    quant_group_size: int | None = None

    @classmethod
    def from_config(cls, cfg: dict) -> "Architecture":
        text = {**cfg, **(cfg.get("text_config") or {})}
        vision = cfg.get("vision_config") or {}
        qc = cfg.get("quantization_config") or {}
        try:
            hidden, heads = int(text["hidden_size"]), int(text["num_attention_heads"])
            tied = text.get("tie_word_embeddings", cfg.get("tie_word_embeddings", False))
            return cls(
                vocab_size=int(text["vocab_size"]), hidden_size=hidden,
                intermediate_size=int(text["intermediate_size"]),
                num_layers=int(text["num_hidden_layers"]), num_heads=heads,
                num_kv_heads=int(text.get("num_key_value_heads") or heads),
                head_dim=int(text.get("head_dim") or hidden // heads),
                tied_embeddings=bool(tied),
                checkpoint_dtype=str(stored_dtype(cfg) or "bfloat16"),
                vision_depth=int(vision["depth"]), vision_embed_dim=int(vision["embed_dim"]),
                vision_heads=int(vision["num_heads"]),
                vision_mlp_ratio=float(vision.get("mlp_ratio", 4)),
                vision_in_channels=int(vision.get("in_channels", vision.get("in_chans", 3))),
                patch_size=int(vision.get("patch_size", 14)),
                merge_size=int(vision.get("spatial_merge_size", 2)),
                temporal_patch_size=int(vision.get("temporal_patch_size", 2)),
                quant_method=str(qc["quant_method"]).lower() if qc.get("quant_method") else None,
                quant_bits=int(qc.get("bits", qc.get("w_bit", 0))) or None if qc else None,
                quant_group_size=int(qc.get("group_size", qc.get("q_group_size", 0))) or None
                if qc else None,
            )
        except (KeyError, TypeError, ValueError) as err:
            raise PlanError(f"config.json is not a Qwen2-VL configuration (missing or bad "
                            f"{err})") from None


# ---------------------------------------------------------------------------------- weights
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


def vision_flops(arch: Architecture, patches: int) -> float:
    """Dense FLOPs of the vision encoder for one image: 2 per weight per patch, plus full
    attention over the image's patches in every block."""
    p = vision_params(arch)
    per_patch = 2 * (p["patch_embed"] + p["blocks"])
    merger = 2 * p["merger"] * patches / arch.merge_size ** 2
    attention = arch.vision_depth * 4 * patches ** 2 * arch.vision_embed_dim
    return per_patch * patches + merger + attention


# ---------------------------------------------------------------------------------- the plan
def parse_size(text: str) -> tuple[int, int]:
    """An image size written ``WIDTHxHEIGHT`` (``1024x768``) as (width, height), both >= 1;
    ``ValueError`` says what is wrong (the CLIs turn it into their own error)."""
    try:
        width, height = (int(v) for v in text.lower().split("x"))
    except ValueError:
        raise ValueError(f"{text!r}: expected WIDTHxHEIGHT, e.g. 1024x768") from None
    if width < 1 or height < 1:
        raise ValueError(f"{text!r}: width and height must be >= 1")
    return width, height


@dataclass
class Workload:
    prompt_tokens: int = 512  # text tokens per request
    output_tokens: int = 128
    images: float = 1  # per request (an average: the load tests send images on a share)
    image_size: tuple[int, int] = (1024, 768)  # width, height
    videos: int = 0  # video files per request
    video_seconds: float = 60
    video_fps: float = 30  # the file's own frame rate
    video_size: tuple[int, int] = (640, 360)  # width, height
    requests_per_s: float | None = None
    concurrency: int | None = None
    slo_ttft_ms: float | None = None
    slo_tpot_ms: float | None = None


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


def activation_bytes(arch: Architecture, batched_tokens: int, max_num_seqs: int,
                     dtype_bytes: int) -> int:
    """Estimated peak of vLLM's profiling run: one step of ``max_num_batched_tokens`` through a
    decoder layer (residual, QKV, the MLP's gate/up) and the sampler's float32 logits."""
    h, i = arch.hidden_size, arch.intermediate_size
    qkv = (arch.num_heads + 2 * arch.num_kv_heads) * arch.head_dim
    per_token = (4 * h + qkv + 3 * i) * dtype_bytes
    logits = 3 * max_num_seqs * arch.vocab_size * 4
    return batched_tokens * per_token + logits


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
    videos, video_flops = _videos(cfg, arch, workload, warnings)

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


def _videos(cfg, arch: Architecture, workload: Workload,
            warnings: list[str]) -> tuple[dict[str, Any], float]:
    """What each video of the workload becomes (the front door's own plan: frames, frame size,
    tokens) and the vision encoder's FLOPs for it; ({}, 0) without videos."""
    if not workload.videos:
        return {}, 0.0
    mm, budget = cfg.multimodal, cfg.video_budget()
    if workload.videos > mm.max_videos_per_prompt:
        warnings.append(f"the workload sends {workload.videos} videos per request, more than "
                        f"multimodal.max_videos_per_prompt {mm.max_videos_per_prompt}: refused")
    if workload.video_seconds > cfg.limits.max_video_seconds:
        warnings.append(f"{workload.video_seconds:g}-second videos exceed "
                        f"limits.max_video_seconds {cfg.limits.max_video_seconds:g}: refused")
    w, h = workload.video_size
    total = max(2, round(workload.video_seconds * workload.video_fps))
    vp = video_frames(total, workload.video_fps, h, w, budget, min_pixels=mm.min_pixels,
                    max_pixels=mm.max_pixels)
    if vp.tokens > budget.max_tokens:
        warnings.append(f"each video needs {vp.tokens} tokens even at the frame floor, over "
                        f"multimodal.video_max_tokens {budget.max_tokens}: refused")
    # Qwen2-VL's vision encoder attends within each temporal patch (two frames).
    flops = temporal_patches(vp.frames) * vision_flops(
        arch, (vp.height // PATCH) * (vp.width // PATCH))
    return ({"duration_s": workload.video_seconds, "fps": workload.video_fps,
             "size": f"{w}x{h}", "frames": vp.frames, "resized_width": vp.width,
             "resized_height": vp.height, "video_tokens": vp.tokens,
             "prompt_tokens": vp.tokens + VISION_EXTRA_TOKENS,
             "budget_tokens": budget.max_tokens, "vision_gflops": flops / 1e9}, flops)


def decode_bound(speed: dict[str, Any], batch: int) -> float:
    """Decode tokens/s at most for ``batch`` sequences (a plan's ``speed`` section): every step
    reads the weights once and each sequence's KV cache at the average context."""
    step_bytes = (speed["decode_read_bytes_per_step"]
                  + batch * speed["average_context_tokens"] * speed["kv_bytes_per_token_per_gpu"])
    return batch * speed["bandwidth_gbs"] * 1e9 / step_bytes


def gib(n: float) -> str:
    return f"{n / (1 << 30):.2f} GiB"


def architecture_for(cfg) -> tuple[Architecture, str]:
    """The architecture of a config's checkpoint and where it was read: the embedded model's
    spec, a local checkpoint, the Hugging Face cache, or an official release's known config."""
    from .checkpoint import read_config
    from .embedded_model import hf_config, is_embedded, spec_for

    src = cfg.model.source
    if is_embedded(src):
        name, spec = spec_for(src)
        data = hf_config(spec).to_dict()
        data["torch_dtype"] = spec.dtype
        if spec.quant is not None:
            data["quantization_config"] = spec.quant.quantization_config()
        return Architecture.from_config(data), f"embedded model {name}"
    data, origin = read_config(src, cfg.model.revision)
    if data is None:
        data, origin = official_config(src), f"{src} (the official release's config, built in)"
    if data is None:
        raise PlanError(f"no config.json for {src}: run `qwen-vl download --config ...` first, "
                        "or point model.source at a checkpoint directory")
    return Architecture.from_config(data), origin
