"""What an image or a video becomes in Qwen2-VL's vision encoder: the patch geometry, tokens per
image, and a video's frames and frame size under a ``VideoBudget`` (qwen-vl-utils'
``fetch_video`` rules), read from the header alone.

The front door (``launch.api``), the usage ledger, the capacity planner (``engine.capacity``) and
the config's derived defaults all count by these, so none can disagree with another.
"""

from __future__ import annotations

from dataclasses import dataclass

PATCH = 14  # the vision encoder's patch side, in pixels
MERGE = 2  # patches merged MERGE x MERGE into one token
PATCH_FACTOR = PATCH * MERGE  # one token per PATCH_FACTOR x PATCH_FACTOR pixels (28)
TOKEN_PIXELS = PATCH_FACTOR * PATCH_FACTOR  # pixels of one token (784)
TEMPORAL_PATCH = 2  # video frames per temporal patch: two frames make one set of tokens
VISION_EXTRA_TOKENS = 2  # <|vision_start|> and <|vision_end|> around each image's pads


def temporal_patches(frames: int) -> int:
    """Temporal patches of ``frames`` video frames: an odd last frame is padded to a pair."""
    return -(-frames // TEMPORAL_PATCH)


def pad_tokens(height: int, width: int) -> int:
    """Pad tokens of one image, or of one temporal patch of video, at a resized size."""
    return (height // PATCH_FACTOR) * (width // PATCH_FACTOR)


@dataclass(frozen=True)
class VideoBudget:
    """How a video file becomes frames (``launch.api.video`` applies it): ``fps`` frames per second
    of video, at most ``max_frames``, each at least ``min_pixels`` and at most ``max_pixels``,
    all of them within ``max_tokens``."""

    fps: float
    max_frames: int
    max_tokens: int
    min_pixels: int
    max_pixels: int

    @property
    def total_pixels(self) -> int:
        """qwen-vl-utils' ``total_pixels``: frames x pixels a video may have (one token per
        28x28 pixels of two frames, so this holds ``max_tokens``)."""
        return self.max_tokens * TOKEN_PIXELS


@dataclass(frozen=True)
class VideoFrames:
    """What a video file becomes: ``frames`` frames of ``height`` x ``width``."""

    total_frames: int
    fps: float
    frames: int
    height: int
    width: int

    @property
    def tokens(self) -> int:
        """Video pad tokens: two frames make one temporal patch."""
        return temporal_patches(self.frames) * pad_tokens(self.height, self.width)


def video_frames(total_frames: int, fps: float, height: int, width: int, budget: VideoBudget, *,
                 min_pixels: int, max_pixels: int) -> VideoFrames:
    """The frame count and frame size for a video (qwen-vl-utils' ``fetch_video`` rules, with
    ``budget``'s fps, frame cap, total pixels and floor); ``min_pixels``/``max_pixels`` are the
    bounds in force for the request (the config's or lower). ValueError when the video has too
    few frames."""
    from qwen_vl_utils.vision_process import FRAME_FACTOR, smart_nframes, smart_resize

    n = smart_nframes({"fps": budget.fps, "max_frames": budget.max_frames},
                      total_frames=total_frames, video_fps=fps)
    floor = max(budget.min_pixels, min_pixels)
    frame_max = max(min(max_pixels, budget.total_pixels / n * FRAME_FACTOR), int(floor * 1.05))
    h, w = smart_resize(height, width, factor=PATCH_FACTOR, min_pixels=floor,
                        max_pixels=min(max_pixels, frame_max))
    # Rounding down to whole patches can leave a narrow frame's short side at nothing (it keeps
    # one patch) or a frame under the engine's own floor, which its processor would enlarge:
    # the frame is sent at the size the engine uses, and counted so.
    h, w = smart_resize(max(PATCH_FACTOR, h), max(PATCH_FACTOR, w), factor=PATCH_FACTOR,
                        min_pixels=min_pixels, max_pixels=max_pixels)
    if h < PATCH_FACTOR or w < PATCH_FACTOR:
        raise ValueError(f"{width}x{height} frames cannot keep a whole {PATCH_FACTOR}-pixel patch "
                         f"per side within {max_pixels} pixels")
    return VideoFrames(total_frames, fps, n, h, w)


def image_tokens(height: int, width: int, min_pixels: int, max_pixels: int) -> dict[str, int]:
    """What one image becomes: its size after smart_resize, its pad tokens, its prompt tokens
    (pads plus vision start/end) and its 14x14 patches (what the vision encoder runs on)."""
    from qwen_vl_utils import smart_resize

    h, w = smart_resize(height, width, factor=PATCH_FACTOR, min_pixels=min_pixels,
                        max_pixels=max_pixels)
    pads = pad_tokens(h, w)
    return {"resized_height": h, "resized_width": w, "image_tokens": pads,
            "prompt_tokens": pads + VISION_EXTRA_TOKENS, "patches": pads * MERGE * MERGE}
