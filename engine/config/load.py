"""A config from YAML or a mapping, with every problem named by its key."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import yaml
from pydantic import ValidationError

from .base import ConfigError
from .serving import ServingConfig


def _format_validation_error(err: ValidationError, origin: str) -> str:
    lines = []
    for e in err.errors():
        loc = ".".join(str(p) for p in e["loc"])
        msg = e["msg"].removeprefix("Value error, ")
        if e["type"] == "extra_forbidden":
            msg = "unknown key"
        lines.append(f"{loc}: {msg}" if loc else msg)
    return f"invalid config {origin}: " + "; ".join(lines)


def parse_config(data: Any, origin: str = "<dict>") -> ServingConfig:
    if not isinstance(data, dict):
        raise ConfigError(f"invalid config {origin}: expected a mapping at the top level")
    try:
        return ServingConfig.model_validate(data)
    except ValidationError as err:
        raise ConfigError(_format_validation_error(err, origin)) from None


def load_config(path: str | Path) -> ServingConfig:
    path = Path(path)
    try:
        text = path.read_text()
    except OSError as err:
        raise ConfigError(f"cannot read config {path}: {err.strerror}") from None
    try:
        data = yaml.safe_load(text)
    except yaml.YAMLError as err:
        raise ConfigError(f"invalid YAML in {path}: {err}") from None
    return parse_config(data, str(path))
