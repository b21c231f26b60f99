"""The Operations page's table of what HAProxy answers itself (``launch.proxy.pages``), so the
page says what the pages are: ``python -m launch.generate.proxy_pages`` rewrites the block,
``tests/launch/generate/test_proxy_pages.py`` fails when it is stale."""

from __future__ import annotations

import sys
from pathlib import Path

from launch.api.errors import error_type
from launch.proxy.pages import ERROR_PAGES, NOT_READY, ROUTER_FAILED, Page

from . import generated_blocks

PAGE = Path(__file__).resolve().parents[2] / "docs" / "operations.md"
BLOCK = "proxy-pages"


def _row(when: str, page: Page) -> str:
    retry = f"{page.retry_after} s" if page.retry_after else "-"
    code = page.code or page.status
    return (f"| {when} | {page.status} | `{error_type(page.status)}` | `{code}` | {retry} | "
            f"{page.message} |")


def table() -> str:
    out = ["| when | status | type | code | Retry-After | message |",
           "|---|---|---|---|---|---|",
           _row("no application's routes on this node yet (every path)", NOT_READY),
           _row("the image-affinity router failed", ROUTER_FAILED)]
    out += [_row(f"HAProxy's own {code}", page) for code, page in ERROR_PAGES.items()]
    return "\n".join(out) + "\n"


def main(argv: list[str] | None = None) -> int:
    return generated_blocks.command(argv, "launch.generate.proxy_pages", PAGE, BLOCK, table)


if __name__ == "__main__":
    sys.exit(main())
