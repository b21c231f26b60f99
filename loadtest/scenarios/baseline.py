"""Scenario ``baseline``: the model card's method (HF transformers ``generate``, batch 1, a
forced output length) beside our stack on the same checkpoint and machine, in one run.

The same prompts (exactly N token ids) go to HF transformers at batch 1 and to the stack at each
``--concurrency`` level (default 1 and 16). Reported: tokens/s of each, memory, and the target
"stack output tokens/s at 16 concurrent users >= 8x HF transformers' batch-1 tokens/s".

HF runs in the engine's dtype, like for like. Where that is not the checkpoint's own (a BF16
checkpoint served in float32 on a CPU without BF16 instructions), HF also runs in the
checkpoint's dtype, as a second row, so the report shows the stack against both.
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
    hf_tps, other = None, None
    own = hf_baseline.checkpoint_dtype(model_path)
    for hf_dtype in [dtype] + ([own] if own and own != dtype else []):
        hf = hf_baseline.run(model_path, hf_dtype, [workload.input_tokens],
                             workload.output_tokens, repeats=1)
        if "skipped" in hf:
            report.skip("HF transformers", hf["skipped"])
            break
        row = hf["rows"][0]
        if hf_dtype == dtype:
            hf_tps = row["tokens_per_s"]
            report.data["baseline"] = hf
            label = f"HF transformers ({hf['device']}, {hf_dtype})"
        else:
            other = (hf_dtype, row["tokens_per_s"])
            report.data["baseline_checkpoint_dtype"] = hf
            label = f"HF transformers ({hf['device']}, {hf_dtype}: the checkpoint's dtype)"
        report.data["table"].append({
            "engine": label, "short": f"HF {hf_dtype}", "concurrency": 1,
            "completed": row["requests"],
            "output_throughput": row["tokens_per_s"],
            "per_user_tokens_per_s": row["tokens_per_s"], "vs_hf": row["tokens_per_s"] / hf_tps,
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
        detail = f"{at[0]['output_throughput']:.1f} vs {hf_tps:.1f} tokens/s, both {dtype}"
        if other:
            detail += (f"; HF in {other[0]} (the checkpoint's dtype): {other[1]:.1f} tokens/s, "
                       f"the stack {at[0]['output_throughput'] / other[1]:.2f}x that")
        report.target(f"stack at {TARGET_CONCURRENCY} users / HF batch 1 (output tokens/s)",
                      ratio, f">= {TARGET_RATIO:g}", ratio >= TARGET_RATIO, detail)
    table = report.data["table"]
    plots = [plot(out / "baseline.png", "Output tokens/s: HF transformers vs our stack",
                  [f"{r.get('short', 'stack')} c={r['concurrency']}" for r in table],
                  {"output tokens/s": [r["output_throughput"] for r in table]}, "", "tokens/s",
                  kind="bar")]
    report.write(COLUMNS, title, plots)
    return report
