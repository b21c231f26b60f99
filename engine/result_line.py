"""How a measuring subprocess hands its result back: one ``RESULT <json>`` line on stdout
(whatever else the engine prints there), the last such line winning."""

from __future__ import annotations

import json
from typing import Any

PREFIX = "RESULT "


def emit(result: Any) -> None:
    print(PREFIX + json.dumps(result), flush=True)


def parse(stdout: str) -> Any | None:
    """The last result line's value, or None when there is none."""
    line = next((ln for ln in reversed(stdout.splitlines()) if ln.startswith(PREFIX)), None)
    return None if line is None else json.loads(line[len(PREFIX):])
