"""What a video becomes, from its header alone: the frame count and frame size the model's
toolkit (qwen-vl-utils ``fetch_video``) gives it under a ``VideoBudget``, and so its tokens.

The front door samples every video file by it (``launch.api.video``) and ``qwen-vl plan`` counts a
workload's videos by it, so the two cannot disagree.
"""

from __future__ import annotations

from dataclasses import dataclass

from .config import VideoBudget

PATCH_FACTOR = 28  # 14-pixel patches merged 2x2: one token per 28x28 pixels
VISION_EXTRA_TOKENS = 2  # <|vision_start|> and <|vision_end|> around each image's pads
PATCH = PATCH_FACTOR


@dataclass(frozen=True)
class VideoPlan:
    """What a video file becomes: ``frames`` frames of ``height`` x ``width``."""

    total_frames: int
    fps: float
    frames: int
    height: int
    width: int

    @property
    def tokens(self) -> int:
        """Video pad tokens: two frames make one temporal patch."""
        return (self.frames + 1) // 2 * (self.height // PATCH) * (self.width // PATCH)


def plan(total_frames: int, fps: float, height: int, width: int, budget: VideoBudget, *,
         min_pixels: int, max_pixels: int) -> VideoPlan:
    """The frame count and frame size for a video (qwen-vl-utils' ``fetch_video`` rules, with
    ``budget``'s fps, frame cap, total pixels and floor); ``min_pixels``/``max_pixels`` are the
    bounds in force for the request (the config's or lower). ValueError when the video has too
    few frames."""
    from qwen_vl_utils.vision_process import FRAME_FACTOR, smart_nframes, smart_resize

    n = smart_nframes({"fps": budget.fps, "max_frames": budget.max_frames},
                      total_frames=total_frames, video_fps=fps)
    floor = max(budget.min_pixels, min_pixels)
    frame_max = max(min(max_pixels, budget.total_pixels / n * FRAME_FACTOR), int(floor * 1.05))
    h, w = smart_resize(height, width, factor=PATCH, min_pixels=floor,
                        max_pixels=min(max_pixels, frame_max))
    # Rounding down to whole patches can leave a narrow frame's short side at nothing (it keeps
    # one patch) or a frame under the engine's own floor, which its processor would enlarge:
    # the frame is sent at the size the engine uses, and counted so.
    h, w = smart_resize(max(PATCH, h), max(PATCH, w), factor=PATCH, min_pixels=min_pixels,
                        max_pixels=max_pixels)
    if h < PATCH or w < PATCH:
        raise ValueError(f"{width}x{height} frames cannot keep a whole {PATCH}-pixel patch per "
                         f"side within {max_pixels} pixels")
    return VideoPlan(total_frames, fps, n, h, w)


def image_tokens(height: int, width: int, min_pixels: int, max_pixels: int) -> dict[str, int]:
    """What one image becomes: its size after smart_resize, its pad tokens, its prompt tokens
    (pads plus vision start/end) and its 14x14 patches (what the vision encoder runs on)."""
    from qwen_vl_utils import smart_resize

    h, w = smart_resize(height, width, factor=PATCH_FACTOR, min_pixels=min_pixels,
                        max_pixels=max_pixels)
    pads = (h // PATCH_FACTOR) * (w // PATCH_FACTOR)
    return {"resized_height": h, "resized_width": w, "image_tokens": pads,
            "prompt_tokens": pads + VISION_EXTRA_TOKENS, "patches": pads * 4}
