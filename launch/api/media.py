"""Check one image or video against the limits, and hand the engine clean bytes.

Images: byte cap; the pixel count is read from the header *before* decoding (a 20000x20000 PNG
is refused in milliseconds); smallest side and aspect ratio (Qwen2-VL's processor raises above
200:1); then one decode, so truncated or corrupt files are refused here, not in the engine
(``decode_image``): at the processor's target size (a JPEG at a reduced DCT scale: every byte of
its entropy-coded data is still read, which is what catches truncation and corruption, at less
of the cost), EXIF rotation applied, RGB. The engine takes that image as it is, keyed by the
bytes' hash. Animated images (GIF, APNG, WebP): the first frame is used, as by the engine's
decoder.

Videos given as a list of JPEG frames: frame count and each frame as an image (``check_image``:
frames that are not plain RGB are normalised and re-encoded as PNG). Video files are sampled
into such a list by ``launch.api.video``.
"""

from __future__ import annotations

import binascii
import functools
import hashlib
import io
import warnings
from dataclasses import dataclass

from PIL import Image, ImageOps, UnidentifiedImageError

from engine.config import LimitsSettings

from .rejections import bad_request

PASSTHROUGH_FORMATS = {"JPEG", "PNG", "WEBP"}
PASSTHROUGH_MODES = {"RGB", "L"}
Image.MAX_IMAGE_PIXELS = None  # our own header check runs first, with a clear message


def decode_data_url(url: str, param: str) -> tuple[str, str]:
    """``data:<mime>;base64,<payload>`` -> (mime, payload); the payload is not decoded."""
    head, sep, payload = url.partition(",")
    if not sep or not head.startswith("data:") or not head.endswith(";base64"):
        raise bad_request("data URL must look like data:<mime>;base64,<payload>",
                          param=param, reason="bad_data_url")
    return head[5:-7].lower(), payload


def b64decode(payload: str, max_bytes: int, param: str, what: str = "image") -> bytes:
    if len(payload) * 3 // 4 > max_bytes + 3:
        raise bad_request(f"{what} is about {len(payload) * 3 // 4} bytes; the limit is "
                          f"{max_bytes}", param=param, reason="media_too_large")
    try:  # binascii takes the str as it is (base64.b64decode would copy it to bytes first)
        data = binascii.a2b_base64(payload, strict_mode=True)
    except (binascii.Error, ValueError):
        raise bad_request(f"{what} payload is not valid base64", param=param,
                          reason="bad_base64") from None
    if len(data) > max_bytes:
        raise bad_request(f"{what} is {len(data)} bytes; the limit is {max_bytes}",
                          param=param, reason="media_too_large")
    return data


def check_geometry(w: int, h: int, limits: LimitsSettings, param: str,
                   what: str = "image") -> None:
    """Pixel count, smallest side and aspect ratio of an image or a video frame."""
    if w * h > limits.max_image_pixels:
        raise bad_request(f"{what} is {w}x{h} = {w * h} pixels; the limit is "
                          f"{limits.max_image_pixels}", param=param, reason="image_pixels")
    if min(w, h) < limits.min_image_side:
        raise bad_request(f"{what} is {w}x{h}; each side must be at least "
                          f"{limits.min_image_side} pixels", param=param,
                          reason="image_too_small")
    ratio = max(w, h) / min(w, h)
    if ratio > limits.max_aspect_ratio:
        raise bad_request(f"{what} aspect ratio is {ratio:.0f}:1 ({w}x{h}); the limit "
                          f"is {limits.max_aspect_ratio:g}:1", param=param,
                          reason="image_aspect_ratio")


def _opened(data: bytes, limits: LimitsSettings, param: str) -> Image.Image:
    """The image's header read and its geometry checked; nothing decoded yet."""
    if len(data) > limits.max_image_bytes:
        raise bad_request(f"image is {len(data)} bytes; the limit is "
                          f"{limits.max_image_bytes}", param=param, reason="media_too_large")
    try:
        img = Image.open(io.BytesIO(data))  # reads the header only
    except (UnidentifiedImageError, OSError, ValueError):
        raise bad_request("not a decodable image (unknown or corrupt format)",
                          param=param, reason="bad_image") from None
    check_geometry(*img.size, limits, param)
    return img


def _load(img: Image.Image, param: str) -> None:
    """The one decode (of the first frame): truncated or corrupt files fail here."""
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("error", Image.DecompressionBombWarning)
            img.load()
    except Exception:
        raise bad_request("image data is truncated or corrupt", param=param,
                          reason="bad_image") from None


def _rgb(img: Image.Image) -> Image.Image:
    """EXIF rotation applied, converted to RGB (16-bit grayscale scaled to 8 bits, alpha and
    palettes dropped as the engine's own loader drops them)."""
    img = ImageOps.exif_transpose(img)
    if img.mode in ("I;16", "I;16B", "I;16L", "I"):
        img = img.point(lambda v: v / 256).convert("L")
    return img.convert("RGBA").convert("RGB") if "A" in img.mode or img.mode == "P" else \
        img.convert("RGB")


