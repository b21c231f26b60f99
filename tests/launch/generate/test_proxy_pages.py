"""launch.generate.proxy_pages: the Operations page lists HAProxy's own answers as
``launch.proxy.pages`` gives them."""

from launch.generate import generated_blocks, proxy_pages
from launch.proxy.pages import ERROR_PAGES


def test_the_operations_page_lists_the_proxy_pages():
    page = proxy_pages.PAGE.read_text()
    assert generated_blocks.block(page, proxy_pages.BLOCK) == proxy_pages.table()


def test_every_page_has_a_row():
    rows = proxy_pages.table().splitlines()[2:]
    assert len(rows) == len(ERROR_PAGES) + 2
    assert [r.split(" | ")[0] for r in rows[2:]] == [f"| HAProxy's own {c}" for c in ERROR_PAGES]
