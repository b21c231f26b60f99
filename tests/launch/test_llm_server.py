"""PacedBatcher: the stream batching of our engine replica (launch.llm_server)."""

import asyncio
import time

import pytest

from launch.llm_server import PacedBatcher


async def collect(gen):
    out = []
    async for batch in gen:
        out.append((time.monotonic(), list(batch)))
    return out


async def source(items, gap_s=0.0, fail=None, finished=None):
    try:
        for x in items:
            if gap_s:
                await asyncio.sleep(gap_s)
            yield x
        if fail:
            raise fail
    finally:
        if finished is not None:
            finished.set()


def test_first_chunk_is_not_held_by_the_interval():
    async def main():
        t0 = time.monotonic()
        batches = await collect(PacedBatcher(source(["a"]), interval_ms=5000).stream())
        return t0, batches

    t0, batches = asyncio.run(main())
    assert [b for _, b in batches] == [["a"]]
    assert batches[0][0] - t0 < 2.5  # Ray's clocked Batcher would hold it for 5 s


def test_chunks_arriving_within_the_interval_go_together_in_order():
    async def main():
        return await collect(PacedBatcher(source(range(6), gap_s=0.05),
                                          interval_ms=2000).stream())

    batches = [b for _, b in asyncio.run(main())]
    assert [x for b in batches for x in b] == list(range(6))
    assert batches[0] == [0]  # the first at once, the rest waited for the interval together
    assert len(batches) == 2


def test_slow_chunks_each_go_at_once():
    async def main():
        return await collect(PacedBatcher(source(range(3), gap_s=0.3), interval_ms=20).stream())

    assert [b for _, b in asyncio.run(main())] == [[0], [1], [2]]


def test_engine_failure_is_raised_after_what_came_before():
    async def main():
        got = []
        with pytest.raises(RuntimeError, match="engine died"):
            async for batch in PacedBatcher(source([1, 2], fail=RuntimeError("engine died")),
                                            interval_ms=10).stream():
                got += batch
        return got

    assert asyncio.run(main()) == [1, 2]


def test_closing_the_stream_stops_reading_the_engine():
    async def main():
        finished = asyncio.Event()
        stream = PacedBatcher(source(range(1000), gap_s=0.01, finished=finished),
                              interval_ms=10).stream()
        async for _ in stream:
            break
        await stream.aclose()  # the client went away
        await asyncio.wait_for(finished.wait(), 5)
        return finished.is_set()

    assert asyncio.run(main())


@pytest.mark.parametrize("interval_ms, expected", [(0, [[0], [1], [2]]), (None, [[0, 1, 2]])])
def test_zero_and_none_keep_rays_meaning(interval_ms, expected):
    async def main():
        return await collect(PacedBatcher(source(range(3)), interval_ms=interval_ms).stream())

    assert [b for _, b in asyncio.run(main())] == expected
