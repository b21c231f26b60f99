"""The memory sampler: what it reads, and how often it looks for the engine's processes."""

import os

from loadtest.memory import MemorySampler


class CountingPids:
    def __init__(self):
        self.calls = 0

    def __call__(self) -> list[int]:
        self.calls += 1
        return [os.getpid()]


def test_sampler_reads_memory_every_sample_but_looks_up_processes_once_a_period():
    pids = CountingPids()
    sampler = MemorySampler(pids, None, pids_every=3600)
    for _ in range(5):
        sampler.sample()
    assert pids.calls == 1
    assert len(sampler.rss) == 5
    assert min(sampler.rss) > 0


def test_sampler_looks_up_processes_again_once_the_period_has_passed():
    pids = CountingPids()
    sampler = MemorySampler(pids, None, pids_every=0)
    for _ in range(3):
        sampler.sample()
    assert pids.calls == 3


def test_sampler_looks_up_processes_afresh_for_its_last_sample():
    pids = CountingPids()
    with MemorySampler(pids, None, interval=3600, pids_every=3600):
        pass
    # one lookup when it starts (its thread's first sample reuses it), one for the last sample
    assert pids.calls == 2
