"""The benchmark results index: ``docs/benchmarks/index.md`` lists the latest run per machine
class and every run, read from the front matter of each dated results file.

Each results file is ``docs/benchmarks/YYYY-MM-DD-<what>.md`` and starts with YAML front matter
naming the machine (``REQUIRED``); ``python -m launch.generate.benchmark_index`` rewrites the
index, ``tests/launch/generate/test_benchmark_index.py`` fails when a file lacks a field or the
index is stale.
"""

from __future__ import annotations

import re
import sys
from pathlib import Path

import yaml

from . import generated_blocks

DIR = Path(__file__).resolve().parents[2] / "docs" / "benchmarks"
INDEX = DIR / "index.md"
BLOCK = "benchmark-index"
NAME = re.compile(r"^(\d{4}-\d{2}-\d{2})-[a-z0-9-]+\.md$")
# What every results file states about its run.
REQUIRED = ("title", "date", "machine_class", "cpu", "isa", "cores", "memory", "software",
            "scenarios")


def front_matter(path: Path) -> dict:
    """The YAML block between the leading ``---`` lines (ValueError naming what is missing)."""
    text = path.read_text()
    if not text.startswith("---\n"):
        raise ValueError(f"{path.name}: no front matter (a leading '---' block)")
    meta = yaml.safe_load(text[4:text.index("\n---\n", 4)]) or {}
    missing = [k for k in REQUIRED if not meta.get(k)]
    if missing:
        raise ValueError(f"{path.name}: front matter lacks {', '.join(missing)}")
    date = NAME.match(path.name)
    if not date or str(meta["date"]) != date.group(1):
        raise ValueError(f"{path.name}: the name must be <date>-<what>.md with the front "
                         f"matter's date ({meta['date']})")
    return meta


def runs() -> list[tuple[Path, dict]]:
    """Every results file with its front matter, newest first."""
    found = [(p, front_matter(p)) for p in sorted(DIR.glob("*.md")) if p != INDEX]
    return sorted(found, key=lambda r: (str(r[1]["date"]), r[0].name), reverse=True)


def index() -> str:
    all_runs = runs()
    latest: dict[str, tuple[Path, dict]] = {}
    for path, meta in all_runs:
        latest.setdefault(meta["machine_class"], (path, meta))
    out = ["## Latest run per machine class", "",
           "| machine class | CPU, instruction set | latest run | date |", "|---|---|---|---|"]
    for cls, (path, meta) in sorted(latest.items()):
        out.append(f"| {cls} | {meta['cpu']}, {meta['isa']} | [{meta['title']}]({path.name}) "
                   f"| {meta['date']} |")
    out += ["", "## Every run", "", "| date | machine class | run | scenarios |",
            "|---|---|---|---|"]
    for path, meta in all_runs:
        out.append(f"| {meta['date']} | {meta['machine_class']} | [{meta['title']}]({path.name}) "
                   f"| {meta['scenarios']} |")
    return "\n".join(out) + "\n"


def main(argv: list[str] | None = None) -> int:
    return generated_blocks.command(argv, "launch.generate.benchmark_index", INDEX, BLOCK, index)


if __name__ == "__main__":
    sys.exit(main())
