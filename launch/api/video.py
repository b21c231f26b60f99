"""Video files become the frames the engine sees: sampled, resized and counted here.

The front door decides the frames of every video file, so that the video settings
(``ServingConfig.video_budget``) hold whatever the engine's own video loader would do, and a
video's tokens are known before it reaches the engine. The rules are the model toolkit's
(qwen-vl-utils ``fetch_video``): ``smart_nframes`` picks the frame count (``fps`` frames per
second of video, at least 4, at most ``max_frames``, always even), frames are taken evenly
spaced from first to last, and each is resized with ``smart_resize`` to at most
``total_pixels / frames * 2`` pixels (so that frames x pixels fit the video's token budget),
never below the per-frame floor, and within the pixel bounds a request sets. A video that does
not fit its budget even at the floor is refused, naming the budget. The engine gets the frames
decoded (``launch.api.frames``: in the engine replica's process, so nothing is encoded again for a
second decode), at a size its processor keeps as it is, so a video costs
``frames / 2 * (height / 28) * (width / 28)`` tokens plus its two markers.

Decoding streams: frames are decoded one at a time and only the sampled ones are kept, at
their target size, so a long video never sits decoded in memory: what is kept is bounded by
the video's token budget (3 bytes a pixel, 28 x 28 x 2 pixels a token).
"""

from __future__ import annotations

import io

import numpy as np
from PIL import Image

from engine.config import LimitsSettings
from engine.vision import VideoBudget, VideoFrames, video_frames

from .media import check_geometry
from .rejections import RequestRejected, bad_request


def sample(data: bytes, limits: LimitsSettings, budget: VideoBudget, *, min_pixels: int,
           max_pixels: int, param: str) -> tuple[np.ndarray, VideoFrames]:
    """Decode a video file; returns its sampled frames (``frames x height x width x 3``,
    uint8 RGB) and the plan."""
    import av

    def bad(message: str, reason: str = "bad_video") -> RequestRejected:
        return bad_request(message, param=param, reason=reason)

    try:
        container = av.open(io.BytesIO(data))
    except Exception:
        raise bad("not a decodable video") from None
    with container:
        if not container.streams.video:
            raise bad("not a decodable video (no video stream)")
        stream = container.streams.video[0]
        width, height = stream.codec_context.width, stream.codec_context.height
        check_geometry(width, height, limits, param, what="video frame")
        duration = (container.duration or 0) / 1_000_000
        if duration > limits.max_video_seconds:
            raise bad(f"video is {duration:.0f}s long; the limit is "
                      f"{limits.max_video_seconds:g}s", "video_duration")
        total = stream.frames or _count_frames(container, stream)
        container.seek(0)
        rate = stream.average_rate or stream.guessed_rate
        fps = float(rate) if rate else (total / duration if duration > 0 else 0.0)
        if total < 2 or fps <= 0:
            raise bad(f"video has {total} frame(s); at least 2 are needed", "video_frames")
        try:
            p = video_frames(total, fps, height, width, budget, min_pixels=min_pixels,
                     max_pixels=max_pixels)
        except ValueError as err:
            raise bad(f"video of {total} frames at {fps:g} fps cannot be sampled: {err}",
                      "video_frames") from None
        if p.tokens > budget.max_tokens:
            raise bad(f"video needs {p.tokens} tokens ({p.frames} frames of {p.width}x"
                      f"{p.height}, the smallest the per-frame floor multimodal.video_min_pixels"
                      f" = {budget.min_pixels} allows); the per-video budget "
                      f"multimodal.video_max_tokens is {budget.max_tokens}", "video_budget")
        wanted = np.linspace(0, total - 1, p.frames).round().astype(int).tolist()
        frames = _decode(container, stream, wanted, (p.width, p.height))
    if not frames:
        raise bad("video data is truncated or corrupt (no frame decodes)")
    # A header may count more frames than decode: the last decoded frame stands in for the
    # missing ones, so the frame count (and the tokens) stay what the plan says.
    frames += [frames[-1]] * (p.frames - len(frames))
    return np.stack(frames), p


def _count_frames(container, stream) -> int:
    """Frames of a stream whose header does not say: its packets, demuxed without decoding."""
    return sum(1 for packet in container.demux(stream) if packet.size)


def _decode(container, stream, wanted: list[int], size: tuple[int, int]) -> list[np.ndarray]:
    out: list[np.ndarray] = []
    pending = iter(wanted)
    target = next(pending, None)
    try:
        for index, frame in enumerate(container.decode(stream)):
            if index != target:
                continue
            image = np.asarray(frame.to_image().convert("RGB").resize(size, Image.BICUBIC))
            while target == index:
                out.append(image)
                target = next(pending, None)
            if target is None:
                break
    except Exception:  # a corrupt tail: keep what decoded
        pass
    return out
