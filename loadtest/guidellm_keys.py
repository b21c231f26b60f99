"""A run's steps in GuideLLM 0.8's JSON key names (``benchmarks[].metrics``), so a team can put
our figures beside a ``guidellm run --output kind=json`` of the same stack.

Only what a streamed request's record measures is written: GuideLLM's request counts, rates,
latencies and token counts, each as ``{"successful": {mean, median, min, max, std_dev, count,
percentiles: {p50, p90, p95, p99}}}``. The definitions differ from ``vllm bench serve``'s
in one place: GuideLLM's ``inter_token_latency_ms`` is what vLLM calls TPOT ((E2EL - TTFT) /
(output tokens - 1)), and its ``time_per_output_token_ms`` is E2EL / output tokens. This is not a
GuideLLM report (``guidellm export`` cannot load it): it holds GuideLLM's names for our numbers.
"""

from __future__ import annotations

from typing import Iterable

from .metrics import RequestRecord, run_duration


def _distribution(values: list[float]) -> dict:
    import numpy as np

    if not values:
        return {"successful": {"count": 0}}
    arr = np.asarray(values, dtype=float)
    return {"successful": {
        "mean": float(arr.mean()), "median": float(np.median(arr)), "min": float(arr.min()),
        "max": float(arr.max()), "std_dev": float(arr.std()), "count": int(arr.size),
        "percentiles": {f"p{p}": float(np.percentile(arr, p)) for p in (50, 90, 95, 99)}}}


def _rate(value: float) -> dict:
    return {"successful": {"mean": value}}


def benchmark(records: Iterable[RequestRecord], strategy: dict) -> dict:
    """One step as GuideLLM's ``benchmarks[]`` entry; ``strategy``: GuideLLM's
    ``config.strategy`` (``{"type_": "concurrent", "streams": 4}`` or ``{"type_": "constant",
    "rate": 1.5}``)."""
    records = list(records)
    ok = [r for r in records if r.success]
    dur = max(run_duration(records) or 0.0, 1e-9)
    out_tokens = sum(r.output_tokens for r in ok)
    in_tokens = sum(r.prompt_tokens for r in ok)
    return {"config": {"strategy": strategy}, "metrics": {
        "request_totals": {"successful": len(ok), "errored": len(records) - len(ok),
                           "incomplete": 0, "total": len(records)},
        "requests_per_second": _rate(len(ok) / dur),
        "request_latency": _distribution([r.latency for r in ok]),
        "time_to_first_token_ms": _distribution([1000 * r.ttft for r in ok]),
        "inter_token_latency_ms": _distribution([1000 * r.tpot for r in ok
                                                 if r.tpot is not None]),
        "time_per_output_token_ms": _distribution([1000 * r.latency / r.output_tokens
                                                   for r in ok if r.output_tokens]),
        "prompt_token_count": _distribution([float(r.prompt_tokens) for r in ok]),
        "output_token_count": _distribution([float(r.output_tokens) for r in ok]),
        "output_tokens_per_second": _rate(out_tokens / dur),
        "tokens_per_second": _rate((in_tokens + out_tokens) / dur),
    }}
