"""Video files sampled by the front door (``launch.video``), checked against qwen-vl-utils."""

import base64
import io

import pytest
from PIL import Image

from engine.config import LimitsSettings
from launch import video
from launch.rejections import RequestRejected
from tests import utils

MM = dict(video_fps=2.0, max_frames=16, min_pixels=3136, max_pixels=200704)


def expected(total: int, fps: float, h: int, w: int, max_frames=16, video_fps=2.0,
             min_pixels=3136, max_pixels=200704) -> tuple[int, int, int]:
    """(frames, height, width) by qwen-vl-utils' own functions."""
    from qwen_vl_utils.vision_process import smart_nframes, smart_resize

    n = smart_nframes({"fps": video_fps, "max_frames": max_frames}, total_frames=total,
                      video_fps=fps)
    rh, rw = smart_resize(h, w, factor=28, min_pixels=min_pixels, max_pixels=max_pixels)
    return n, rh, rw


@pytest.mark.parametrize("seconds, fps, w, h, max_frames", [
    (5, 10, 320, 240, 16), (20, 10, 320, 240, 16), (60, 10, 320, 240, 16),
    (7, 24, 640, 360, 16), (3, 30, 200, 900, 16), (1, 3, 64, 64, 16), (30, 25, 160, 120, 7),
])
def test_frames_and_size_follow_qwen_vl_utils(seconds, fps, w, h, max_frames):
    data = utils.mp4(seconds, fps, width=w, height=h, pattern=True)
    frames, plan = video.sample(data, LimitsSettings(), **{**MM, "max_frames": max_frames},
                                param="p")
    n, rh, rw = expected(round(seconds * fps), fps, h, w, max_frames=max_frames)
    assert (plan.frames, plan.height, plan.width) == (n, rh, rw)
    assert len(frames) == n <= max_frames
    first = Image.open(io.BytesIO(base64.b64decode(frames[0])))
    assert first.size == (rw, rh) and first.format == "JPEG"
    assert plan.tokens == (n + 1) // 2 * (rh // 28) * (rw // 28)


def test_request_pixel_bounds_apply():
    data = utils.mp4(2, 4, width=320, height=240, pattern=True)
    _, plan = video.sample(data, LimitsSettings(), **{**MM, "max_pixels": 28 * 28 * 16},
                           param="p")
    assert plan.height * plan.width <= 28 * 28 * 16


@pytest.mark.parametrize("data, limits, match", [
    (b"not a video at all", LimitsSettings(), "not a decodable video"),
    (utils.png(64, 64), LimitsSettings(), "1 frame\\(s\\); at least 2 are needed"),
    (utils.mp4(4, 4, size=64), LimitsSettings(max_video_seconds=3), "4s long; the limit is 3s"),
    (utils.mp4(1, 4, width=16, height=64), LimitsSettings(), "16x64; each side must be at least"),
    (utils.mp4(1, 4, width=600, height=600), LimitsSettings(max_image_pixels=100_000),
     "360000 pixels; the limit is 100000"),
    (utils.mp4(0.25, 4, size=64), LimitsSettings(), "at least 2 are needed"),
])
def test_bad_videos_are_400s(data, limits, match):
    with pytest.raises(RequestRejected, match=match) as exc:
        video.sample(data, limits, **MM, param="p")
    assert exc.value.status == 400 and exc.value.param == "p"


def test_truncated_video_keeps_the_planned_frame_count():
    """A file cut short decodes fewer frames than its header counts: the last decoded frame
    stands in, so the frame count (and the tokens the client is billed) match the plan."""
    data = utils.mp4(10, 10, width=128, height=96, pattern=True)
    try:
        frames, plan = video.sample(data[: len(data) * 3 // 4], LimitsSettings(), **MM,
                                    param="p")
    except RequestRejected as err:  # a cut that loses the index is refused, never a 500
        assert err.status == 400
        return
    assert len(frames) == plan.frames
