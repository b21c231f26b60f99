"""API key sources and the media_dir rule, without an engine."""

import pytest

from engine.config import parse_config
from launch.access import KeySource, key_matches
from launch.front_door import FrontDoor
from launch.rejections import RequestRejected
from tests import images


def test_keys_from_env(monkeypatch):
    monkeypatch.setenv("MY_KEYS", " k1, k2 ,")
    assert KeySource("MY_KEYS", None).keys() == ["k1", "k2"]


def test_no_keys_configured_means_open(monkeypatch):
    monkeypatch.delenv("MY_KEYS", raising=False)
    assert KeySource("MY_KEYS", None).keys() is None


def test_missing_key_file_fails_closed(tmp_path):
    assert KeySource(None, str(tmp_path / "nope")).keys() == []


def test_key_file_reread_on_change(tmp_path):
    f = tmp_path / "keys"
    f.write_text("a\n")
    src = KeySource(None, str(f))
    assert src.keys() == ["a"]
    import os
    import time

    f.write_text("a\nb\n")
    os.utime(f, (time.time() + 5, time.time() + 5))
    assert src.keys() == ["a", "b"]


def test_key_matches_constant_time_api():
    assert key_matches("k2", ["k1", "k2"]) and not key_matches("k3", ["k1", "k2"])
    assert not key_matches("", ["k1"])


def door(media_dir=None):
    return FrontDoor(parse_config({"model": {"source": "embedded:qwen2-vl-tiny", "served_name": "m"},
                                   "limits": {"media_dir": media_dir}}))


def test_local_files_refused_without_media_dir(tmp_path):
    (tmp_path / "a.png").write_bytes(images.png(40, 40))
    with pytest.raises(RequestRejected, match="no media_dir is configured"):
        door()._image(str(tmp_path / "a.png"), "p")


def test_local_files_only_inside_media_dir(tmp_path):
    media = tmp_path / "media"
    media.mkdir()
    (media / "a.png").write_bytes(images.png(40, 40))
    (tmp_path / "secret.png").write_bytes(images.png(40, 40))
    d = door(str(media))
    assert d._image(f"file://{media}/a.png", "p").startswith("data:image/png;base64,")
    for bad in (str(tmp_path / "secret.png"), f"{media}/../secret.png", f"file://{media}/../secret.png"):
        with pytest.raises(RequestRejected, match="outside the configured media_dir"):
            d._image(bad, "p")
    (media / "link.png").symlink_to(tmp_path / "secret.png")
    with pytest.raises(RequestRejected, match="outside the configured media_dir"):
        d._image(str(media / "link.png"), "p")
