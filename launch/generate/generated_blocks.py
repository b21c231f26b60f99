"""Generated blocks inside hand-written Markdown pages.

A page keeps its prose by hand and leaves one block to a generator, between
``<!-- BEGIN <name> -->`` and ``<!-- END <name> -->`` (HTML comments: invisible on the rendered
page). Generators replace the block; tests compare it with what the generator would write now.
"""

from __future__ import annotations

import sys
from pathlib import Path
from typing import Callable


def _markers(name: str) -> tuple[str, str]:
    return (f"<!-- BEGIN {name}: generated, do not edit by hand -->", f"<!-- END {name} -->")


def block(text: str, name: str) -> str:
    """The current content of block ``name`` (ValueError if the page has none)."""
    begin, end = _markers(name)
    if begin not in text or end not in text:
        raise ValueError(f"no generated block {name!r} (expected the line {begin!r})")
    return text[text.index(begin) + len(begin):text.index(end)].strip("\n") + "\n"


def replace(path: Path, name: str, body: str) -> Path:
    """Write ``body`` into block ``name`` of the page at ``path``."""
    text = path.read_text()
    block(text, name)  # the page must have the block
    begin, end = _markers(name)
    head, rest = text.split(begin, 1)
    tail = rest.split(end, 1)[1]
    path.write_text(f"{head}{begin}\n{body.strip(chr(10))}\n{end}{tail}")
    return path


def markers(name: str) -> str:
    """An empty block, for a new page."""
    begin, end = _markers(name)
    return f"{begin}\n{end}\n"


def command(argv: list[str] | None, module: str, path: Path, name: str,
            body: Callable[[], str]) -> int:
    """``python -m <module> [write|print]``, the command of each generator of a block: write
    ``body()`` into block ``name`` of the page at ``path`` (the default), or print it."""
    argv = sys.argv[1:] if argv is None else argv
    if argv == ["print"]:
        sys.stdout.write(body())
    elif argv in ([], ["write"]):
        print(f"wrote {replace(path, name, body())}")
    else:
        print(f"usage: python -m {module} [write|print]", file=sys.stderr)
        return 2
    return 0
