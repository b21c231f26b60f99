"""The engine replica: Ray Serve LLM's ``LLMServer``, with streamed chunks paced, not ticked.

Ray's server groups a stream's chunks by a fixed clock (``Batcher``): every
``stream_batching_interval_ms`` (50 by default) it sends what arrived since the last tick. That
delays every chunk, the first one included, by up to a whole interval: on average half an
interval added to the time to first token, for nothing when tokens come slower than the clock.

``PacedBatcher`` keeps the interval as the *minimum gap* between two sends instead: a chunk that
arrives when the last send is at least an interval old goes out at once (so the first always
does), and chunks that arrive sooner wait together for the rest of the interval. Under load the
number of messages per stream stays bounded as before; at low rates nothing waits.
"""

from __future__ import annotations

import asyncio
import contextlib
from typing import AsyncGenerator, List, TypeVar

from ray.llm._internal.serve.utils.batcher import Batcher  # no public name in ray.serve.llm
from ray.serve.llm.deployment import LLMServer

T = TypeVar("T")


class PacedBatcher(Batcher):
    """Ray's ``Batcher`` (same reading task, queue and end handling) with paced sends."""

    def __init__(self, generator, interval_ms):
        self.arrived = asyncio.Event()  # before Batcher starts its reading task
        super().__init__(generator, interval_ms=interval_ms)

    async def read(self):
        try:
            async for x in self.generator:
                self.queue.put_nowait(x)
                self.arrived.set()
        finally:
            self.done_event.set()
            self.arrived.set()

    async def stream(self) -> AsyncGenerator[List[T], None]:
        if not self.interval_s:  # 0: one message per chunk; None: one at the end (Ray's own)
            async for batch in super().stream():
                yield batch
            return
        loop = asyncio.get_running_loop()
        last = float("-inf")
        try:
            while True:
                if not self.done_event.is_set():
                    await self.arrived.wait()
                wait = last + self.interval_s - loop.time()
                if wait > 0 and not self.done_event.is_set():
                    with contextlib.suppress(asyncio.TimeoutError):
                        await asyncio.wait_for(self.done_event.wait(), timeout=wait)
                if self.done_event.is_set():
                    await asyncio.wait([self.read_task])  # reading ended: let its task finish
                self.arrived.clear()
                results, is_done = self.check_done_and_drain()
                if results:
                    yield self._merge_results(results)
                    last = loop.time()
                if is_done:
                    self.read_task.result()  # the engine's exception, if it failed
                    break
        finally:
            if not self.read_task.done():
                self.read_task.cancel()


class QwenVLServer(LLMServer):
    """One vLLM engine per replica (Ray's ``LLMServer``), streaming through ``PacedBatcher``,
    with vLLM's tokenizer routes wired up."""

    async def _start_engine(self):
        await super()._start_engine()
        # Ray's engine looks for vLLM's tokenization server under the app-state name vLLM used
        # to give it (``openai_serving_tokenization``); vLLM 0.32 names it
        # ``serving_tokenization``, so /tokenize and /detokenize would answer "not supported".
        engine = self.engine
        if getattr(engine, "_oai_serving_tokenization", None) is None:
            state = getattr(engine, "_app_state", None)
            engine._oai_serving_tokenization = getattr(state, "serving_tokenization", None)

    def _batch_output_stream(self, generator: AsyncGenerator[T, None]
                             ) -> AsyncGenerator[List[T], None]:
        return PacedBatcher(generator, interval_ms=self._get_batch_interval_ms()).stream()
