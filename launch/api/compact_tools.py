"""Tool-call grammars with bounded whitespace, for ``engine.compact_json``.

vLLM constrains tool calls (``tool_choice`` required or named, and every call's arguments under
``tools.strict_arguments``) with an xgrammar structural tag built by the tool-call parser, and
the JSON inside a structural tag ignores vLLM's ``disable_any_whitespace``: its grammar allows
any run of whitespace between JSON tokens, which a model that prefers whitespace repeats until
``max_tokens``. xgrammar's structural tags take ``max_whitespace_cnt`` instead (at least 1), so
the engine replica registers, under the configured parser's own name, a subclass whose tags set
it to 1: at most one whitespace character between tokens, so the arguments end.
"""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any

MAX_WHITESPACE = 1  # xgrammar's least (0 is refused)


def register(parser_name: str) -> None:
    """Replace the parser registered as ``parser_name`` in this process by one whose
    structural tags bound whitespace. Call before vLLM builds its serving objects."""
    from vllm.tool_parsers.abstract_tool_parser import ToolParserManager

    base = ToolParserManager.get_tool_parser(parser_name)
    if getattr(base, "_bounded_whitespace", False):
        return

    class Compact(base):  # type: ignore[misc, valid-type]
        _bounded_whitespace = True

        def get_structural_tag(self, *args, **kwargs):
            tag = super().get_structural_tag(*args, **kwargs)
            if tag is not None:
                bound_whitespace(tag)
            return tag

    Compact.__name__ = Compact.__qualname__ = f"Compact{base.__name__}"
    ToolParserManager.tool_parsers[parser_name] = Compact


def bound_whitespace(tag: Any) -> None:
    """Set ``max_whitespace_cnt`` on every JSON-schema format inside a structural tag."""
    for fmt in json_schema_formats(tag):
        if fmt.max_whitespace_cnt is None:
            fmt.max_whitespace_cnt = MAX_WHITESPACE


def json_schema_formats(node: Any) -> Iterator[Any]:
    """Every xgrammar ``JSONSchemaFormat`` inside a structural tag (its pydantic models and
    their lists)."""
    from xgrammar.structural_tag import JSONSchemaFormat

    if isinstance(node, JSONSchemaFormat):
        yield node
    elif isinstance(node, (list, tuple)):
        for item in node:
            yield from json_schema_formats(item)
    elif hasattr(type(node), "model_fields"):
        for name in type(node).model_fields:
            yield from json_schema_formats(getattr(node, name))
