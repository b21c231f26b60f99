"""The suite's own ordering: tests that share a stack run together, those that end it last."""

from __future__ import annotations

import pytest

from tests.conftest import shared_stacks_together


class Item:
    def __init__(self, name: str, mark=None):
        self.name, self.mark = name, mark

    def get_closest_marker(self, name):
        assert name == "shares_stack"
        return self.mark

    def __repr__(self):
        return self.name


def test_a_shared_stacks_tests_run_together_and_its_enders_last():
    serve, ends = pytest.mark.shares_stack("serve").mark, pytest.mark.shares_stack(
        "serve", ends=True).mark
    other = pytest.mark.shares_stack("other").mark
    items = [Item("a1"), Item("s1", serve), Item("s2", serve), Item("stop", ends),
             Item("b1"), Item("o1", other), Item("c1"), Item("s3", serve), Item("o2", other)]
    order = [i.name for i in shared_stacks_together(items)]
    assert order == ["a1", "s1", "s2", "s3", "stop", "b1", "o1", "o2", "c1"]
