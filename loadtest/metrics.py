"""Per-request records and their summary, with ``vllm bench serve``'s definitions and key names.

A record is what one streamed request measured on the client (``loadtest.stream``):

- TTFT: time to the first SSE message that carries ``choices``;
- ITL: the gaps between consecutive ``choices`` messages;
- E2EL (``latency``): time to the last ``choices`` message;
- output tokens: ``usage.completion_tokens`` (``stream_options.include_usage``);
- TPOT: (E2EL - TTFT) / (output tokens - 1), for requests with more than one token.

Failed requests are counted and left out of every figure. Throughputs divide by the run's
duration (first request sent to last one finished). The summary uses vLLM's key names
(``completed``, ``output_throughput``, ``median_ttft_ms``, ``p99_tpot_ms``, ...), so the JSON
compares directly with ``vllm bench serve --save-result``.
"""

from __future__ import annotations

import json
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Iterable

PERCENTILES = (50, 90, 99)
METRICS = ("ttft", "tpot", "itl", "e2el")


@dataclass
class RequestRecord:
    start_time: float                 # time.time() when the request was sent
    success: bool = False
    ttft: float = 0.0                 # seconds
    itl: list[float] = field(default_factory=list)
    latency: float = 0.0              # E2EL, seconds
    prompt_tokens: int = 0            # usage.prompt_tokens
    output_tokens: int = 0            # usage.completion_tokens
    expected_prompt_tokens: int | None = None
    error: str = ""
    status: int = 0                   # HTTP status
    kind: str = "text"                # workload: text | image
    tag: str = ""                     # what the scenario groups by (a cell, a level, a target)

    @property
    def tpot(self) -> float | None:
        if not self.success or self.output_tokens <= 1:
            return None
        return (self.latency - self.ttft) / (self.output_tokens - 1)

    @property
    def decode_tokens_per_s(self) -> float | None:
        tpot = self.tpot
        return 1.0 / tpot if tpot else None

    @property
    def end_time(self) -> float:
        return self.start_time + self.latency

    def to_json(self) -> str:
        return json.dumps(asdict(self))

    @classmethod
    def from_dict(cls, d: dict) -> "RequestRecord":
        return cls(**d)


def read_records(path: Path) -> list[RequestRecord]:
    if not path.exists():
        return []
    return [RequestRecord.from_dict(json.loads(line))
            for line in path.read_text().splitlines() if line.strip()]


def _stats(values: list[float], name: str) -> dict[str, float]:
    """mean/median/std/pNN of seconds, in ms (vLLM: 0 when there is no value)."""
    import numpy as np

    arr = np.asarray(values or [0.0], dtype=float) * 1000.0
    out = {f"mean_{name}_ms": float(arr.mean()), f"median_{name}_ms": float(np.median(arr)),
           f"std_{name}_ms": float(arr.std())}
    for p in PERCENTILES:
        out[f"p{p}_{name}_ms"] = float(np.percentile(arr, p))
    return out


def within_slo(r: RequestRecord, slo: dict[str, float]) -> bool:
    """A request that succeeded within every SLO of ``slo`` (``ttft``/``tpot``/``e2el`` in ms;
    a single-token request has no TPOT to miss)."""
    got = {"ttft": r.ttft, "tpot": r.tpot or 0.0, "e2el": r.latency}
    return r.success and all(got[k] * 1000.0 <= limit for k, limit in slo.items())


def summarize(records: Iterable[RequestRecord], duration: float | None = None,
              goodput: dict[str, float] | None = None) -> dict:
    """The summary of one run, with ``vllm bench serve``'s keys.

    ``duration`` defaults to first start to last end. ``goodput`` maps ``ttft``/``tpot``/``e2el``
    to SLOs in ms: a completed request is good when it meets all of them.
    """
    records = list(records)
    ok = [r for r in records if r.success]
    if duration is None:
        duration = run_duration(records) or 0.0
    dur = max(duration, 1e-9)
    total_in = sum(r.prompt_tokens for r in ok)
    total_out = sum(r.output_tokens for r in ok)
    values = {
        "ttft": [r.ttft for r in ok],
        "tpot": [r.tpot for r in ok if r.tpot is not None],
        "itl": [gap for r in ok for gap in r.itl],
        "e2el": [r.latency for r in ok],
    }
    good = sum(within_slo(r, goodput) for r in ok) if goodput else 0
    out = {
        "duration": duration,
        "completed": len(ok),
        "failed": len(records) - len(ok),
        "total_input_tokens": total_in,
        "total_output_tokens": total_out,
        "request_throughput": len(ok) / dur,
        "request_goodput": good / dur if goodput else None,
        "output_throughput": total_out / dur,
        "total_token_throughput": (total_in + total_out) / dur,
        "max_concurrent_requests": max_concurrency(ok),
    }
    for name in METRICS:
        out.update(_stats(values[name], name))
    return out


def run_duration(records: list[RequestRecord]) -> float | None:
    """First request sent to last successful one finished; None if none succeeded."""
    ok = [r for r in records if r.success]
    if not ok:
        return None
    return max(r.end_time for r in ok) - min(r.start_time for r in records)


def max_concurrency(records: list[RequestRecord]) -> int:
    events = sorted([(r.start_time, 1) for r in records] + [(r.end_time, -1) for r in records],
                    key=lambda e: (e[0], e[1]))
    best = cur = 0
    for _, step in events:
        cur += step
        best = max(best, cur)
    return best


def raw_lists(records: list[RequestRecord]) -> dict[str, list]:
    """The per-request lists ``vllm bench serve --save-detailed`` writes."""
    return {
        "input_lens": [r.prompt_tokens for r in records],
        "output_lens": [r.output_tokens for r in records],
        "ttfts": [r.ttft for r in records],
        "itls": [r.itl for r in records],
        "latencies": [r.latency for r in records],
        "start_times": [r.start_time for r in records],
        "errors": [r.error for r in records],
    }
