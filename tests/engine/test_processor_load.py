"""A processor built around a given tokenizer (engine.processor_load) is the processor
transformers builds without the hook: the given tokenizer, the same image and video processors,
the same inputs from the same image and text."""

from __future__ import annotations

import numpy as np
import pytest
from PIL import Image
from transformers import AutoProcessor, AutoTokenizer
from transformers.processing_utils import ProcessorMixin

from engine.embedded_model import ensure_checkpoint


@pytest.fixture(scope="module")
def path() -> str:
    return ensure_checkpoint("embedded:qwen2-vl-tiny")


def unhooked(monkeypatch):
    """transformers' own processor build, for the comparison."""
    for name, fn in ProcessorMixin._qwen_vl_originals.items():
        monkeypatch.setattr(ProcessorMixin, name, classmethod(fn))


def build(path: str, **kwargs):
    return AutoProcessor.from_pretrained(path, min_pixels=3136, max_pixels=200704, **kwargs)


def inputs(processor) -> dict:
    image = Image.fromarray(np.random.default_rng(0).integers(0, 255, (90, 130, 3), np.uint8))
    text = "<|vision_start|><|image_pad|><|vision_end|>What is this?"
    return processor(text=[text], images=[image], return_tensors="np")


def test_the_hook_is_installed():
    assert ProcessorMixin._qwen_vl_given_tokenizers is True


@pytest.mark.parametrize("given", [True, False])
def test_the_processor_equals_transformers_own(path, monkeypatch, given):
    tokenizer = AutoTokenizer.from_pretrained(path)
    kwargs = {"tokenizer": tokenizer} if given else {}
    hooked = build(path, **kwargs)
    with monkeypatch.context() as m:
        unhooked(m)
        plain = build(path, **kwargs)
    assert type(hooked) is type(plain)
    if given:
        assert hooked.tokenizer is tokenizer and plain.tokenizer is tokenizer
    else:
        assert hooked.tokenizer.get_vocab() == plain.tokenizer.get_vocab()
    assert hooked.image_processor.to_dict() == plain.image_processor.to_dict()
    assert hooked.video_processor.to_dict() == plain.video_processor.to_dict()
    assert hooked.chat_template == plain.chat_template
    a, b = inputs(hooked), inputs(plain)
    assert sorted(a) == sorted(b)
    for key in a:
        assert np.array_equal(a[key], b[key]), key
