"""Scenario ``sweep``: concurrency 1, 2, 4, ... with a mixed image+text chat workload, up to
saturation, and the capacity of one replica under an SLO.

Each level sends a fixed number of requests (at least twice the concurrency) from that many Locust
users. Per level: output tokens/s, request throughput, TTFT p50/p99, TPOT p99, goodput, memory and
KV cache usage. The sweep stops at ``--max-concurrency`` or once a level adds less than 10% output
throughput over the best so far (saturation). Capacity = the highest level whose TTFT p99 and
TPOT p99 both meet the SLO.
"""

from __future__ import annotations

import json
from contextlib import AbstractContextManager
from pathlib import Path

from .. import guidellm_keys
from ..calibration import SATURATION_GAIN
from ..plan_check import comparison, comparison_table
from ..report import Report, plot, step_result
from ..runner import Progress, Target, run_step, warm_up
from ..workload import Workload

COLUMNS = [
    ("concurrency", "concurrency"), ("completed", "completed"), ("failed", "failed"),
    ("output_throughput", "output tokens/s"), ("request_throughput", "requests/s"),
    ("median_ttft_ms", "TTFT p50 ms"), ("p99_ttft_ms", "TTFT p99 ms"),
    ("median_tpot_ms", "TPOT p50 ms"), ("p99_tpot_ms", "TPOT p99 ms"),
    ("request_goodput", "goodput req/s"), ("memory_gib_peak", "memory GiB"),
    ("kv_cache_usage_peak", "KV usage peak"), ("meets_slo", "meets SLO"),
]


def levels(max_concurrency: int) -> list[int]:
    out, c = [], 1
    while c < max_concurrency:
        out.append(c)
        c *= 2
    return out + [max_concurrency]


def run(*, deployment: AbstractContextManager[Target], workload: Workload, max_concurrency: int,
        min_requests: int, slo_ttft_ms: float, slo_tpot_ms: float, out: Path, title: str,
        settings: dict, capacity_plan: dict | None = None) -> Report:
    """``capacity_plan``: ``qwen-vl plan``'s prediction for this deployment and workload, reported
    beside what the sweep measured (``loadtest.plan_check``)."""
    report = Report("sweep", out, {**settings, "workload": workload.model_dump(),
                                   "max_concurrency": max_concurrency,
                                   "min_requests": min_requests, "slo_ttft_ms": slo_ttft_ms,
                                   "slo_tpot_ms": slo_tpot_ms})
    print(f"sweep: {workload.describe()}; concurrency {levels(max_concurrency)}; SLO TTFT p99 "
          f"<= {slo_ttft_ms:g} ms, TPOT p99 <= {slo_tpot_ms:g} ms", flush=True)
    with deployment as target:
        kv_measured = measure(target, workload, report, max_concurrency=max_concurrency,
                              min_requests=min_requests, slo_ttft_ms=slo_ttft_ms,
                              slo_tpot_ms=slo_tpot_ms, out=out)
    table = report.data["table"]
    meeting = [r["concurrency"] for r in table if r["meets_slo"]]
    capacity = max(meeting) if meeting else 0
    peak = max(table, key=lambda r: r["output_throughput"])
    report.data["capacity"] = {
        "max_concurrency_meeting_slo": capacity, "slo_ttft_ms": slo_ttft_ms,
        "slo_tpot_ms": slo_tpot_ms, "peak_output_throughput": peak["output_throughput"],
        "peak_at_concurrency": peak["concurrency"]}
    report.data["notes"].append(
        f"capacity of one replica: {capacity} concurrent users meet TTFT p99 <= "
        f"{slo_ttft_ms:g} ms and TPOT p99 <= {slo_tpot_ms:g} ms; peak "
        f"{peak['output_throughput']:.1f} output tokens/s at concurrency {peak['concurrency']}")
    if capacity_plan is not None:
        rows = comparison(capacity_plan, table, capacity, kv_measured)
        report.data["plan"] = capacity_plan
        report.data["plan_vs_measured"] = rows
        print("plan vs measured:\n" + comparison_table(rows), flush=True)
    (out / "guidellm.json").write_text(json.dumps(
        {"benchmarks": guidellm_keys.levels(report.records, table)}, indent=1))
    xs = [r["concurrency"] for r in table]
    plots = [
        plot(out / "throughput.png", "Output tokens/s per concurrency", xs,
             {"output tokens/s": [r["output_throughput"] for r in table]}, "concurrent users",
             "tokens/s", logx=True),
        plot(out / "latency.png", "Latency p99 per concurrency", xs,
             {"TTFT p99 (ms)": [r["p99_ttft_ms"] for r in table],
              "TPOT p99 (ms)": [r["p99_tpot_ms"] for r in table]},
             "concurrent users", "ms", logx=True),
    ]
    report.write(COLUMNS, title, plots)
    return report


def meets_slo(row: dict, slo_ttft_ms: float, slo_tpot_ms: float) -> bool:
    """Every request of the level succeeded, and its TTFT p99 and TPOT p99 are within the SLO."""
    return (row["failed"] == 0 and row["p99_ttft_ms"] <= slo_ttft_ms
            and row["p99_tpot_ms"] <= slo_tpot_ms)


def measure(target: Target, workload: Workload, report: Report, *, max_concurrency: int,
            min_requests: int, slo_ttft_ms: float, slo_tpot_ms: float,
            out: Path) -> int | None:
    """The levels on a running deployment, into ``report`` (its steps and table), until
    ``max_concurrency`` or saturation; the KV cache size the engine logged (None if unknown)."""
    slo = {"ttft": slo_ttft_ms, "tpot": slo_tpot_ms}
    plan = levels(max_concurrency)
    progress = Progress("sweep", len(plan), every=0, unit="levels")
    best = 0.0
    offset = 0
    warm_up(target, workload, output_tokens=min(8, workload.output_tokens),
            out_dir=out / "steps")
    for i, c in enumerate(plan):
        n = max(min_requests, 2 * c)
        step = run_step(target, workload, concurrency=c, num_requests=n,
                        out_dir=out / "steps", tag=f"c{c}", index_offset=offset)
        offset += n
        res = step_result(f"c{c}", target.name, c, step.records, step.duration, step.memory,
                          workload.model_dump(), goodput=slo)
        res["meets_slo"] = meets_slo(res, slo_ttft_ms, slo_tpot_ms)
        report.add_step(res, step.records)
        report.data["table"].append(res)
        progress.update(i + 1, force=True)
        if best and res["output_throughput"] < best * SATURATION_GAIN:
            report.data["notes"].append(
                f"saturated at concurrency {c}: {res['output_throughput']:.1f} output "
                f"tokens/s, less than {SATURATION_GAIN:.2f}x the best level before "
                f"({best:.1f})")
            break
        best = max(best, res["output_throughput"])
    return target.kv_cache_tokens() if target.kv_cache_tokens else None
