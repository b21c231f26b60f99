"""The memory sampler: what it reads, and how often it looks for the engine's processes."""

import os

import pytest

from loadtest.memory import MemorySampler


class CountingPids:
    def __init__(self):
        self.calls = 0

    def __call__(self) -> list[int]:
        self.calls += 1
        return [os.getpid()]


@pytest.mark.parametrize("every, lookups", [(3600, 1), (0, 5)])
def test_sampler_reads_memory_every_sample_and_looks_up_processes_once_a_period(every, lookups):
    """Within the period the known list is read again; once it has passed, looked up again."""
    pids = CountingPids()
    sampler = MemorySampler(pids, None, pids_every=every)
    for _ in range(5):
        sampler.sample()
    assert pids.calls == lookups
    assert len(sampler.rss) == 5
    assert min(sampler.rss) > 0


def test_sampler_looks_up_processes_afresh_for_its_last_sample():
    pids = CountingPids()
    with MemorySampler(pids, None, interval=3600, pids_every=3600):
        pass
    # one lookup when it starts (its thread's first sample reuses it), one for the last sample
    assert pids.calls == 2
