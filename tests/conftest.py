"""Shared fixtures and collection hooks; the helpers they use are in ``tests/utils.py``."""

from __future__ import annotations

import pytest


def pytest_collection_modifyitems(config, items):
    """GPU tests are skipped (not deleted) where no NVIDIA GPU is visible."""
    try:
        import torch

        has_gpu = torch.cuda.is_available()
    except Exception:
        has_gpu = False
    if has_gpu:
        return
    skip = pytest.mark.skip(reason="needs an NVIDIA GPU")
    for item in items:
        if "gpu" in item.keywords:
            item.add_marker(skip)
