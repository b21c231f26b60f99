"""The front door's image checks, without an engine."""

import io

import pytest
from PIL import Image

from engine.config import LimitsSettings
from launch.api import media
from launch.api.rejections import RequestRejected
from tests import utils
from tests.utils import rejected_by

LIMITS = LimitsSettings()


def rejected(data: bytes, match: str, limits=LIMITS):
    return rejected_by(lambda: media.check_image(data, limits, "p"), "p", match)


def test_bomb_refused_from_header_before_any_pixel_is_decoded(monkeypatch):
    """The refusal comes from the header: nothing is decoded (PIL's ``load`` never runs)."""
    from PIL import Image

    def no_decoding(self):
        raise AssertionError("pixels were decoded")

    monkeypatch.setattr(Image.Image, "load", no_decoding)
    rejected(utils.png_header_only(20000, 20000), r"20000x20000 = 400000000 pixels; the limit is 50000000")


def test_broken_images():
    rejected(utils.truncated_jpeg(), "truncated or corrupt")
    rejected(utils.corrupt_jpeg(), "truncated or corrupt|not a decodable image")
    rejected(b"hello, not an image", "not a decodable image")
    rejected(utils.png_header_only(0, 0), "not a decodable image|at least 28")


def test_geometry_limits():
    rejected(utils.png(1, 1), r"1x1; each side must be at least 28")
    rejected(utils.png(10000, 1), r"1x10000|at least 28")
    rejected(utils.png(6000, 28), r"aspect ratio is 214:1 \(28x6000\); the limit is 200:1")


def test_byte_cap():
    rejected(utils.png(200, 200), r"image is \d+ bytes; the limit is 1000",
             LimitsSettings(max_image_bytes=1000))


@pytest.mark.parametrize("make", [utils.grayscale, utils.rgba, utils.cmyk_jpeg, utils.png16,
                                  utils.webp, utils.animated_gif, lambda: utils.png(28, 28)])
def test_valid_edge_cases_become_rgb_or_pass(make):
    data, mime, size = media.check_image(make(), LIMITS, "p")
    img = Image.open(io.BytesIO(data))
    assert img.mode in ("RGB", "L") and mime.startswith("image/")
    assert size == img.size


def test_exif_rotation_applied():
    data, _, size = media.check_image(utils.exif_rotated_jpeg(100, 300), LIMITS, "p")
    assert Image.open(io.BytesIO(data)).size == (100, 300)  # width 100, height 300 after rotate
    assert size == (100, 300)  # the size the engine sees, for the token count


def test_plain_rgb_passes_untouched():
    raw = utils.jpeg(64, 64)
    assert media.check_image(raw, LIMITS, "p") == (raw, "image/jpeg", (64, 64))


@pytest.mark.parametrize("make", [lambda: utils.jpeg(640, 480), utils.cmyk_jpeg, utils.rgba,
                                  lambda: utils.exif_rotated_jpeg(100, 300)])
def test_each_image_decoded_once(make, monkeypatch):
    """The front door decodes an image once, whether it passes as it is or is normalised."""
    from PIL import ImageFile

    loads = []
    real = ImageFile.ImageFile.load
    monkeypatch.setattr(ImageFile.ImageFile, "load",
                        lambda self: (loads.append(id(self)), real(self))[1])
    media.check_image(make(), LIMITS, "p")
    assert len(set(loads)) == 1, loads


@pytest.mark.parametrize("cut", [0.5, 0.9])
def test_truncated_jpeg_refused_despite_reduced_decode(cut):
    """The reduced-size JPEG decode still reads every byte of the entropy-coded data."""
    raw = utils.jpeg(800, 600)
    rejected(raw[:int(len(raw) * cut)], "truncated or corrupt")


def test_base64_errors():
    with pytest.raises(RequestRejected, match="not valid base64"):
        media.b64decode("@@@not-base64@@@", 1000, "p")
    with pytest.raises(RequestRejected, match="data URL must look like"):
        media.decode_data_url("data:image/png,rawbytes", "p")


def test_video_file_duration_and_bytes():
    import base64

    from launch.api import video

    clip = utils.mp4(seconds=3)
    from engine.vision import VideoBudget

    kw = dict(budget=VideoBudget(fps=2.0, max_frames=16, max_tokens=2048, min_pixels=3136,
                                 max_pixels=200704), min_pixels=3136, max_pixels=200704, param="p")
    video.sample(clip, LIMITS, **kw)  # 3 s is fine
    with pytest.raises(RequestRejected, match=r"video is 3s long; the limit is 2s"):
        video.sample(clip, LimitsSettings(max_video_seconds=2), **kw)
    with pytest.raises(RequestRejected, match="video is about .* bytes; the limit is 100"):
        media.b64decode(base64.b64encode(clip).decode(), 100, "p", "video")


def test_frame_list_cap():
    import base64

    payload = ",".join(base64.b64encode(utils.jpeg(56, 56, s)).decode() for s in range(3))
    assert media.check_frames(payload, LIMITS, 3, "p") == (56, 56)  # the frames' size
    with pytest.raises(RequestRejected, match="video has 3 frames; the limit is 2"):
        media.check_frames(payload, LIMITS, 2, "p")


