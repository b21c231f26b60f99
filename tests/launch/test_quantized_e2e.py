"""End to end: the embedded model's 4-bit GPTQ and AWQ variants served by the stack, checked
against HF transformers on the dequantized weights in float32.

One stack per variant, switched by the one config line ``model.source``. Exact token equality
is impossible here: vLLM's GPTQ/AWQ kernels take only 16-bit activations, and the tiny model
(init std 0.3, chosen so that its output depends on its input) amplifies bfloat16 rounding.
So the check is teacher-forced top-1 agreement: HF's float32 argmax at every position of the
stack's greedy output. A correct kernel agrees on most positions; bfloat16 rounding moves some,
and more with an image (the vision tower runs in bfloat16 too, and its features shift every
later position). A wrong weight layout or dequantization agrees on almost none, and so does a
control model with other weights (asserted below, on the same tokens). The bar sits between
the two, set from the measured distribution (docs/benchmarks/2026-12-06-quantized-agreement.md).
"""

from __future__ import annotations

import os

import pytest
import torch

from tests.utils import (
    chat_body,
    image_from_data_url,
    image_part,
    png_url,
    stream_chunks,
    stream_events,
    with_text,
)
from tests.utils import request

pytestmark = pytest.mark.slow
MAX_NEW = 48
# The bar, from docs/benchmarks/2026-12-06-quantized-agreement.md (12 prompts of each kind per
# variant): every prompt there agrees on 52% or more, the control model on 2% at most.
MIN_AGREEMENT = 0.45
TEXTS = ["Write a long story about a lighthouse keeper.", "List twenty facts about volcanoes.",
         "Explain how a bicycle gear works.", "Describe a busy market in the morning.",
         "What should I pack for a week of hiking?", "Summarise the plot of a heist film.",
         "Give me a recipe for bread.", "Why is the sky blue?", "Write a poem about rain.",
         "Compare trains and planes for a 500 km trip.", "Teach me three chess openings.",
         "Plan a birthday party for ten children."]
# QWEN_VL_AGREEMENT_PROMPTS widens the run (the benchmark's command); the suite runs two.
N_PROMPTS = int(os.environ.get("QWEN_VL_AGREEMENT_PROMPTS", "2"))
PROMPTS = {
    "text": ([], [TEXTS[i % len(TEXTS)] for i in range(N_PROMPTS)]),
    "image": ([png_url(120 + 40 * (i % 5), 300 - 20 * (i % 4), seed=31 + i)
               for i in range(N_PROMPTS)],
              [("Describe this picture in detail.", "What is in this image?")[i % 2]
               for i in range(N_PROMPTS)]),
}


@pytest.fixture(scope="module", params=["gptq-int4", "awq"])
def quantized(request, stacks, tmp_path_factory):
    """The variant's stack (through ``stacks``: the next variant's start stops it) and, beside
    it, the same weights dequantized in Hugging Face transformers."""
    from engine.quantize import write_dequantized_checkpoint
    from transformers import AutoProcessor, Qwen2VLForConditionalGeneration

    variant = request.param
    stack = stacks.get({"model": {"source": f"embedded:qwen2-vl-tiny-{variant}"}})
    ckpt = stack.cfg.model_path()
    ref = tmp_path_factory.mktemp(f"dequantized-{variant}")
    write_dequantized_checkpoint(ckpt, ref)
    model = Qwen2VLForConditionalGeneration.from_pretrained(ref, dtype=torch.float32).eval()
    return {**stack.info, "variant": variant, "hf": model,
            "processor": AutoProcessor.from_pretrained(ckpt)}


def _control_model():
    """Same architecture, other random weights: agreement with it must be near zero."""
    from dataclasses import replace

    from transformers import Qwen2VLForConditionalGeneration

    from engine.embedded_model import SPECS, hf_config

    torch.manual_seed(12345)
    return Qwen2VLForConditionalGeneration(hf_config(replace(SPECS["qwen2-vl-tiny"], seed=1))
                                           ).float().eval()


