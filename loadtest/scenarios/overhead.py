"""Scenario ``overhead``: our Ray Serve stack against a bare ``vllm serve`` with identical engine
arguments, started together and up at once, measured in alternating rounds (A B B A ...) of the
same workload. Each target first serves one unmeasured round of its own requests (its engine's
warm-up); no round scrapes a target's metrics (the harness's load, not the requests').

Per target, over all its rounds: output tokens/s (total tokens / total round time) and TTFT p50.
Targets: stack throughput >= 0.95x bare vLLM; stack TTFT p50 within 15 ms of bare vLLM's.

Then CPU per request (``loadtest.cpu_usage``): per target, ``cpu_requests`` text-only requests
and as many with one 1-megapixel JPEG each, every process's CPU counters read around each block
(an idle window before it subtracted), split by process group. Targets: the stack's serving path
(every process but vLLM's engine core and workers) costs at most 1.5x the CPU per text request of
``vllm serve``'s API server, and at most 1.0x per image request. The table shows where the CPU
goes, side by side.

With ``ray_serve_llm`` a third target runs between them: Ray Serve LLM's own OpenAI app from the
same config (``loadtest.ray_reference``), which splits the overhead into Ray Serve's part and
our layer's part (informational rows, no goal).
"""

from __future__ import annotations

import contextlib
from contextlib import AbstractContextManager
from pathlib import Path

from engine.config import RAY_FAST_PATH_ENV

from .. import deploy
from ..cpu_usage import ENGINE_GROUPS, GROUPS, CpuMeter, CpuReading
from ..metrics import summarize
from ..profile import LIBRARIES, profiled, shares
from ..report import Report, plot, step_result
from ..runner import Progress, Target, run_step, warm_up
from ..workload import Workload
from .common import with_fast_paths

COLUMNS = [
    ("target", "target"), ("rounds", "rounds"), ("completed", "completed"), ("failed", "failed"),
    ("output_throughput", "output tokens/s"), ("median_ttft_ms", "TTFT p50 ms"),
    ("p99_ttft_ms", "TTFT p99 ms"), ("median_tpot_ms", "TPOT p50 ms"),
    ("median_e2el_ms", "E2EL p50 ms"), ("memory_gib_peak", "memory GiB"),
]
MIN_RATIO = 0.95
MAX_TTFT_DIFF_MS = 15.0
# The stack's serving path (every process but the engine core and workers) against `vllm
# serve`'s API server, per streamed request: text may cost half as much again (the front door,
# quotas and accounting run in the same process); an image no more, since the front door
# decodes it once, at the processor's target scale, where `vllm serve` decodes it in full.
MAX_SERVING_CPU_RATIO = {"text": 1.5, "image": 1.0}
IMAGE_SIZE = (1000, 1000)  # one megapixel
API_SERVER = "API server (vllm serve)"
FAST = "stack-fast-paths"  # server.ray_throughput_optimized on too
DIRECT = "ray-serve-llm-direct"  # Ray Serve LLM's app with its direct streaming
# Ray Serve LLM routes a direct stream with an ingress request router, which needs HAProxy; the
# throughput-optimized mode too, as the fast-path stack has it.
DIRECT_ENV = {"RAY_SERVE_LLM_ENABLE_DIRECT_STREAMING": "1",
              **dict.fromkeys(RAY_FAST_PATH_ENV.values(), "1")}


