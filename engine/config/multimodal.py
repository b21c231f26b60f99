"""``multimodal:``: images and videos per request and their pixel bounds."""

from __future__ import annotations

from pydantic import Field, model_validator

from ..vision import TOKEN_PIXELS
from .base import _Strict


class MultimodalSettings(_Strict):
    max_images_per_prompt: int = Field(4, ge=0, description="Images per request at most.")
    max_videos_per_prompt: int = Field(1, ge=0, description="Videos per request at most.")
    min_pixels: int = Field(4 * TOKEN_PIXELS, ge=TOKEN_PIXELS,
                            description="Images are resized to at least this.")
    max_pixels: int = Field(256 * TOKEN_PIXELS, ge=TOKEN_PIXELS,
                            description="Images are resized to at most this (caps tokens).")
    video_fps: float = Field(
        2.0, gt=0, description="Frames the front door samples per second of a video file.")
    video_max_frames: int | None = Field(
        None, ge=2, description="Frames per video at most: a video file is sampled down to it, a "
        "frame list over it is refused. None: half as many as would fit video_max_tokens at "
        "video_min_pixels a frame, at most 768 (qwen-vl-utils' cap).")
    video_max_tokens: int | None = Field(
        None, ge=4, description="Token budget per video file: its frames are made smaller "
        "(down to video_min_pixels) until frames x pixels fit it, as qwen-vl-utils fits a video "
        "into its total pixels; a video that cannot fit at the floor is refused. None: half of "
        "engine.max_model_len.")
    video_min_pixels: int | None = Field(
        None, ge=TOKEN_PIXELS, description="Per-frame pixel floor of a video file (never below "
        "min_pixels: the engine's processor would enlarge smaller frames). None: min_pixels.")

    @model_validator(mode="after")
    def _pixels_ordered(self):
        if self.max_pixels < self.min_pixels:
            raise ValueError(
                f"max_pixels ({self.max_pixels}) must be >= min_pixels ({self.min_pixels})"
            )
        floor = self.video_min_pixels
        if floor is not None and not self.min_pixels <= floor <= self.max_pixels:
            raise ValueError(f"video_min_pixels ({floor}) must be between min_pixels "
                             f"({self.min_pixels}) and max_pixels ({self.max_pixels})")
        return self


# qwen-vl-utils' cap on frames per video (FPS_MAX_FRAMES).
VIDEO_FRAME_CAP = 768