def check_image(data: bytes, limits: LimitsSettings,
                param: str) -> tuple[bytes, str, tuple[int, int]]:
    """Validate an encoded image (a video frame); returns (bytes, mime) to give the engine and
    its (width, height) as the engine will see it."""
    img = _opened(data, limits, param)
    size = img.size
    if img.format == "JPEG" and _passes(img):  # a JPEG's mode and EXIF are in its header
        img.draft(img.mode, (max(1, size[0] // 8), max(1, size[1] // 8)))
    _load(img, param)
    if _passes(img):
        return data, Image.MIME.get(img.format, "image/png"), size
    rgb = _rgb(img)
    buf = io.BytesIO()
    rgb.save(buf, "PNG")
    return buf.getvalue(), "image/png", rgb.size


@dataclass
class DecodedImage:
    """An image as the engine takes it: decoded, RGB, at its processor's target size."""

    image: Image.Image
    size: tuple[int, int]  # (width, height) as sent, after EXIF rotation: what tokens count
    uuid: str  # the engine's cache key: the encoded bytes' hash and the target size


def decode_image(data: bytes, limits: LimitsSettings, param: str,
                 pixels: tuple[int, int]) -> DecodedImage:
    """Validate an encoded image and decode it once, at the size Qwen2-VL's processor resizes
    it to (``smart_resize`` within ``pixels``, the request's pixel bounds): a JPEG at the
    coarsest DCT scale that is still at least that size (libjpeg's scaled decode reads every
    byte of the entropy-coded data, so truncation and corruption are still caught), then the
    processor's own resize. The engine gets the image itself: it neither decodes nor hashes
    it again."""
    from engine.vision import PATCH_FACTOR
    from qwen_vl_utils import smart_resize

    img = _opened(data, limits, param)
    w, h = img.size
    swapped = (img.getexif().get(0x0112, 1) or 1) in (5, 6, 7, 8)  # rotated a quarter turn
    size = (h, w) if swapped else (w, h)
    th, tw = smart_resize(size[1], size[0], factor=PATCH_FACTOR, min_pixels=pixels[0],
                          max_pixels=pixels[1])
    if img.format == "JPEG":
        img.draft("RGB", (th, tw) if swapped else (tw, th))
    _load(img, param)
    rgb = _rgb(img)
    if rgb.size != (tw, th):
        rgb = _processor_resize(rgb, tw, th)
    return DecodedImage(rgb, size, f"{content_key(data)}-{tw}x{th}")


@functools.cache
def _image_processor():
    from transformers.models.qwen2_vl.image_processing_qwen2_vl import Qwen2VLImageProcessor

    return Qwen2VLImageProcessor()


def _processor_resize(rgb: Image.Image, width: int, height: int) -> Image.Image:
    """``rgb`` resized to (width, height) by Qwen2-VL's image processor's own resize (its
    resampling, its rounding), so that the engine's processor, finding the image already at
    its target size, leaves it as it is: the pixels the model sees are the ones it would have
    made itself from the same decoded image."""
    import numpy as np
    import torch
    from transformers.image_processing_backends import TorchvisionBackend
    from transformers.image_utils import SizeDict

    proc = _image_processor()
    pixels = torch.from_numpy(np.array(rgb)).permute(2, 0, 1)[None]
    out = TorchvisionBackend.resize(proc, image=pixels, size=SizeDict(height=height, width=width),
                                    resample=proc.resample)
    return Image.fromarray(out[0].permute(1, 2, 0).numpy())


def content_key(data: bytes, pixels: tuple[int, int] | None = None) -> str:
    """A media item's key in the engine's processor and encoder caches: the hash of its
    validated bytes (and the pixel bounds it is processed under, where they are not already
    in the item's size)."""
    digest = hashlib.blake2b(data, digest_size=16).hexdigest()
    return digest if pixels is None else f"{digest}-{pixels[0]}-{pixels[1]}"


def _passes(img: Image.Image) -> bool:
    """Whether the engine can take the image's bytes as they are."""
    return (img.format in PASSTHROUGH_FORMATS and img.mode in PASSTHROUGH_MODES
            and img.getexif().get(0x0112, 1) in (1, None)
            and not getattr(img, "is_animated", False))


def check_frames(payload: str, limits: LimitsSettings, max_frames: int,
                 param: str) -> tuple[int, int]:
    """``data:video/jpeg;base64,f1,f2,...``: frame count and every frame, all of one size (the
    engine stacks them into one array); returns that (width, height)."""
    frames = payload.split(",")
    if len(frames) > max_frames:
        raise bad_request(f"video has {len(frames)} frames; the limit is {max_frames}",
                          param=param, reason="video_frames")
    if len(frames) < 1 or not frames[0]:
        raise bad_request("video has no frames", param=param, reason="bad_video")
    size = (0, 0)
    for i, f in enumerate(frames):
        _, _, frame_size = check_image(
            b64decode(f, limits.max_image_bytes, f"{param}[frame {i}]"), limits,
            f"{param}[frame {i}]")
        if i == 0:
            size = frame_size
        elif frame_size != size:
            raise bad_request(
                f"video frame {i} is {frame_size[0]}x{frame_size[1]}; every frame of a "
                f"frame list must have the first frame's size, {size[0]}x{size[1]}",
                param=f"{param}[frame {i}]", reason="bad_video")
    return size

