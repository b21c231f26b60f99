"""Scenario ``ceiling``: how many requests per second the serving path sustains in front of the
engine (HAProxy, or Ray's HTTP proxy, and the engine replica's Python side, which serves the API).

Short text chats with ``max_tokens: 1`` (the engine's work per request is as small as it gets),
at rising concurrency until requests per second stop growing (two levels in a row under 5% more
than the best so far) or the levels run out. At each level: requests per second, TTFT p50, and
each process group's CPU use in cores (``loadtest.cpu_usage``): the busiest serving-path group
near one core per process is the one that saturated; the engine's columns and the total show
whether the engine, or the whole machine, was the limit instead. Before the load, one request
over ``limits.max_n`` checks that the front door still answers (400, OpenAI error JSON naming
``n``), which matters when a Ray fast path changes what serves HTTP.

With a reference (``--vllm-serve``), bare ``vllm serve`` from the same config is measured the
same way after the stack, on the same cores (a stack the scenario deployed is stopped by then),
and the report sets the stack's ceiling against its API server's: the stack's serving path
should sustain at least as many requests per second.
"""

from __future__ import annotations

import contextlib
import json
import os
import time
import urllib.error
import urllib.request
from collections import Counter
from concurrent.futures import ThreadPoolExecutor
from contextlib import AbstractContextManager
from pathlib import Path

from ..cpu_usage import CpuMeter, CpuReading, read_counters
from ..metrics import summarize
from ..report import Report, plot, step_result
from ..runner import StepResult, Target, run_step, warm_up
from ..workload import Workload

COLUMNS = [
    ("target", "target"), ("concurrency", "concurrency"), ("requests", "requests"),
    ("failed", "failed"),
    ("request_throughput", "requests/s"), ("median_ttft_ms", "TTFT p50 ms"),
    ("serving_cpu_ms", "serving-path CPU ms/request"), ("proxy_cores", "proxy cores"),
    ("engine_replica_cores", "engine replica (Python) cores"),
    ("api_server_cores", "API server (vllm serve) cores"),
    ("engine_core_cores", "engine core cores"), ("workers_cores", "workers cores"),
    ("all_cores", "all processes cores"), ("busiest", "busiest serving process"),
]
GROWTH = 1.05
FLAT_LEVELS = 2
REFERENCE = "vllm-serve"


def front_door_answers(t: Target, max_n: int) -> tuple[bool, str]:
    """One request with n over the limit: (refused as the front door refuses, what came back)."""
    body = json.dumps({"model": t.model, "max_tokens": 1, "n": max_n + 1, "messages": [
        {"role": "user", "content": "hi"}]}).encode()
    headers = {"Content-Type": "application/json",
               **({"Authorization": f"Bearer {t.api_key}"} if t.api_key else {})}
    req = urllib.request.Request(t.base_url + "/v1/chat/completions", body, headers)
    try:
        with urllib.request.urlopen(req, timeout=60) as r:
            return False, f"{r.status}: accepted"
    except urllib.error.HTTPError as err:
        text = err.read().decode(errors="replace")
        try:
            param = json.loads(text)["error"]["param"]
        except (ValueError, KeyError, TypeError):
            param = None
        return err.code == 400 and param == "n", f"{err.code}: {text[:200]}"


def http_request_routes(t: Target, wait_s: float = 45) -> list[str]:
    """The ``route`` labels of Ray's HTTP request counter on the deployment's metrics port
    (which the dashboard's request panels select on), once it is exported."""
    import re

    deadline = time.monotonic() + wait_s
    while True:
        try:
            with urllib.request.urlopen(t.metrics_url, timeout=10) as r:
                text = r.read().decode()
        except OSError:
            text = ""
        routes = sorted(set(re.findall(
            r'^ray_serve_num_http_requests_total\{[^}]*\broute="([^"]*)"', text, re.M)))
        if routes or time.monotonic() > deadline:
            return routes
        time.sleep(3)


def measure_levels(t: Target, workload: Workload, levels: list[int], requests_per_level: int,
                   out: Path, idle_s: float) -> list[tuple[StepResult, dict]]:
    """(step, row) per concurrency level until requests/s stop growing, the row with CPU by
    process group (every process of ``t``)."""
    meter = CpuMeter(t.stack_pids or t.engine_pids, idle_s=idle_s)
    rows, best, flat = [], 0.0, 0
    for c in levels:
        n = max(requests_per_level, 4 * c)
        reading, step = meter.measure(lambda: run_step(
            t, workload, concurrency=c, num_requests=n, out_dir=out / "steps",
            tag=f"{t.name}-c{c}", progress_every=15, scrape=False))
        row = _row(t, c, n, step, reading)
        rows.append((step, row))
        print(f"  {t.name}, concurrency {c}: {row['request_throughput']:.1f} requests/s; "
              f"busiest serving process: {row['busiest']}", flush=True)
        if row["request_throughput"] > best * GROWTH:
            best, flat = max(best, row["request_throughput"]), 0
        else:
            best, flat = max(best, row["request_throughput"]), flat + 1
            if flat >= FLAT_LEVELS:
                break
    return rows