def run(*, data: dict, stack: AbstractContextManager[Target], workload: Workload,
        concurrency: int, requests_per_round: int,
        rounds: int, out: Path, title: str, settings: dict, ray_serve_llm: bool = False,
        fast_paths: bool = False, direct_streaming: bool = False, cpu_requests: int = 0,
        idle_s: float = 5.0, profile: bool = False) -> Report:
    report = Report("overhead", out, {**settings, "workload": workload.model_dump(),
                                      "concurrency": concurrency, "rounds": rounds,
                                      "requests_per_round": requests_per_round,
                                      "ray_serve_llm": ray_serve_llm,
                                      "fast_paths": fast_paths,
                                      "direct_streaming": direct_streaming,
                                      "cpu_requests": cpu_requests})
    print(f"overhead: {workload.describe()}, concurrency {concurrency}, {rounds} round(s) of "
          f"{requests_per_round} requests per target, alternating", flush=True)
    per: dict[str, dict] = {}
    with contextlib.ExitStack() as up:
        targets = deploy.start_all(up, [
            stack,  # the stack as `data` deploys it, or one already running
            *([deploy.stack(with_fast_paths(data), out / "deploy", name=FAST)]
              if fast_paths else []),
            *([deploy.ray_serve_llm(data, out / "deploy")] if ray_serve_llm else []),
            *([deploy.ray_serve_llm(data, out / "deploy", name=DIRECT,
                                       env=DIRECT_ENV)]
              if direct_streaming else []),
            deploy.bare_vllm(data, out / "deploy", name="vllm-serve")])
        progress = Progress("overhead", len(targets) * rounds, every=0, unit="rounds")
        # A whole round first, unmeasured: vLLM's CPU matmuls build a oneDNN primitive for
        # each number of tokens per step they have not met yet, which holds up every request
        # in flight; the rounds compare serving paths, so each engine meets the workload's
        # batch shapes before any round is timed.
        for t in targets:
            warm_up(t, workload, output_tokens=workload.output_tokens, out_dir=out / "steps",
                    requests=requests_per_round, concurrency=concurrency)
        done = 0
        for r in range(rounds):
            for t in targets if r % 2 == 0 else targets[::-1]:
                # No KV cache scrapes: a scrape of the stack (Ray's metrics agent renders
                # every series of the node) costs its cores far more than one of `vllm
                # serve`'s own endpoint, a load of the harness's, not the targets'.
                step = run_step(t, workload, concurrency=concurrency,
                                num_requests=requests_per_round, out_dir=out / "steps",
                                tag=f"round{r + 1}", index_offset=r * requests_per_round,
                                scrape=False)
                report.add_step(step_result(f"round{r + 1}", t.name, concurrency, step.records,
                                            step.duration, step.memory, workload.model_dump()),
                                step.records)
                acc = per.setdefault(t.name, {"records": [], "duration": 0.0, "memory": []})
                acc["records"] += step.records
                acc["duration"] += step.duration
                acc["memory"].append(step.memory.get("memory_gib_peak"))
                done += 1
                progress.update(done, force=True)
        if cpu_requests:
            cpu = cpu_per_request(targets, workload, concurrency, cpu_requests, out, idle_s,
                                  profile)
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
    if fast_paths:
        compare(report, rows[FAST], rows["vllm-serve"], FAST, "bare vllm serve")
    if direct_streaming:
        compare(report, rows[DIRECT], rows["vllm-serve"], DIRECT, "bare vllm serve")
    if cpu_requests:
        cpu_report(report, cpu, cpu_requests)
    if profile:
        profile_report(report, out / "profiles")
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


def cpu_per_request(targets: list, workload: Workload, concurrency: int, requests: int,
                    out: Path, idle_s: float,
                    profile: bool = False) -> dict[tuple[str, str], CpuReading]:
    """(target, "text" | "image") -> its CPU reading over ``requests`` requests."""
    kinds = {"text": workload.model_copy(update={"image_fraction": 0.0}),
             "image": workload.model_copy(update={"image_fraction": 1.0, "images_per_request": 1,
                                                  "image_size": IMAGE_SIZE})}
    print(f"overhead: CPU per request, {requests} text and {requests} image requests per target "
          f"(idle windows of {idle_s:g} s before and after each)", flush=True)
    readings = {}
    for t in targets:
        meter = CpuMeter(t.stack_pids or t.engine_pids, idle_s=idle_s)
        for kind, w in kinds.items():
            with (profiled(t.stack_pids, out / "profiles", f"{t.name}-{kind}")
                  if profile and t.name == "stack" else contextlib.nullcontext()):
                reading, _ = meter.measure(lambda: run_step(
                    t, w, concurrency=concurrency, num_requests=requests, out_dir=out / "steps",
                    tag=f"cpu-{kind}", index_offset=10**5, scrape=False))
            readings[(t.name, kind)] = reading
            print(f"  {t.name} {kind}: serving path {reading.serving_path_ms(requests):.1f} ms CPU "
                  "per request", flush=True)
    return readings


