"""A video file's frames reach vLLM decoded (``launch.api.frames``): what vLLM's processor is given
is what it would get from the same frames as a JPEG list (metadata and all), the store keeps a
video while a request holds it, and a client cannot name stored frames itself. End to end, the
video contract cases (test_contract_e2e.py) count the tokens the engine saw."""

from __future__ import annotations

import asyncio
import base64
import io

import numpy as np
import pytest
from PIL import Image
from vllm.multimodal.media import MEDIA_CONNECTOR_REGISTRY, ImageMediaIO
from vllm.multimodal.media.video import VideoMediaIO

from engine.config import load_config, parse_config
from engine.vllm_args import engine_kwargs
from launch.api import frames as frames_mod
from launch.api.frames import SCHEME, STORE, FrameConnector, FrameStore, frame_metadata
from launch.api.front_door import FrontDoor
from launch.api.usage import MediaTally
from tests import utils
from tests.utils import CONFIGS, MODEL, rejected_by


def video_kwargs() -> dict:
    cfg = load_config(CONFIGS / "default.yaml")
    return engine_kwargs(cfg, "/ckpt")["media_io_kwargs"]["video"]


def jpeg_list(arrays: np.ndarray) -> str:
    out = []
    for a in arrays:
        buf = io.BytesIO()
        Image.fromarray(a).save(buf, "JPEG", quality=95)
        out.append(base64.b64encode(buf.getvalue()).decode())
    return ",".join(out)


def test_metadata_is_what_vllm_reports_for_the_same_frames_as_a_jpeg_list():
    kw = video_kwargs()
    arrays = np.random.default_rng(0).integers(0, 255, (6, 56, 84, 3), dtype=np.uint8)
    io_ = VideoMediaIO(ImageMediaIO(image_mode="RGB"), **kw)
    (decoded, meta) = io_.load_base64("video/jpeg", jpeg_list(arrays)).media
    assert decoded.shape == arrays.shape
    assert frame_metadata(len(arrays), {k: v for k, v in kw.items() if k != "num_frames"}) \
        == meta


def test_the_connector_hands_stored_frames_and_passes_other_urls_on():
    connector = MEDIA_CONNECTOR_REGISTRY.load(frames_mod.CONNECTOR,
                                              media_io_kwargs={"video": video_kwargs()})
    assert isinstance(connector, FrameConnector)
    arrays = np.zeros((4, 28, 56, 3), np.uint8)
    url = STORE.put("k-test", arrays)
    try:
        got = asyncio.run(connector.fetch_video_async(url)).media
        assert got[0] is arrays and got[1]["total_num_frames"] == 4
        assert connector.fetch_video(url).media[0] is arrays
    finally:
        STORE.release(["k-test"])
    with pytest.raises(ValueError, match="no longer held"):
        asyncio.run(connector.fetch_video_async(url))
    jpegs = "data:video/jpeg;base64," + jpeg_list(arrays + 128)  # vLLM's own path
    assert asyncio.run(connector.fetch_video_async(jpegs)).media[0].shape == (4, 28, 56, 3)


def test_the_store_keeps_a_video_while_any_request_holds_it():
    store = FrameStore()
    a = np.zeros((2, 28, 28, 3), np.uint8)
    assert store.put("v", a) == SCHEME + "v" == store.put("v", a)
    store.release(["v"])
    assert store.get("v") is a  # the second request still holds it
    store.release(["v"])
    assert store.get("v") is None and len(store) == 0
    store.release(["v", "never-put"])  # a late or unknown release changes nothing
    assert len(store) == 0


def test_install_points_vllm_at_the_connector(monkeypatch):
    from vllm import envs

    # Recorded first, so the variable is put back as it was: a connector name left in this
    # process would reach every vLLM the later tests start from it (bare `vllm serve` has no
    # such connector).
    monkeypatch.setenv("VLLM_MEDIA_CONNECTOR", "http")
    frames_mod.install()
    assert envs.VLLM_MEDIA_CONNECTOR == frames_mod.CONNECTOR


@pytest.fixture(scope="module")
def door() -> FrontDoor:
    return FrontDoor(parse_config({
        "model": {"source": "embedded:qwen2-vl-tiny", "served_name": MODEL},
        "limits": {"url": {"schemes": ["data"]}}}))


def test_the_front_door_stores_a_files_frames_under_the_request(door):
    part = {"type": "video_url", "video_url": {
        "url": utils.data_url(utils.mp4(3, 4, width=112, height=84, pattern=True),
                              "video/mp4")}}
    body = utils.chat_body(utils.with_text(part))
    from launch.api.request_models import ChatRequest

    req = ChatRequest.model_validate(body)
    tally = MediaTally()
    asyncio.run(door.check_chat(req, tally))
    sent = req.messages[0]["content"][0]
    key = sent["uuid"]
    assert sent["video_url"]["url"] == SCHEME + key and tally.frame_keys == [key]
    stored = STORE.get(key)
    assert stored.ndim == 4 and stored.shape[-1] == 3 and stored.dtype == np.uint8
    STORE.release(tally.frame_keys)
    assert STORE.get(key) is None


def test_a_client_cannot_name_stored_frames(door):
    from launch.api.request_models import ChatRequest

    STORE.put("someone-elses", np.zeros((2, 28, 28, 3), np.uint8))
    try:
        req = ChatRequest.model_validate(utils.chat_body(utils.with_text(
            {"type": "video_url", "video_url": {"url": SCHEME + "someone-elses"}})))
        rejected_by(lambda: asyncio.run(door.check_chat(req, MediaTally())),
                    "messages[0].content[0].video_url", "scheme")
    finally:
        STORE.release(["someone-elses"])