def _row(t: Target, c: int, n: int, step: StepResult, reading: CpuReading) -> dict:
    """A level's figures. Cores are net CPU (the idle rate taken off) over the span the
    requests were in flight: the block also holds the load generator's start-up, when the
    deployment idles."""
    s = summarize(step.records, step.duration)
    span = step.duration if step.duration > 0 else reading.seconds
    cores = reading.cores(span)
    group, busy = reading.busiest(span)
    return {"target": t.name, "concurrency": c, "requests": n, "failed": s["failed"],
            "request_throughput": s["request_throughput"],
            "median_ttft_ms": s["median_ttft_ms"],
            "serving_cpu_ms": reading.serving_path_ms(n),
            "proxy_cores": cores.get("HTTP proxy", 0.0) + cores.get("HAProxy", 0.0),
            "engine_replica_cores": cores.get("engine replica (Python)", 0.0),
            "api_server_cores": cores.get("API server (vllm serve)", 0.0),
            "engine_core_cores": cores.get("engine core", 0.0),
            "workers_cores": cores.get("workers", 0.0),
            "all_cores": sum(cores.values()),
            "busiest": f"{group} ({busy:.2f} cores)", "busiest_cores": busy}


def run(*, data: dict, deployment: AbstractContextManager[Target], levels: list[int],
        requests_per_level: int, out: Path, title: str, settings: dict,
        idle_s: float, reference: AbstractContextManager[Target] | None = None) -> Report:
    """``data``: the config the stack serves; ``deployment``: the stack, as ``data`` deploys
    it or one already running; ``reference``: bare ``vllm serve`` from the same config, started
    once the stack's levels are measured and measured after them (a stack this run deployed is
    stopped by then)."""
    replicas = (data.get("deployment") or {}).get("replicas", 1)
    report = Report("ceiling", out, {**settings, "levels": levels, "replicas": replicas,
                                     "requests_per_level": requests_per_level,
                                     "reference": REFERENCE if reference else None})
    workload = Workload(endpoint="chat", input_tokens=16, output_tokens=1)
    print(f"ceiling: {workload.describe()}, {replicas} replica(s), concurrency "
          f"{levels} until requests/s stop growing"
          + (f"; then {REFERENCE} from the same config" if reference else ""), flush=True)
    max_n = (data.get("limits") or {}).get("max_n", 4)
    with contextlib.ExitStack() as refs:
        starting = None
        with contextlib.ExitStack() as up:
            t = up.enter_context(deployment)
            ok, answer = front_door_answers(t, max_n)
            report.target("front door refuses n over limits.max_n (400, param n)", None,
                          "400 with param n", ok, answer)
            warm_up(t, workload, output_tokens=1, out_dir=out / "steps")
            report.data["processes"] = dict(Counter(
                g for g, _ in read_counters(t.stack_pids()).values()))
            measured = measure_levels(t, workload, levels, requests_per_level, out, idle_s)
            if reference is not None:  # it starts while the stack is read and stopped
                starting = refs.enter_context(ThreadPoolExecutor(1)).submit(reference.__enter__)
                refs.callback(lambda: starting.exception() is None
                              and reference.__exit__(None, None, None))
            report.data["http_request_routes"] = http_request_routes(t)
        if starting is not None:
            ref = starting.result()
            warm_up(ref, workload, output_tokens=1, out_dir=out / "steps")
            measured += measure_levels(ref, workload, levels, requests_per_level, out, idle_s)
    for step, row in measured:
        report.add_step(step_result(f"{row['target']}-c{row['concurrency']}", row["target"],
                                    row["concurrency"], step.records, step.duration,
                                    step.memory, workload.model_dump()), step.records)
        report.data["table"].append(row)
    rows = [r for r in report.data["table"] if r["target"] != REFERENCE]
    top = max(rows, key=lambda r: r["request_throughput"])
    cpus = os.cpu_count() or 1
    report.target(f"ceiling, {replicas} replica(s) (requests/s)",
                  top["request_throughput"], "(informational)", None,
                  f"at concurrency {top['concurrency']}; busiest serving process "
                  f"{top['busiest']}; engine core and workers "
                  f"{top['engine_core_cores'] + top['workers_cores']:.2f} cores; all processes "
                  f"{top['all_cores']:.2f} of the machine's {cpus} cores")
    # Where the machine ran out first (a small one, with the load generator on it), what the
    # busiest serving process would sustain at one full core: the figure for a bigger node.
    if top["busiest_cores"] > 0:
        report.target("projected: busiest serving process at one core (requests/s)",
                      top["request_throughput"] / top["busiest_cores"], "(informational)", None,
                      f"{top['busiest']} at {top['request_throughput']:.1f} requests/s, scaled "
                      "to one core")
    ref_rows = [r for r in report.data["table"] if r["target"] == REFERENCE]
    if ref_rows:
        ref_top = max(ref_rows, key=lambda r: r["request_throughput"])
        ratio = top["request_throughput"] / ref_top["request_throughput"]
        report.target(f"stack ceiling / {REFERENCE} API server ceiling (requests/s)", ratio,
                      ">= 1", ratio >= 1.0,
                      f"{top['request_throughput']:.1f} vs {ref_top['request_throughput']:.1f} "
                      f"requests/s (concurrency {top['concurrency']} and "
                      f"{ref_top['concurrency']}); busiest serving process {top['busiest']} vs "
                      f"{ref_top['busiest']}")
    xs = sorted({r["concurrency"] for r in report.data["table"]})
    series = {}  # requests/s per target at each level it measured (a gap where it stopped)
    for r in report.data["table"]:
        ys = series.setdefault(r["target"], [float("nan")] * len(xs))
        ys[xs.index(r["concurrency"])] = r["request_throughput"]
    plots = [plot(out / "ceiling.png", "Requests/s by concurrency (max_tokens 1)", xs, series,
                  "concurrency", "requests/s", logx=True)]
    report.write(COLUMNS, title, plots)
    return report
