"""The shipped tool-use chat template (``engine/chat_templates/qwen2_vl_tool_use.jinja``),
rendered by transformers as vLLM renders it."""

from __future__ import annotations

import pytest

from engine.config import TOOL_USE_TEMPLATE
from engine.embedded_model import CHAT_TEMPLATE

TOOLS = [{"type": "function", "function": {
    "name": "get_flight_status", "description": "Status of a flight by its number.",
    "parameters": {"type": "object", "properties": {"flight": {"type": "string"}},
                   "required": ["flight"]}}}]
IMAGE, VIDEO = {"type": "image"}, {"type": "video"}


def render(tokenizer, messages, template, **kw) -> str:
    return tokenizer.apply_chat_template(messages, chat_template=template, tokenize=False,
                                         add_generation_prompt=True, **kw)


@pytest.mark.parametrize("messages", [
    [{"role": "user", "content": "Hello"}],
    [{"role": "system", "content": "Be brief."},
     {"role": "user", "content": [IMAGE, {"type": "text", "text": "And this?"}, VIDEO]},
     {"role": "assistant", "content": "A cat."},
     {"role": "user", "content": [{"type": "text", "text": "Two more:"}, IMAGE, IMAGE]}],
    [{"role": "system", "content": [{"type": "text", "text": "Parts too."}]},
     {"role": "user", "content": [VIDEO, {"type": "text", "text": "?"}]}],
])
@pytest.mark.parametrize("vision_id", [False, True])
def test_without_tools_it_renders_as_qwen2_vls_own_template(tokenizer, messages, vision_id):
    template = TOOL_USE_TEMPLATE.read_text()
    assert render(tokenizer, messages, template, add_vision_id=vision_id) == \
        render(tokenizer, messages, CHAT_TEMPLATE, add_vision_id=vision_id)


def test_tools_calls_and_results_in_the_qwen2_format(tokenizer):
    messages = [
        {"role": "user", "content": [IMAGE, {"type": "text", "text": "Is my flight on time?"}]},
        {"role": "assistant", "content": None, "tool_calls": [
            {"id": "a", "type": "function",
             "function": {"name": "get_flight_status", "arguments": {"flight": "CA981"}}},
            {"id": "b", "type": "function",
             "function": {"name": "get_flight_status", "arguments": {"flight": "CA982"}}}]},
        {"role": "tool", "tool_call_id": "a", "content": "on time"},
        {"role": "tool", "tool_call_id": "b", "content": "delayed"},
    ]
    text = render(tokenizer, messages, TOOL_USE_TEMPLATE.read_text(), tools=TOOLS)
    assert text == (
        "<|im_start|>system\nYou are a helpful assistant.\n\n# Tools\n\nYou may call one or more "
        "functions to assist with the user query.\n\nYou are provided with function signatures "
        "within <tools></tools> XML tags:\n<tools>\n"
        '{"type": "function", "function": {"name": "get_flight_status", "description": '
        '"Status of a flight by its number.", "parameters": {"type": "object", "properties": '
        '{"flight": {"type": "string"}}, "required": ["flight"]}}}\n</tools>\n\n'
        "For each function call, return a json object with function name and arguments within "
        "<tool_call></tool_call> XML tags:\n<tool_call>\n"
        '{"name": <function-name>, "arguments": <args-json-object>}\n</tool_call><|im_end|>\n'
        "<|im_start|>user\n<|vision_start|><|image_pad|><|vision_end|>Is my flight on time?"
        "<|im_end|>\n<|im_start|>assistant\n"
        '<tool_call>\n{"name": "get_flight_status", "arguments": {"flight": "CA981"}}\n'
        '</tool_call>\n<tool_call>\n{"name": "get_flight_status", "arguments": '
        '{"flight": "CA982"}}\n</tool_call><|im_end|>\n'
        "<|im_start|>user\n<tool_response>\non time\n</tool_response>\n<tool_response>\n"
        "delayed\n</tool_response><|im_end|>\n<|im_start|>assistant\n")


def test_a_system_message_leads_the_tools_turn(tokenizer):
    messages = [{"role": "system", "content": "Answer in French."},
                {"role": "user", "content": "Weather?"}]
    text = render(tokenizer, messages, TOOL_USE_TEMPLATE.read_text(), tools=TOOLS)
    assert text.startswith("<|im_start|>system\nAnswer in French.\n\n# Tools\n")
    assert text.count("<|im_start|>system") == 1
