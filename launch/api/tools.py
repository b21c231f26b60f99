"""Tool definitions and ``tool_choice`` checked before a request reaches an engine.

vLLM's request model has already checked their shape (each tool a function with a name, a
named ``tool_choice`` naming one of them). What it leaves to the engine is checked here, where a
bad definition is a 400 naming the field rather than an error in the middle of rendering or of
building the decoding grammar: how many tools (each is rendered into the prompt), function
names, duplicate names, control tokens in any string of a definition (the template renders it
into the system turn), parameter schemas that are not JSON Schemas of an object (whether
the decoding grammar can be built from them, and at what cost: ``launch.api.schemas``), and
``tool_choice: auto`` on a server that does not serve it (``tools.auto``).
"""

from __future__ import annotations

import re
from typing import Any

from engine.config import ServingConfig

from .messages import check_rendered_tree
from .rejections import bad_request

# OpenAI's rule for function names; the name is also what the model writes back.
NAME = re.compile(r"^[A-Za-z0-9_-]{1,64}$")


def check_tools(body: Any, cfg: ServingConfig) -> None:
    tools = getattr(body, "tools", None) or []
    limit = cfg.limits.max_tools
    if len(tools) > limit:
        raise bad_request(f"{len(tools)} tools in the request; the limit is {limit}", "tools",
                          "too_many_tools")
    seen: dict[str, int] = {}
    for i, tool in enumerate(tools):
        fn = tool.function
        param = f"tools[{i}].function"
        if not NAME.match(fn.name):
            shown = fn.name if len(fn.name) <= 80 else f"{fn.name[:80]}..."
            raise bad_request(f"function name {shown!r} is not 1 to 64 letters, digits, "
                              "underscores or dashes", f"{param}.name", "tool_name")
        if fn.name in seen:
            raise bad_request(f"function name {fn.name!r} is defined twice (tools[{seen[fn.name]}] "
                              f"and tools[{i}])", f"{param}.name", "tool_name")
        seen[fn.name] = i
        # The template renders the whole definition into the system turn.
        check_rendered_tree(tool.model_dump(exclude_none=True), f"tools[{i}]")
        if fn.parameters is not None:
            _check_schema(fn.parameters, f"{param}.parameters")
    choice = getattr(body, "tool_choice", None)
    if tools and choice == "auto" and not cfg.tools.auto:
        raise bad_request("tool_choice 'auto' (the default when tools are sent) is off on this "
                          "server; send tool_choice 'required', 'none' or a named function",
                          "tool_choice", "tool_choice")


def _check_schema(schema: dict, param: str) -> None:
    from jsonschema.exceptions import SchemaError
    from jsonschema.validators import validator_for

    try:
        validator_for(schema).check_schema(schema)
    except SchemaError as err:
        where = "/".join(str(p) for p in err.path)
        raise bad_request(f"not a valid JSON Schema{f' (at {where})' if where else ''}: "
                          f"{err.message[:200]}", param, "tool_schema") from None
    kind = schema.get("type", "object")
    if kind != "object":
        raise bad_request(f"a function's parameters are a JSON Schema of an object (type "
                          f"'object'), not {kind!r}", f"{param}.type", "tool_schema")


