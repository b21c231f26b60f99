"""The configuration reference: every key of ``ServingConfig``, with its type, default and
description, as Markdown tables (one per section), derived from the pydantic models so that it
cannot drift from what the loader accepts.

``python -m launch.generate.config_reference`` writes it into ``docs/configuration.md``;
``tests/launch/generate/test_config_reference.py`` fails when the page is stale.
"""

from __future__ import annotations

import json
import sys
import types
import typing
from pathlib import Path
from typing import Any, Literal

from pydantic import BaseModel
from pydantic_core import PydanticUndefined

from engine.config import ServingConfig

from . import generated_blocks

PAGE = Path(__file__).resolve().parents[2] / "docs" / "configuration.md"
BLOCK = "config-reference"
PLACEHOLDER = "<name>"  # a key of a map of named entries (access.keys, access.quotas)


def _model_in(annotation: Any) -> type[BaseModel] | None:
    """The model a field holds (directly or optionally), if any."""
    if isinstance(annotation, type) and issubclass(annotation, BaseModel):
        return annotation
    if typing.get_origin(annotation) in (typing.Union, types.UnionType):
        models = [a for a in typing.get_args(annotation) if _model_in(a)]
        return models[0] if models else None
    return None


def _map_of_models(annotation: Any) -> type[BaseModel] | None:
    if typing.get_origin(annotation) is dict:
        value = typing.get_args(annotation)[1]
        return value if isinstance(value, type) and issubclass(value, BaseModel) else None
    return None


def type_name(annotation: Any) -> str:
    """A reader's name for a field's type: ``int``, `` `a` | `b` ``, ``list of …``, ``map``."""
    origin, args = typing.get_origin(annotation), typing.get_args(annotation)
    if origin is Literal:
        return " \\| ".join(f"`{a}`" for a in args)
    if origin in (typing.Union, types.UnionType):
        names = [type_name(a) for a in args if a is not type(None)]
        return " or ".join(names) + (" or null" if type(None) in args else "")
    if origin is list:
        return f"list of {type_name(args[0])}"
    if origin is dict:
        model = _map_of_models(annotation)
        return f"map of name to {model.__name__}" if model else "map"
    if isinstance(annotation, type) and issubclass(annotation, BaseModel):
        return annotation.__name__
    return getattr(annotation, "__name__", str(annotation))


def _default(info) -> str:
    if info.is_required():
        return "required"
    value = info.default_factory() if info.default is PydanticUndefined else info.default
    if isinstance(value, BaseModel):
        return ""
    return f"`{json.dumps(value)}`"


def _rows(model: type[BaseModel], prefix: str):
    for name, info in model.model_fields.items():
        key = f"{prefix}{name}"
        sub = _model_in(info.annotation)
        if sub is not None:
            if info.default is None:  # an optional section: its own row, then its keys
                yield key, type_name(info.annotation), "`null`", info.description
            yield from _rows(sub, key + ".")
            continue
        yield key, type_name(info.annotation), _default(info), info.description
        entry = _map_of_models(info.annotation)
        if entry is not None:
            yield from _rows(entry, f"{key}.{PLACEHOLDER}.")


def keys() -> list[str]:
    """Every documented key, dotted (``access.quotas.<name>.tokens_per_minute``)."""
    return [row[0] for section in ServingConfig.model_fields
            for row in _rows(ServingConfig, "") if row[0].split(".")[0] == section]


def reference() -> str:
    """One Markdown section per top-level key: its description, then a table of its keys."""
    out = []
    for section, info in ServingConfig.model_fields.items():
        sub = _model_in(info.annotation)
        doc = (sub.__doc__ or "").strip().split("\n\n")[0].replace("\n", " ") if sub else ""
        out += [f"### `{section}`", "", info.description + (f" {doc}" if doc else ""), "",
                "| key | type | default | description |", "|---|---|---|---|"]
        for key, typ, default, desc in _rows(sub, section + "."):
            desc = desc.replace("|", "/").replace("<", "&lt;").replace(">", "&gt;")
            out.append(f"| `{key}` | {typ} | {default} | {desc} |")
        out.append("")
    return "\n".join(out)


def main(argv: list[str] | None = None) -> int:
    return generated_blocks.command(argv, "launch.generate.config_reference", PAGE, BLOCK, reference)


if __name__ == "__main__":
    sys.exit(main())
