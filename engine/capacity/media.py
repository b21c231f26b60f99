"""What images and videos cost: the vision encoder's FLOPs per image, each image and video of a
workload in tokens as the front door counts them (videos as it samples them)."""

from __future__ import annotations

import math
from typing import Any

from ..architecture import Architecture
from ..vision import PATCH, VISION_EXTRA_TOKENS, image_tokens, temporal_patches, video_frames
from .weights import vision_params
from .workload import Workload


def vision_flops(arch: Architecture, patches: int) -> float:
    """Dense FLOPs of the vision encoder for one image: 2 per weight per patch, plus full
    attention over the image's patches in every block."""
    p = vision_params(arch)
    per_patch = 2 * (p["patch_embed"] + p["blocks"])
    merger = 2 * p["merger"] * patches / arch.merge_size ** 2
    attention = arch.vision_depth * 4 * patches ** 2 * arch.vision_embed_dim
    return per_patch * patches + merger + attention


def workload_videos(cfg, arch: Architecture, workload: Workload,
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


def workload_images(cfg, arch: Architecture, workload: Workload,
                    warnings: list[str]) -> tuple[dict[str, Any], float]:
    """Each image of the workload (tokens, as the front door counts them) and the largest
    the config admits, and the vision encoder's FLOPs for one image of the workload."""
    e, mm = cfg.engine, cfg.multimodal
    w, h = workload.image_size
    per_image = image_tokens(h, w, mm.min_pixels, mm.max_pixels)
    side = int(math.isqrt(mm.max_pixels))
    largest = image_tokens(side, side, mm.min_pixels, mm.max_pixels)["prompt_tokens"]
    if mm.max_images_per_prompt * largest > e.max_model_len:
        warnings.append(
            f"multimodal.max_images_per_prompt ({mm.max_images_per_prompt}) x up to "
            f"{largest} tokens per image (max_pixels {mm.max_pixels}) = "
            f"{mm.max_images_per_prompt * largest} > engine.max_model_len {e.max_model_len}: "
            "such prompts cannot be served (and vLLM may refuse to start); lower max_pixels or "
            "the image count")
    if workload.images > mm.max_images_per_prompt:
        warnings.append(f"the workload sends {workload.images} images per request, more than "
                        f"multimodal.max_images_per_prompt {mm.max_images_per_prompt}: refused")
    flops = vision_flops(arch, per_image["patches"])
    return ({"size": f"{w}x{h}", **per_image, "vision_gflops": flops / 1e9,
             "largest_prompt_tokens": largest}, flops)
