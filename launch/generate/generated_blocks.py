"""Generated blocks inside hand-written Markdown pages.

A page keeps its prose by hand and leaves one block to a generator, between
``<!-- BEGIN <name> -->`` and ``<!-- END <name> -->`` (HTML comments: invisible on the rendered
page). Generators replace the block; tests compare it with what the generator would write now.
"""

from __future__ import annotations

from pathlib import Path


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
