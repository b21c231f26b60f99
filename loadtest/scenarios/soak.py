"""Scenario ``soak``: a steady mixed image+text chat load for ``--duration`` seconds, in rounds,
with the whole stack's resident memory at the start, after each round and at the end.

Passes when no valid request failed and resident memory grew by less than ``GROWTH_LIMIT`` from
the first sample (after warm-up) to the last. Memory is the RSS of every process of the local
stack (Ray, Serve, ingress, engines); with ``--url`` only the requests are checked.
"""

from __future__ import annotations

import time
from contextlib import AbstractContextManager
from pathlib import Path

from ..memory import GIB, rss_bytes
from ..report import Report, plot, step_result
from ..runner import Progress, Target, run_step, warm_up
from ..workload import Workload

GROWTH_LIMIT = 0.10
COLUMNS = [
    ("round", "round"), ("elapsed_s", "elapsed s"), ("completed", "completed"),
    ("failed", "failed"), ("output_throughput", "output tokens/s"),
    ("p99_ttft_ms", "TTFT p99 ms"), ("p99_tpot_ms", "TPOT p99 ms"),
    ("stack_rss_gib", "stack RSS GiB"),
]


def _stack_rss(target: Target) -> float | None:
    if target.stack_pids is None:
        return None
    pids = target.stack_pids()
    return rss_bytes(pids) / GIB if pids else None


def run(*, deployment: AbstractContextManager[Target], workload: Workload, concurrency: int,
        duration_s: float, out: Path, title: str, settings: dict) -> Report:
    report = Report("soak", out, {**settings, "workload": workload.model_dump(),
                                  "concurrency": concurrency, "duration_s": duration_s})
    per_round = 4 * concurrency
    print(f"soak: {workload.describe()}; {concurrency} users for {duration_s:g}s in rounds of "
          f"{per_round} requests", flush=True)
    with deployment as target:
        warm_up(target, workload, output_tokens=min(8, workload.output_tokens),
                out_dir=out / "steps")
        start_rss = _stack_rss(target)
        print("  stack resident memory at start: "
              + (f"{start_rss:.2f} GiB" if start_rss is not None else "not measured (--url)"),
              flush=True)
        t0 = time.monotonic()
        progress = Progress("soak", int(duration_s), every=0, unit="s")
        i = failed_so_far = 0
        while time.monotonic() - t0 < duration_s:
            step = run_step(target, workload, concurrency=concurrency, num_requests=per_round,
                            out_dir=out / "steps", tag=f"r{i}", index_offset=i * per_round,
                            progress_every=60)
            res = step_result(f"r{i}", target.name, concurrency, step.records, step.duration,
                              step.memory, workload.model_dump())
            res.update(round=i, elapsed_s=round(time.monotonic() - t0),
                       stack_rss_gib=_stack_rss(target))
            report.add_step(res, step.records)
            report.data["table"].append(res)
            failed_so_far += res["failed"]
            progress.update(min(int(time.monotonic() - t0), int(duration_s)), failed_so_far,
                            force=True)
            i += 1
    table = report.data["table"]
    failed = sum(r["failed"] for r in table)
    completed = sum(r["completed"] for r in table)
    report.target("failed valid requests", failed, "0", failed == 0,
                  f"{completed} completed in {len(table)} rounds")
    end_rss = table[-1]["stack_rss_gib"] if table else None
    if start_rss and end_rss:
        growth = (end_rss - start_rss) / start_rss
        report.target("resident memory growth", round(growth, 4), f"< {GROWTH_LIMIT:.0%}",
                      growth < GROWTH_LIMIT,
                      f"{start_rss:.2f} GiB at start, {end_rss:.2f} GiB at the end")
        report.data["memory"] = {"start_gib": start_rss, "end_gib": end_rss, "growth": growth}
        print(f"  stack resident memory: {start_rss:.2f} GiB at start, {end_rss:.2f} GiB at the "
              f"end ({growth:+.1%})", flush=True)
    else:
        report.skip("memory growth", "no local stack processes to measure (--url)")
    xs = [r["elapsed_s"] for r in table]
    plots = [plot(out / "soak.png", "Soak: throughput and memory per round", xs,
                  {"output tokens/s": [r["output_throughput"] for r in table],
                   "stack RSS GiB": [r["stack_rss_gib"] or 0 for r in table]},
                  "elapsed s", "value")] if table else []
    report.write(COLUMNS, title, plots)
    return report
