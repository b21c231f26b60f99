"""A video file's frames go to vLLM decoded, in the engine replica's own process.

The front door samples and resizes a video file's frames (``launch.api.video``) in the process
where vLLM's chat parser then runs (one hop). It puts the decoded frames here under the video's
content key and gives vLLM a video part whose URL names that key (``qwen-vl-frames:<key>``);
vLLM's media connector, replaced in this process by ``FrameConnector``
(``VLLM_MEDIA_CONNECTOR``), takes the frames from here instead of decoding a JPEG frame list
that the front door would have encoded for it. A request's frames leave the store when the
request ends (``release``); requests that send the same video share one entry.

A client cannot name a key itself: the front door refuses every URL scheme but the configured
ones (``limits.url.schemes``) before a video reaches vLLM.
"""

from __future__ import annotations

import os
import threading
from typing import Any

import numpy as np
from vllm.multimodal.media import MEDIA_CONNECTOR_REGISTRY, MediaConnector
from vllm.multimodal.media.base import MediaWithBytes

SCHEME = "qwen-vl-frames:"
CONNECTOR = "qwen-vl-frames"


class FrameStore:
    """Decoded frames by content key, counted by the requests holding them."""

    def __init__(self):
        self._lock = threading.Lock()
        self._items: dict[str, list[Any]] = {}  # key -> [frames, holders]

    def put(self, key: str, frames: np.ndarray) -> str:
        """Hold ``frames`` for one more request; the URL that names them."""
        with self._lock:
            entry = self._items.setdefault(key, [frames, 0])
            entry[1] += 1
        return SCHEME + key

    def get(self, key: str) -> np.ndarray | None:
        with self._lock:
            entry = self._items.get(key)
        return None if entry is None else entry[0]

    def release(self, keys: list[str]) -> None:
        """One request that held ``keys`` ended."""
        with self._lock:
            for key in keys:
                entry = self._items.get(key)
                if entry is None:
                    continue
                entry[1] -= 1
                if entry[1] <= 0:
                    del self._items[key]

    def __len__(self) -> int:
        with self._lock:
            return len(self._items)


STORE = FrameStore()


def frame_metadata(frames: int, video_kwargs: dict[str, Any]) -> dict[str, Any]:
    """What vLLM's video loader reports for a JPEG frame list of ``frames`` frames under the
    configured ``media_io_kwargs["video"]`` (``VideoMediaIO.load_base64``), so the processor
    sees a decoded video exactly as it sees that list."""
    fps = float(video_kwargs.get("fps", 1))
    return {"total_num_frames": frames, "fps": fps,
            "duration": frames / fps if fps > 0 else 0.0, "video_backend": "jpeg_sequence",
            "frames_indices": list(range(frames)),
            "do_sample_frames": video_kwargs.get("do_sample_frames", False)}


@MEDIA_CONNECTOR_REGISTRY.register(CONNECTOR)
class FrameConnector(MediaConnector):
    """vLLM's connector, which takes a ``qwen-vl-frames:`` video from the store."""

    def _stored(self, url: str) -> MediaWithBytes:
        frames = STORE.get(url[len(SCHEME):])
        if frames is None:  # the request that put them has ended
            raise ValueError("the video's decoded frames are no longer held")
        meta = frame_metadata(len(frames), self.media_io_kwargs.get("video", {}))
        return MediaWithBytes((frames, meta), url.encode())

    def fetch_video(self, video_url: str, **kw):
        if video_url.startswith(SCHEME):
            return self._stored(video_url)
        return super().fetch_video(video_url, **kw)

    async def fetch_video_async(self, video_url: str, **kw):
        if video_url.startswith(SCHEME):
            return self._stored(video_url)
        return await super().fetch_video_async(video_url, **kw)


def install() -> None:
    """vLLM in this process loads media through ``FrameConnector`` (it reads the variable
    each time it builds a connector)."""
    os.environ["VLLM_MEDIA_CONNECTOR"] = CONNECTOR
