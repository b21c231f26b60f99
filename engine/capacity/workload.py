"""What a plan is made for: the traffic's mix (text, images, videos, lengths) and its goals."""

from __future__ import annotations

from dataclasses import dataclass


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
    videos: float = 0  # per request (an average, like images)
    video_seconds: float = 60
    video_fps: float = 30  # the file's own frame rate
    video_size: tuple[int, int] = (640, 360)  # width, height
    image_repeat: float = 0.0  # share of image requests whose image an earlier request sent
    requests_per_s: float | None = None
    concurrency: int | None = None
    slo_ttft_ms: float | None = None
    slo_tpot_ms: float | None = None
