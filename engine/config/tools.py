"""``tools:``: tool calling (parser, template, strict arguments)."""

from __future__ import annotations

from pathlib import Path

from pydantic import Field

from .base import _Strict


# The shipped chat template: Qwen2-VL's own, plus the Qwen2 family's tool-use format.
TOOL_USE_TEMPLATE = Path(__file__).parent.parent / "chat_templates" / "qwen2_vl_tool_use.jinja"


class ToolsSettings(_Strict):
    """Function calling (OpenAI ``tools``/``tool_choice``).

    The model writes each call as ``<tool_call>{"name": ..., "arguments": {...}}</tool_call>``
    (the Qwen2 family's format, which the chat template teaches it in the system turn); vLLM's
    tool-call parser turns that into ``tool_calls``. ``required`` and a named function are
    served by constrained decoding and need no parser."""

    auto: bool = Field(
        True, description="Serve tool_choice 'auto' (the default when a request sends tools): "
        "the model decides, the parser reads its calls. Off: 'auto' is a 400; 'none', "
        "'required' and a named function still work.")
    parser: str = Field("hermes", min_length=1, description="vLLM tool-call parser for 'auto' "
                        "(hermes reads the <tool_call> format).")
    strict_arguments: bool = Field(
        True, description="Decode every call's arguments under its function's parameter "
        "schema, as if each tool were sent with strict: true (vLLM's tool_strict_level "
        "'parameter'); off: only the call's envelope is constrained, and only for 'required' "
        "and a named function.")
    chat_template: str | None = Field(
        None, description="Jinja chat template file for every chat (tools or not); None: the "
        "shipped engine/chat_templates/qwen2_vl_tool_use.jinja, which renders chats without "
        "tools exactly as Qwen2-VL's own template.")

    def template_path(self) -> str:
        return str(Path(self.chat_template).expanduser() if self.chat_template
                   else TOOL_USE_TEMPLATE)
