"""Video files sampled by the front door (``launch.api.video``), checked against qwen-vl-utils."""

from dataclasses import replace

import numpy as np
import pytest

from engine.config import LimitsSettings
from engine.vision import VideoBudget
from launch.api import video
from launch.api.rejections import RequestRejected
from tests import utils

BUDGET = VideoBudget(fps=2.0, max_frames=16, max_tokens=2048, min_pixels=3136,
                     max_pixels=200704)
MM = dict(budget=BUDGET, min_pixels=3136, max_pixels=200704)


def expected(total: int, fps: float, h: int, w: int, budget: VideoBudget = BUDGET,
             max_pixels=200704) -> tuple[int, int, int]:
    """(frames, height, width) by qwen-vl-utils' fetch_video rules."""
    return utils.qwen_video_frames(total, fps, h, w, video_fps=budget.fps,
                                   max_frames=budget.max_frames, min_pixels=budget.min_pixels,
                                   max_pixels=max_pixels, total_pixels=budget.total_pixels)


@pytest.mark.parametrize("seconds, fps, w, h, max_frames", [
    (5, 10, 320, 240, 16), (20, 10, 320, 240, 16), (60, 10, 320, 240, 16),
    (7, 24, 640, 360, 16), (3, 30, 200, 900, 16), (1, 3, 64, 64, 16), (30, 25, 160, 120, 7),
])
def test_frames_and_size_follow_qwen_vl_utils(seconds, fps, w, h, max_frames):
    data = utils.mp4(seconds, fps, width=w, height=h, pattern=True)
    budget = replace(BUDGET, max_frames=max_frames)
    frames, plan = video.sample(data, LimitsSettings(), **{**MM, "budget": budget}, param="p")
    n, rh, rw = expected(round(seconds * fps), fps, h, w, budget)
    assert (plan.frames, plan.height, plan.width) == (n, rh, rw)
    assert frames.shape == (n, rh, rw, 3) and frames.dtype == np.uint8 and n <= max_frames
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


@pytest.mark.parametrize("minutes, fps, w, h", [
    (1, 2, 320, 240), (5, 1, 640, 360), (20, 1, 320, 240), (20, 1, 360, 640), (25, 0.5, 480, 480),
])
def test_long_videos_fit_the_token_budget_as_qwen_vl_utils_fits_them(minutes, fps, w, h):
    """Frames as many as fps and the cap allow; each frame made smaller so that the video fits
    its token budget (qwen-vl-utils' total_pixels), planned from the header alone."""
    budget = VideoBudget(fps=2.0, max_frames=512, max_tokens=2048, min_pixels=3136,
                         max_pixels=200704)
    total = round(minutes * 60 * fps)
    p = video.video_frames(total, fps, h, w, budget, min_pixels=3136, max_pixels=200704)
    assert (p.frames, p.height, p.width) == expected(total, fps, h, w, budget)
    assert p.tokens <= budget.max_tokens
    assert p.frames == min(512, total - total % 2, max(4, int(total / fps * 2) // 2 * 2))


def test_a_video_that_cannot_fit_at_the_floor_is_refused_naming_the_budget():
    tight = replace(BUDGET, max_frames=64, max_tokens=100)
    data = utils.mp4(40, 2, width=320, height=240, pattern=True)
    with pytest.raises(RequestRejected, match="the per-video budget multimodal.video_max_tokens "
                       "is 100") as exc:
        video.sample(data, LimitsSettings(), **{**MM, "budget": tight}, param="p")
    assert exc.value.status == 400 and "video_min_pixels = 3136" in exc.value.message


DOC_COSTS = [  # docs/api.md "Video": (seconds, width, height, frames cap) -> frames, size, tokens
    (5, 320, 240, 16, (10, 308, 252, 495)), (60, 320, 240, 16, (16, 308, 252, 792)),
    (1200, 320, 240, 16, (16, 308, 252, 792)), (1200, 1280, 720, 16, (16, 588, 336, 2016)),
    (5, 320, 240, None, (10, 308, 252, 495)), (60, 320, 240, None, (120, 168, 140, 1800)),
    (1200, 320, 240, None, (512, 84, 56, 1536)), (1200, 1280, 720, None, (512, 84, 56, 1536)),
]


@pytest.mark.parametrize("seconds, w, h, cap, cost", DOC_COSTS)
def test_the_readmes_video_costs(seconds, w, h, cap, cost):
    import yaml

    from engine.config import parse_config

    data = yaml.safe_load((utils.CONFIGS / "default.yaml").read_text())
    data["multimodal"]["video_max_frames"] = cap
    cfg = parse_config(data)
    p = video.video_frames(seconds * 30, 30, h, w, cfg.video_budget(),
                           min_pixels=cfg.multimodal.min_pixels,
                           max_pixels=cfg.multimodal.max_pixels)
    assert (p.frames, p.width, p.height, p.tokens) == cost


def test_a_frame_too_narrow_for_the_pixel_bounds_is_refused_not_crashed():
    with pytest.raises(ValueError, match="cannot keep a whole 28-pixel patch"):
        video.video_frames(8, 2, 28, 5600, BUDGET, min_pixels=784, max_pixels=784 * 4)
