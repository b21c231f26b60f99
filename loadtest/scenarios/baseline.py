"""Scenario ``baseline``: the seed's method (HF transformers ``generate``, batch 1, a forced
output length) beside our stack on the same checkpoint and machine, in one run.

The same prompts (exactly N token ids) go to HF transformers at batch 1 and to the stack at each
``--concurrency`` level (default 1 and 16). Reported: tokens/s of each, memory, and the target
"stack output tokens/s at 16 concurrent users >= 8x HF transformers' batch-1 tokens/s".
"""

from __future__ import annotations

from pathlib import Path

from .. import deploy, hf_baseline
from ..report import Report, plot, step_result
from ..runner import run_step, warm_up
from ..workload import Workload

COLUMNS = [
    ("engine", "engine"), ("concurrency", "concurrency"), ("completed", "completed"),
    ("output_throughput", "output tokens/s"), ("per_user_tokens_per_s", "tokens/s per user"),
    ("vs_hf", "x HF batch 1"), ("median_ttft_ms", "TTFT p50 ms"),
    ("memory_gib_peak", "memory GiB"),
]
TARGET_CONCURRENCY = 16
TARGET_RATIO = 8.0


def run(*, data: dict, model_path: str, dtype: str, workload: Workload,
        concurrencies: list[int], requests_min: int, out: Path, title: str,
        settings: dict) -> Report:
    report = Report("baseline", out, {**settings, "workload": workload.model_dump(),
                                      "concurrencies": concurrencies, "dtype": dtype})
    print(f"baseline: {workload.describe()}; HF transformers batch 1 vs the stack at "
          f"concurrency {concurrencies}", flush=True)
    hf = hf_baseline.run(model_path, dtype, [workload.input_tokens], workload.output_tokens,
                         repeats=1)
    if "skipped" in hf:
        report.skip("HF transformers", hf["skipped"])
        hf_tps = None
    else:
        row = hf["rows"][0]
        hf_tps = row["tokens_per_s"]
        report.data["baseline"] = hf
        report.data["table"].append({
            "engine": f"HF transformers ({hf['device']}, {dtype})", "concurrency": 1,
            "completed": row["requests"], "output_throughput": hf_tps,
            "per_user_tokens_per_s": hf_tps, "vs_hf": 1.0,
            "median_ttft_ms": row["ttft_ms"], "memory_gib_peak": row["memory_gib"]})
    with deploy.stack(data, out / "deploy", name="stack") as target:
        warm_up(target, workload, output_tokens=4, out_dir=out / "steps")
        offset = 0
        for c in concurrencies:
            n = max(requests_min, c)
            step = run_step(target, workload, concurrency=c, num_requests=n,
                            out_dir=out / "steps", tag=f"c{c}", index_offset=offset)
            offset += n
            res = step_result(f"c{c}", "stack", c, step.records, step.duration, step.memory,
                              workload.model_dump())
            report.add_step(res, step.records)
            report.data["table"].append({
                **res, "engine": "our stack (vLLM, Ray Serve)",
                "per_user_tokens_per_s": res["output_throughput"] / max(
                    1, min(c, res["completed"])),
                "vs_hf": res["output_throughput"] / hf_tps if hf_tps else None})
    at = [r for r in report.data["table"] if r["engine"].startswith("our")
          and r["concurrency"] == TARGET_CONCURRENCY]
    if at and hf_tps:
        ratio = at[0]["vs_hf"]
        report.target(f"stack at {TARGET_CONCURRENCY} users / HF batch 1 (output tokens/s)",
                      ratio, f">= {TARGET_RATIO:g}", ratio >= TARGET_RATIO,
                      f"{at[0]['output_throughput']:.1f} vs {hf_tps:.1f} tokens/s")
    table = report.data["table"]
    plots = [plot(out / "baseline.png", "Output tokens/s: HF transformers vs our stack",
                  [f"{r['engine'].split(' (')[0]} c={r['concurrency']}" for r in table],
                  {"output tokens/s": [r["output_throughput"] for r in table]}, "", "tokens/s",
                  kind="bar")]
    report.write(COLUMNS, title, plots)
    return report