# The process groups a request passes through before the engine core, in any target.
REQUEST_PATH = frozenset({"HTTP proxy", "HAProxy", "ingress replica", "ingress router",
                          "engine replica (Python)", "API server (vllm serve)"})


def cpu_report(report: Report, readings: dict[tuple[str, str], CpuReading],
               requests: int) -> None:
    """The CPU table (groups x target/kind, ms per request) and the serving-path target."""
    cols = [f"{name} {kind}" for name, kind in readings]
    per = {col: readings[key].per_request_ms(requests) for col, key in zip(cols, readings)}
    rows = []
    for g in GROUPS:
        # A process's CPU counters tick every 10 ms: in a short block a light process (HAProxy)
        # may read 0. The groups a request passes through keep their row whenever a target
        # has them, so a row says which processes were found; the others show when they cost.
        if any(g in per[c] and (per[c][g] >= 0.05 or g in REQUEST_PATH) for c in cols):
            rows.append({"group": g, **{c: per[c].get(g) for c in cols}})
    rows.append({"group": "serving path (all but engine core, workers)",
                 **{c: readings[k].serving_path_ms(requests) for c, k in zip(cols, readings)}})
    rows.append({"group": "engine core + workers", **{
        c: sum(v for g, v in per[c].items() if g in ENGINE_GROUPS) for c in cols}})
    report.data["cpu_per_request_ms"] = rows
    report.section("CPU per request (ms)", f"Net CPU milliseconds per request by process group "
                   f"({requests} requests per cell; each process's user+system time read before "
                   "and after, the mean idle rate of a window before and one after "
                   "subtracted). Image requests carry one "
                   f"{IMAGE_SIZE[0]}x{IMAGE_SIZE[1]} JPEG.", rows,
                   [("group", "process group")] + [(c, c) for c in cols])
    for kind, goal in MAX_SERVING_CPU_RATIO.items():
        stack = readings.get(("stack", kind))
        bare = readings.get(("vllm-serve", kind))
        if stack is None or bare is None:
            continue
        api = bare.per_request_ms(requests).get(API_SERVER)
        mine = stack.serving_path_ms(requests)
        ratio = mine / api if api else None
        report.target(f"stack serving-path CPU / vllm serve API server CPU, per {kind} request",
                      ratio, f"<= {goal:g}", None if ratio is None else ratio <= goal,
                      f"{mine:.1f} vs {api or 0:.1f} ms CPU per request")


def profile_report(report: Report, folder: Path) -> None:
    """Which code the profiled processes ran: shares of samples per library."""
    rows = []
    for raw in sorted(folder.glob("*.txt")):
        total, _, libs = shares(raw)
        if total:
            rows.append({"process": raw.stem, "samples": total,
                         **{lib: round(100 * libs[lib] / total, 1)
                            for lib in (*LIBRARIES, "other")}})
    report.data["profiles"] = rows
    report.section("Profiles (py-spy, % of samples)", "Samples of threads holding the GIL in the "
                   "stack's engine replica (the API and the engine's Python side) during its "
                   "CPU blocks, each counted for the library of its innermost frame outside the "
                   "standard library. The top functions are in "
                   f"`{folder.name}/*-top.md`, the raw stacks in `{folder.name}/*.txt`.", rows,
                   [("process", "process"), ("samples", "samples")]
                   + [(lib, lib) for lib in (*LIBRARIES, "other")])
