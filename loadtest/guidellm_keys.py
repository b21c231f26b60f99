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


def levels(records: list[RequestRecord], table: list[dict]) -> list[dict]:
    """A sweep's levels (rows with ``tag`` and ``concurrency``) as GuideLLM's ``concurrent``
    benchmarks, from the records of each."""
    return [benchmark([r for r in records if r.tag == row["tag"]],
                      {"type_": "concurrent", "streams": row["concurrency"]}) for row in table]


# (column, metric, statistic) compared side by side: the figures both tools measure alike.
COMPARED = [("requests/s", "requests_per_second", "mean"),
            ("output tokens/s", "output_tokens_per_second", "mean"),
            ("TTFT p50 ms", "time_to_first_token_ms", "median"),
            ("TTFT p99 ms", "time_to_first_token_ms", "p99"),
            ("ITL p50 ms", "inter_token_latency_ms", "median")]


def _figure(bench: dict, metric: str, stat: str) -> float | None:
    got = bench["metrics"].get(metric, {}).get("successful", {})
    return got.get("percentiles", {}).get(stat) if stat.startswith("p") else got.get(stat)


def compare(ours: dict, theirs: dict) -> list[dict]:
    """Rows per concurrency both runs measured (GuideLLM's ``concurrent`` benchmarks, ours by
    ``streams``): each compared figure of ours, of GuideLLM's, and ours / GuideLLM's."""
    def by_streams(report: dict) -> dict[int, dict]:
        return {b["config"]["strategy"]["streams"]: b for b in report["benchmarks"]
                if b["config"]["strategy"].get("type_") == "concurrent"}

    mine, other = by_streams(ours), by_streams(theirs)
    rows = []
    for c in sorted(set(mine) & set(other)):
        row: dict = {"concurrency": c}
        for name, metric, stat in COMPARED:
            a, b = _figure(mine[c], metric, stat), _figure(other[c], metric, stat)
            row[name] = (a, b, a / b if a is not None and b else None)
        rows.append(row)
    return rows


def compare_table(rows: list[dict]) -> str:
    """Markdown: per concurrency, each figure as "ours / GuideLLM's (ratio)"."""
    head = ["concurrency", *[name for name, _, _ in COMPARED]]
    lines = ["| " + " | ".join(head) + " |", "|" + "---|" * len(head)]
    for r in rows:
        cells = [str(r["concurrency"])]
        for name, _, _ in COMPARED:
            a, b, ratio = r[name]
            cells.append("-" if a is None or b is None else
                         f"{a:.4g} / {b:.4g} ({ratio:.2f}x)" if ratio is not None else
                         f"{a:.4g} / {b:.4g}")
        lines.append("| " + " | ".join(cells) + " |")
    return "\n".join(lines) + "\n"


def main(argv: list[str] | None = None) -> int:
    """``python -m loadtest.guidellm_keys OURS GUIDELLM``: our ``guidellm.json`` (from
    ``sweep`` or ``calibrate``) beside ``guidellm run --output kind=json``'s file."""
    import argparse
    import json
    from pathlib import Path

    p = argparse.ArgumentParser(prog="python -m loadtest.guidellm_keys", description=main.__doc__)
    p.add_argument("ours", type=Path, help="guidellm.json from a sweep or calibrate results folder")
    p.add_argument("guidellm", type=Path, help="GuideLLM's JSON report of the same deployment")
    args = p.parse_args(argv)
    rows = compare(json.loads(args.ours.read_text()), json.loads(args.guidellm.read_text()))
    if not rows:
        print("no concurrency level in common (GuideLLM: --profile kind=concurrent with "
              "--override profile.streams at the sweep's levels)")
        return 1
    print("ours / GuideLLM's, per concurrency (GuideLLM's ITL is vLLM's TPOT):\n")
    print(compare_table(rows))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
