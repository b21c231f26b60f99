"""``launch.cluster.start``: which model sources need a download. Starting a real cluster is
test_local_cluster's and the e2e modules'."""

from __future__ import annotations

import pytest

from engine.config import parse_config
from launch.cluster import start


@pytest.mark.parametrize("source, download", [
    ("embedded:qwen2-vl-tiny", False), ("Qwen/Qwen2-VL-2B-Instruct", True)])
def test_only_hub_sources_need_a_download(source, download):
    cfg = parse_config({"model": {"source": source, "served_name": "m"}})
    assert start.needs_download(cfg) is download
