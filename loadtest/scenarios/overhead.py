"""Scenario ``overhead``: our Ray Serve stack against a bare ``vllm serve`` with identical engine
arguments, started together and up at once, measured in alternating rounds (A B B A ...) of the same workload.

Per target, over all its rounds: output tokens/s (total tokens / total round time) and TTFT p50.
Targets: stack throughput >= 0.95x bare vLLM; stack TTFT p50 within 15 ms of bare vLLM's.

With ``ray_serve_llm`` a third target runs between them: Ray Serve LLM's own OpenAI app from the
same config (``loadtest.ray_reference``), which splits the overhead into Ray Serve's part and
our layer's part (informational rows, no goal).
"""

from __future__ import annotations

import contextlib
from pathlib import Path

from .. import deploy
from ..metrics import summarize
from ..report import Report, plot, step_result
from ..runner import Progress, run_step, warm_up
from ..workload import Workload

COLUMNS = [
    ("target", "target"), ("rounds", "rounds"), ("completed", "completed"), ("failed", "failed"),
    ("output_throughput", "output tokens/s"), ("median_ttft_ms", "TTFT p50 ms"),
    ("p99_ttft_ms", "TTFT p99 ms"), ("median_tpot_ms", "TPOT p50 ms"),
    ("median_e2el_ms", "E2EL p50 ms"), ("memory_gib_peak", "memory GiB"),
]
MIN_RATIO = 0.95
MAX_TTFT_DIFF_MS = 15.0


def run(*, data: dict, workload: Workload, concurrency: int, requests_per_round: int,
        rounds: int, out: Path, title: str, settings: dict, ray_serve_llm: bool = False) -> Report:
    report = Report("overhead", out, {**settings, "workload": workload.model_dump(),
                                      "concurrency": concurrency, "rounds": rounds,
                                      "requests_per_round": requests_per_round,
                                      "ray_serve_llm": ray_serve_llm})
    print(f"overhead: {workload.describe()}, concurrency {concurrency}, {rounds} round(s) of "
          f"{requests_per_round} requests per target, alternating", flush=True)
    per: dict[str, dict] = {}
    with contextlib.ExitStack() as up:
        targets = deploy.start_all(up, [
            deploy.stack(data, out / "deploy", name="stack"),
            *([deploy.ray_serve_llm(data, out / "deploy")] if ray_serve_llm else []),
            deploy.bare_vllm(data, out / "deploy", name="vllm-serve")])
        progress = Progress("overhead", len(targets) * rounds, every=0, unit="rounds")
        for t in targets:
            warm_up(t, workload, output_tokens=4, out_dir=out / "steps")
        done = 0
        for r in range(rounds):
            for t in targets if r % 2 == 0 else targets[::-1]:
                step = run_step(t, workload, concurrency=concurrency,
                                num_requests=requests_per_round, out_dir=out / "steps",
                                tag=f"round{r + 1}", index_offset=r * requests_per_round)
                report.add_step(step_result(f"round{r + 1}", t.name, concurrency, step.records,
                                            step.duration, step.memory, workload.model_dump()),
                                step.records)
                acc = per.setdefault(t.name, {"records": [], "duration": 0.0, "memory": []})
                acc["records"] += step.records
                acc["duration"] += step.duration
                acc["memory"].append(step.memory.get("memory_gib_peak"))
                done += 1
                progress.update(done, force=True)
    names = [t.name for t in targets]
    rows = {}
    for name in names:
        acc = per[name]
        mem = [m for m in acc["memory"] if m is not None]
        rows[name] = {"target": name, "rounds": rounds,
                      **summarize(acc["records"], acc["duration"]),
                      "memory_gib_peak": max(mem) if mem else None}
        report.data["table"].append(rows[name])
    compare(report, rows["stack"], rows["vllm-serve"], "stack", "bare vllm serve", goals=True)
    if ray_serve_llm:
        ray = rows["ray-serve-llm"]
        compare(report, ray, rows["vllm-serve"], "ray-serve-llm", "bare vllm serve")
        compare(report, rows["stack"], ray, "stack", "ray-serve-llm")
    rounds_of = {n: [st for st in report.data["steps"] if st["target"] == n] for n in names}
    xs = list(range(1, rounds + 1))
    plots = [plot(out / "overhead.png", "Output tokens/s per round", xs,
                  {n: [st["output_throughput"] for st in rounds_of[n]] for n in rounds_of},
                  "round", "tokens/s", kind="bar")]
    report.write(COLUMNS, title, plots)
    return report


def compare(report: Report, a: dict, b: dict, a_name: str, b_name: str,
            goals: bool = False) -> None:
    """Throughput ratio and TTFT p50 difference of ``a`` against ``b``: the targets for stack
    vs bare vllm serve (``goals``), informational rows otherwise."""
    ratio = a["output_throughput"] / b["output_throughput"] if b["output_throughput"] else None
    diff = a["median_ttft_ms"] - b["median_ttft_ms"]
    report.target(f"{a_name} / {b_name} output tokens/s", ratio,
                  f">= {MIN_RATIO}" if goals else "(informational)",
                  None if ratio is None or not goals else ratio >= MIN_RATIO,
                  f"{a['output_throughput']:.1f} vs {b['output_throughput']:.1f} tokens/s")
    report.target(f"{a_name} - {b_name} TTFT p50 (ms)", diff,
                  f"<= {MAX_TTFT_DIFF_MS:g} ms" if goals else "(informational)",
                  diff <= MAX_TTFT_DIFF_MS if goals else None,
                  f"{a['median_ttft_ms']:.1f} vs {b['median_ttft_ms']:.1f} ms")
