"""Encoded test images: the valid edge cases and the broken ones."""

from __future__ import annotations

import base64
import io
import struct
import zlib

import numpy as np
from PIL import Image


def noise(h: int, w: int, seed: int = 0, mode: str = "RGB") -> Image.Image:
    arr = (np.random.RandomState(seed).rand(h, w, 3) * 255).astype("uint8")
    return Image.fromarray(arr).convert(mode)


def encode(img: Image.Image, fmt: str, **kw) -> bytes:
    buf = io.BytesIO()
    img.save(buf, fmt, **kw)
    return buf.getvalue()


def data_url(data: bytes, mime: str) -> str:
    return f"data:{mime};base64," + base64.b64encode(data).decode()


def png(h: int, w: int, seed: int = 0) -> bytes:
    return encode(noise(h, w, seed), "PNG")


def jpeg(h: int, w: int, seed: int = 0, **kw) -> bytes:
    return encode(noise(h, w, seed), "JPEG", quality=90, **kw)


def png_header_only(w: int, h: int) -> bytes:
    """A PNG that declares w x h pixels (a decompression bomb's header) with a tiny body."""
    def chunk(kind: bytes, payload: bytes) -> bytes:
        return struct.pack(">I", len(payload)) + kind + payload + struct.pack(
            ">I", zlib.crc32(kind + payload) & 0xFFFFFFFF)
    ihdr = struct.pack(">IIBBBBB", w, h, 8, 0, 0, 0, 0)
    return (b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", ihdr) + chunk(b"IDAT", zlib.compress(b"\0" * 64))
            + chunk(b"IEND", b""))


def truncated_jpeg() -> bytes:
    data = jpeg(200, 200, seed=3)
    return data[: len(data) // 2]


def corrupt_jpeg() -> bytes:
    data = bytearray(jpeg(200, 200, seed=4))
    for i in range(600, len(data) - 10, 7):
        data[i] = 0xFF  # markers everywhere in the entropy-coded data
    return bytes(data)


def grayscale() -> bytes:
    return encode(noise(64, 80, 5, "L"), "PNG")


def rgba() -> bytes:
    img = noise(64, 80, 6).convert("RGBA")
    img.putalpha(128)
    return encode(img, "PNG")


def cmyk_jpeg() -> bytes:
    return encode(noise(64, 80, 7).convert("CMYK"), "JPEG")


def png16() -> bytes:
    arr = (np.random.RandomState(8).rand(64, 80) * 65535).astype("uint16")
    img = Image.fromarray(arr)  # mode I;16
    data = encode(img, "PNG")
    assert Image.open(io.BytesIO(data)).mode.startswith("I"), "not a 16-bit PNG"
    return data


def exif_rotated_jpeg(h: int = 100, w: int = 300) -> bytes:
    """Stored as h x w with EXIF orientation 6 (rotate 90): displayed as w x h."""
    img = noise(h, w, 9)
    exif = img.getexif()
    exif[0x0112] = 6
    return encode(img, "JPEG", exif=exif.tobytes())


def webp() -> bytes:
    return encode(noise(64, 80, 10), "WEBP")


def animated_gif() -> bytes:
    frames = [noise(64, 64, s).convert("P") for s in range(3)]
    buf = io.BytesIO()
    frames[0].save(buf, "GIF", save_all=True, append_images=frames[1:], duration=100, loop=0)
    return buf.getvalue()


def mp4(seconds: float, fps: float = 4, size: int = 64, width: int | None = None,
        height: int | None = None, pattern: bool = False) -> bytes:
    """An MPEG-4 clip of the given duration (PyAV): noise frames, or with ``pattern`` a moving
    gradient (compresses well: minutes of video in a few hundred KB)."""
    from fractions import Fraction

    import av

    w, h = width or size, height or size
    ramp = np.add.outer(np.arange(h), np.arange(w)).astype("uint16")
    buf = io.BytesIO()
    with av.open(buf, "w", format="mp4") as container:
        stream = container.add_stream("mpeg4", rate=Fraction(fps).limit_denominator(1000))
        stream.width, stream.height = w, h
        stream.pix_fmt = "yuv420p"
        for i in range(round(seconds * fps)):
            if pattern:
                arr = ((ramp + 3 * i) % 256).astype("uint8")
                img = Image.fromarray(np.stack([arr, arr[::-1], np.full_like(arr, i % 256)], -1))
            else:
                img = noise(h, w, i)
            for packet in stream.encode(av.VideoFrame.from_image(img)):
                container.mux(packet)
        for packet in stream.encode():
            container.mux(packet)
    return buf.getvalue()