def test_frames_of_different_sizes_are_refused_in_our_words():
    """The engine stacks a frame list into one array: frames of different sizes would fail
    there with numpy's text. The front door names the frame and both sizes instead."""
    import base64

    frames = [utils.jpeg(56, 56, 0), utils.jpeg(56, 56, 1), utils.jpeg(84, 56, 2)]
    payload = ",".join(base64.b64encode(f).decode() for f in frames)
    with pytest.raises(RequestRejected) as exc:
        media.check_frames(payload, LIMITS, 8, "messages[0].content[0].video_url")
    err = exc.value
    assert err.status == 400 and err.param == "messages[0].content[0].video_url[frame 2]"
    assert str(err) == ("video frame 2 is 56x84; every frame of a frame list must have the "
                        "first frame's size, 56x56"), str(err)


TINY_BOUNDS = (3136, 200704)  # configs/default.yaml's min_pixels, max_pixels


@pytest.mark.parametrize("make", [lambda: utils.jpeg(1000, 700), utils.cmyk_jpeg, utils.rgba,
                                  utils.png16, utils.webp, utils.animated_gif, utils.grayscale,
                                  lambda: utils.exif_rotated_jpeg(100, 300)])
def test_image_decoded_at_the_processors_target_size(make):
    """What the engine gets: RGB, already at Qwen2-VL's smart_resize target for the bounds,
    so its processor has nothing left to resize; the size that counts tokens is the image's
    own (after EXIF rotation)."""
    from qwen_vl_utils import smart_resize

    raw = make()
    out = media.decode_image(raw, LIMITS, "p", TINY_BOUNDS)
    w, h = out.size
    th, tw = smart_resize(h, w, factor=28, min_pixels=TINY_BOUNDS[0], max_pixels=TINY_BOUNDS[1])
    assert out.image.mode == "RGB" and out.image.size == (tw, th)
    assert smart_resize(th, tw, factor=28, min_pixels=TINY_BOUNDS[0],
                        max_pixels=TINY_BOUNDS[1]) == (th, tw)  # a fixed point
    ref = Image.open(io.BytesIO(raw))
    assert out.size == (ref.size[::-1] if ref.getexif().get(0x0112, 1) in (5, 6, 7, 8)
                        else ref.size)


def test_image_cache_key_is_the_content_and_the_target():
    a, b = utils.jpeg(300, 200, 1), utils.jpeg(300, 200, 2)
    key = media.decode_image(a, LIMITS, "p", TINY_BOUNDS).uuid
    assert media.decode_image(a, LIMITS, "p", TINY_BOUNDS).uuid == key  # stable
    assert media.decode_image(b, LIMITS, "p", TINY_BOUNDS).uuid != key  # other bytes
    assert media.decode_image(a, LIMITS, "q", (3136, 28 * 28 * 16)).uuid != key  # other target


def test_reduced_scale_jpeg_decode_matches_a_full_decode():
    """A JPEG decoded at a reduced DCT scale and resized is the full decode resized, up to
    resampling noise: what the model sees does not change."""
    import numpy as np

    big = utils.encode(Image.radial_gradient("L").resize((1600, 1200)).convert("RGB"), "JPEG")
    out = media.decode_image(big, LIMITS, "p", TINY_BOUNDS)
    full = Image.open(io.BytesIO(big)).convert("RGB").resize(out.image.size, Image.BICUBIC)
    diff = np.abs(np.asarray(out.image, dtype=int) - np.asarray(full, dtype=int))
    assert diff.mean() < 2.0 and diff.max() < 32, (diff.mean(), diff.max())


@pytest.mark.parametrize("make", [lambda: utils.jpeg(1000, 700), utils.cmyk_jpeg, utils.rgba])
def test_image_for_the_engine_decoded_once(make, monkeypatch):
    from PIL import ImageFile

    loads = []
    real = ImageFile.ImageFile.load
    monkeypatch.setattr(ImageFile.ImageFile, "load",
                        lambda self: (loads.append(id(self)), real(self))[1])
    media.decode_image(make(), LIMITS, "p", TINY_BOUNDS)
    assert len(set(loads)) == 1, loads


@pytest.mark.parametrize("cut", [0.5, 0.9])
def test_truncated_jpeg_refused_by_the_scaled_decode(cut):
    raw = utils.jpeg(1600, 1200)
    with pytest.raises(RequestRejected, match="truncated or corrupt"):
        media.decode_image(raw[:int(len(raw) * cut)], LIMITS, "p", TINY_BOUNDS)


def test_resize_is_the_processors_own():
    """A lossless image reaches the engine with exactly the pixels Qwen2-VL's processor makes of
    it, and the processor leaves an image already at its target size untouched."""
    import numpy as np
    from transformers.models.qwen2_vl.image_processing_qwen2_vl import Qwen2VLImageProcessor

    raw = utils.png(300, 200)  # a size the processor resizes
    out = media.decode_image(raw, LIMITS, "p", TINY_BOUNDS)
    proc = Qwen2VLImageProcessor()
    kw = {"size": {"shortest_edge": TINY_BOUNDS[0], "longest_edge": TINY_BOUNDS[1]},
          "do_normalize": False, "do_rescale": False, "return_tensors": "np"}
    theirs = proc(images=[Image.open(io.BytesIO(raw)).convert("RGB")], **kw)["pixel_values"]
    ours = proc(images=[out.image], **kw)["pixel_values"]
    assert out.image.size != Image.open(io.BytesIO(raw)).size  # it was resized
    assert np.array_equal(theirs, ours)
