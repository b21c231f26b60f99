"""Shared fixtures and collection hooks; the helpers they use are in ``tests/utils.py``."""

from __future__ import annotations

import pytest

from tests.utils import Stacks

STACKS = pytest.StashKey[Stacks]()
STACK_MODULES = pytest.StashKey[set]()


def pytest_collection_modifyitems(config, items):
    """Every test of a ``*_e2e.py`` module is marked ``e2e`` (it starts a stack or a cluster:
    ``make test-e2e``) and ``slow``; GPU tests are skipped (not deleted) where no NVIDIA GPU is
    visible."""
    items[:] = shared_stacks_together(items)
    config.stash[STACK_MODULES] = {item.path for item in items if "stacks" in item.fixturenames}
    for item in items:
        if item.path.name.endswith("_e2e.py"):
            item.add_marker(pytest.mark.e2e)
            item.add_marker(pytest.mark.slow)
    try:
        import torch

        has_gpu = torch.cuda.is_available()
    except Exception:
        has_gpu = False
    if has_gpu:
        return
    skip = pytest.mark.skip(reason="needs an NVIDIA GPU")
    for item in items:
        if "gpu" in item.keywords:
            item.add_marker(skip)


def shared_stacks_together(items: list) -> list:
    """The tests of each ``shares_stack`` name moved to where the first of them is, in their
    order, those that end the stack (``ends=True``) last: one stack start serves them all."""
    groups: dict[str, list] = {}
    for item in items:
        mark = item.get_closest_marker("shares_stack")
        if mark is not None:
            groups.setdefault(mark.args[0], []).append(item)
    ordered, placed = [], set()
    for item in items:
        mark = item.get_closest_marker("shares_stack")
        if mark is None:
            ordered.append(item)
        elif mark.args[0] not in placed:
            placed.add(mark.args[0])
            group = groups[mark.args[0]]
            ends = [i for i in group if i.get_closest_marker("shares_stack").kwargs.get("ends")]
            ordered += [i for i in group if i not in ends] + ends
    return ordered


@pytest.fixture(scope="session")
def tokenizer():
    """The embedded tiny model's tokenizer (the real Qwen2 tokenizer files); the serve tests
    override it with the served one."""
    from transformers import AutoTokenizer

    from engine.embedded_model import ensure_checkpoint

    return AutoTokenizer.from_pretrained(ensure_checkpoint("embedded:qwen2-vl-tiny"))


@pytest.fixture(scope="session")
def stacks(request, tmp_path_factory):
    """Stacks keyed by their overrides (``tests.utils.Stacks``): modules asking for the same
    one share one start."""
    held = Stacks(tmp_path_factory)
    request.config.stash[STACKS] = held
    yield held
    held.close()


def pytest_runtest_setup(item):
    """A shared stack is stopped before the first test of a module that uses none: a stack
    left running would hold the machine's cores, memory and HAProxy's ports from the tests
    after."""
    held = item.config.stash.get(STACKS, None)
    if held is not None and item.path not in item.config.stash.get(STACK_MODULES, set()):
        held.close()
