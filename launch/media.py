"""Check one image or video against the limits, and hand the engine clean bytes.

Images: byte cap; the pixel count is read from the header *before* decoding (a 20000x20000 PNG
is refused in milliseconds); smallest side and aspect ratio (Qwen2-VL's processor raises above
200:1); then one decode, so truncated or corrupt files are refused here, not in the engine. A
JPEG is decoded at an eighth of its size (libjpeg's DCT scaling): every byte of its entropy-coded
data is still read, which is what catches truncation and corruption, at less of the cost. The
engine decodes the image itself; the front door decodes it once and never re-encodes an
acceptable one.
Images that are not plain RGB/grayscale, or carry an EXIF rotation, are normalised (EXIF
applied, converted to RGB, re-encoded losslessly as PNG); others pass through untouched.
Animated images (GIF, APNG, WebP): the first frame is used, as by the engine's decoder.

Videos given as a list of JPEG frames: frame count and each frame as an image. Video files are
sampled into such a list by ``launch.video``.
"""

from __future__ import annotations

import base64
import binascii
import io
import warnings

from PIL import Image, ImageOps, UnidentifiedImageError

from engine.config import LimitsSettings

from .rejections import RequestRejected

PASSTHROUGH_FORMATS = {"JPEG", "PNG", "WEBP"}
PASSTHROUGH_MODES = {"RGB", "L"}
Image.MAX_IMAGE_PIXELS = None  # our own header check runs first, with a clear message


def decode_data_url(url: str, param: str) -> tuple[str, str]:
    """``data:<mime>;base64,<payload>`` -> (mime, payload); the payload is not decoded."""
    head, sep, payload = url.partition(",")
    if not sep or not head.startswith("data:") or not head.endswith(";base64"):
        raise RequestRejected(400, "data URL must look like data:<mime>;base64,<payload>",
                              param=param, reason="bad_data_url")
    return head[5:-7].lower(), payload


def b64decode(payload: str, max_bytes: int, param: str, what: str = "image") -> bytes:
    if len(payload) * 3 // 4 > max_bytes + 3:
        raise RequestRejected(400, f"{what} is about {len(payload) * 3 // 4} bytes; the limit is "
                              f"{max_bytes}", param=param, reason="media_too_large")
    try:  # binascii takes the str as it is (base64.b64decode would copy it to bytes first)
        data = binascii.a2b_base64(payload, strict_mode=True)
    except (binascii.Error, ValueError):
        raise RequestRejected(400, f"{what} payload is not valid base64", param=param,
                              reason="bad_base64") from None
    if len(data) > max_bytes:
        raise RequestRejected(400, f"{what} is {len(data)} bytes; the limit is {max_bytes}",
                              param=param, reason="media_too_large")
    return data


def check_geometry(w: int, h: int, limits: LimitsSettings, param: str,
                   what: str = "image") -> None:
    """Pixel count, smallest side and aspect ratio of an image or a video frame."""
    if w * h > limits.max_image_pixels:
        raise RequestRejected(400, f"{what} is {w}x{h} = {w * h} pixels; the limit is "
                              f"{limits.max_image_pixels}", param=param, reason="image_pixels")
    if min(w, h) < limits.min_image_side:
        raise RequestRejected(400, f"{what} is {w}x{h}; each side must be at least "
                              f"{limits.min_image_side} pixels", param=param,
                              reason="image_too_small")
    ratio = max(w, h) / min(w, h)
    if ratio > limits.max_aspect_ratio:
        raise RequestRejected(400, f"{what} aspect ratio is {ratio:.0f}:1 ({w}x{h}); the limit "
                              f"is {limits.max_aspect_ratio:g}:1", param=param,
                              reason="image_aspect_ratio")


def check_image(data: bytes, limits: LimitsSettings,
                param: str) -> tuple[bytes, str, tuple[int, int]]:
    """Validate an encoded image; returns (bytes, mime) to give the engine and its (width,
    height) as the engine will see it."""
    if len(data) > limits.max_image_bytes:
        raise RequestRejected(400, f"image is {len(data)} bytes; the limit is "
                              f"{limits.max_image_bytes}", param=param, reason="media_too_large")
    try:
        img = Image.open(io.BytesIO(data))  # reads the header only
    except (UnidentifiedImageError, OSError, ValueError):
        raise RequestRejected(400, "not a decodable image (unknown or corrupt format)",
                              param=param, reason="bad_image") from None
    size = img.size
    check_geometry(*size, limits, param)
    if img.format == "JPEG" and _passes(img):  # a JPEG's mode and EXIF are in its header
        img.draft(img.mode, (max(1, size[0] // 8), max(1, size[1] // 8)))
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("error", Image.DecompressionBombWarning)
            img.load()  # the one decode (of the first frame): truncated/corrupt files fail here
    except Exception:
        raise RequestRejected(400, "image data is truncated or corrupt", param=param,
                              reason="bad_image") from None
    if _passes(img):
        return data, Image.MIME.get(img.format, "image/png"), size
    img = ImageOps.exif_transpose(img)
    if img.mode in ("I;16", "I;16B", "I;16L", "I"):  # 16-bit grayscale -> 8-bit
        img = img.point(lambda v: v / 256).convert("L")
    rgb = img.convert("RGBA").convert("RGB") if "A" in img.mode or img.mode == "P" else \
        img.convert("RGB")
    buf = io.BytesIO()
    rgb.save(buf, "PNG")
    return buf.getvalue(), "image/png", rgb.size


def _passes(img: Image.Image) -> bool:
    """Whether the engine can take the image's bytes as they are."""
    return (img.format in PASSTHROUGH_FORMATS and img.mode in PASSTHROUGH_MODES
            and img.getexif().get(0x0112, 1) in (1, None)
            and not getattr(img, "is_animated", False))


def check_frames(payload: str, limits: LimitsSettings, max_frames: int,
                 param: str) -> tuple[int, int]:
    """``data:video/jpeg;base64,f1,f2,...``: frame count and every frame; returns the first
    frame's (width, height)."""
    frames = payload.split(",")
    if len(frames) > max_frames:
        raise RequestRejected(400, f"video has {len(frames)} frames; the limit is {max_frames}",
                              param=param, reason="video_frames")
    if len(frames) < 1 or not frames[0]:
        raise RequestRejected(400, "video has no frames", param=param, reason="bad_video")
    size = (0, 0)
    for i, f in enumerate(frames):
        _, _, frame_size = check_image(
            b64decode(f, limits.max_image_bytes, f"{param}[frame {i}]"), limits,
            f"{param}[frame {i}]")
        if i == 0:
            size = frame_size
    return size


def to_data_url(data: bytes, mime: str) -> str:
    return f"data:{mime};base64," + base64.b64encode(data).decode()