def _stack_greedy(info, urls, text) -> dict:
    content = [image_part(u) for u in urls] + [{"type": "text", "text": text}]
    code, out = request(info["base"], "/v1/chat/completions", {
        "model": info["model"], "messages": [{"role": "user", "content": content}],
        "max_tokens": MAX_NEW, "temperature": 0, "ignore_eos": True, "return_token_ids": True})
    assert code == 200, out
    return out


def _hf_inputs(info, urls, text):
    proc, mm = info["processor"], info["cfg"].multimodal
    parts = [{"type": "image"} for _ in urls] + [{"type": "text", "text": text}]
    prompt = proc.apply_chat_template([{"role": "user", "content": parts}],
                                      tokenize=False, add_generation_prompt=True)
    images = [image_from_data_url(u) for u in urls] or None
    return proc(text=[prompt], images=images, return_tensors="pt",
                images_kwargs={"size": {"shortest_edge": mm.min_pixels,
                                        "longest_edge": mm.max_pixels}})


def _agreement(model, inputs, generated: list[int]) -> tuple[int, int]:
    """Positions where the model's argmax, given the stack's own prefix, is the stack's token."""
    prompt_len = inputs["input_ids"].shape[1]
    ids = torch.cat([inputs["input_ids"], torch.tensor([generated])], dim=1)
    extra = {}
    for k, v in inputs.items():
        if k in ("input_ids", "attention_mask"):
            continue
        if v.dim() == 2 and v.shape[1] == prompt_len:  # per-token (e.g. mm_token_type_ids):
            v = torch.cat([v, v.new_zeros(1, len(generated))], dim=1)  # generated = text
        extra[k] = v
    with torch.no_grad():
        logits = model(input_ids=ids, attention_mask=torch.ones_like(ids), **extra).logits[0]
    top = logits[prompt_len - 1: prompt_len - 1 + len(generated)].argmax(-1)
    return int((top == torch.tensor(generated)).sum()), len(generated)


@pytest.mark.parametrize("kind", list(PROMPTS))
def test_greedy_tokens_agree_with_hf_on_dequantized_weights(quantized, kind):
    urls, texts = PROMPTS[kind]
    control = _control_model()
    agree = total = control_agree = 0
    for i, text in enumerate(texts):
        mine = urls[i:i + 1]
        out = _stack_greedy(quantized, mine, text)
        inputs = _hf_inputs(quantized, mine, text)
        assert out["prompt_token_ids"] == inputs["input_ids"][0].tolist()
        generated = out["choices"][0]["token_ids"]
        assert len(generated) == MAX_NEW and len(set(generated)) > 5
        a, n = _agreement(quantized["hf"], inputs, generated)
        agree, total = agree + a, total + n
        c = _agreement(control, inputs, generated)[0]
        control_agree += c
        print(f"agreement {quantized['variant']} {kind} prompt {i}: {a / n:.3f} "
              f"(control {c / n:.3f})")
    rate = agree / total
    print(f"{quantized['variant']} {kind}: top-1 agreement {rate:.0%} "
          f"(control {control_agree / total:.0%}) over {total} positions")
    assert rate >= MIN_AGREEMENT, f"{quantized['variant']} {kind}: {rate:.0%} < {MIN_AGREEMENT:.0%}"
    assert control_agree / total <= 0.1, "the measure does not tell weights apart"


def test_usage_and_streaming(quantized):
    """The quantized engine behind the same API: usage, streaming, an image."""
    body = chat_body(with_text(image_part(png_url(100, 100, seed=5)), text="Hi"),
                     model=quantized["model"], stream=True,
                     stream_options={"include_usage": True})
    events = stream_events(quantized["base"], "/v1/chat/completions", body, timeout=120)
    chunks = stream_chunks(events)
    assert chunks[-1]["usage"]["completion_tokens"] == 8
    assert sum(1 for c in chunks if c.get("choices")) >= 8
