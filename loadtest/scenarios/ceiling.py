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
"""

from __future__ import annotations

import contextlib
import json
import os
import time
import urllib.error
import urllib.request
from collections import Counter
from contextlib import AbstractContextManager
from pathlib import Path

from ..cpu_usage import CpuMeter, read_counters
from ..metrics import summarize
from ..report import Report, plot, step_result
from ..runner import Target, run_step, warm_up
from ..workload import Workload

COLUMNS = [
    ("concurrency", "concurrency"), ("requests", "requests"), ("failed", "failed"),
    ("request_throughput", "requests/s"), ("median_ttft_ms", "TTFT p50 ms"),
    ("serving_cpu_ms", "serving-path CPU ms/request"), ("proxy_cores", "proxy cores"),
    ("engine_replica_cores", "engine replica (Python) cores"),
    ("engine_core_cores", "engine core cores"), ("workers_cores", "workers cores"),
    ("all_cores", "all processes cores"), ("busiest", "busiest serving process"),
]
GROWTH = 1.05
FLAT_LEVELS = 2


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


def run(*, data: dict, deployment: AbstractContextManager[Target], levels: list[int],
        requests_per_level: int, out: Path, title: str, settings: dict,
        idle_s: float) -> Report:
    """``data``: the config the stack serves; ``deployment``: the stack, as ``data`` deploys
    it or one already running."""
    replicas = (data.get("deployment") or {}).get("replicas", 1)
    report = Report("ceiling", out, {**settings, "levels": levels, "replicas": replicas,
                                     "requests_per_level": requests_per_level})
    workload = Workload(endpoint="chat", input_tokens=16, output_tokens=1)
    print(f"ceiling: {workload.describe()}, {replicas} replica(s), concurrency "
          f"{levels} until requests/s stop growing", flush=True)
    max_n = (data.get("limits") or {}).get("max_n", 4)
    with contextlib.ExitStack() as up:
        t = up.enter_context(deployment)
        ok, answer = front_door_answers(t, max_n)
        report.target("front door refuses n over limits.max_n (400, param n)", None,
                      "400 with param n", ok, answer)
        warm_up(t, workload, output_tokens=1, out_dir=out / "steps")
        report.data["processes"] = dict(Counter(
            g for g, _ in read_counters(t.stack_pids()).values()))
        meter = CpuMeter(t.stack_pids, idle_s=idle_s)
        best, flat = 0.0, 0
        for c in levels:
            n = max(requests_per_level, 4 * c)
            reading, step = meter.measure(lambda: run_step(
                t, workload, concurrency=c, num_requests=n, out_dir=out / "steps",
                tag=f"c{c}", progress_every=15, scrape=False))
            report.add_step(step_result(f"c{c}", t.name, c, step.records, step.duration,
                                        step.memory, workload.model_dump()), step.records)
            s = summarize(step.records, step.duration)
            cores = {g: v / reading.seconds for g, v in reading.spent.items()}
            group, busy = reading.busiest()
            row = {"concurrency": c, "requests": n, "failed": s["failed"],
                   "request_throughput": s["request_throughput"],
                   "median_ttft_ms": s["median_ttft_ms"],
                   "serving_cpu_ms": reading.serving_path_ms(n),
                   "proxy_cores": cores.get("HTTP proxy", 0.0) + cores.get("HAProxy", 0.0),
                   "engine_replica_cores": cores.get("engine replica (Python)", 0.0),
                   "engine_core_cores": cores.get("engine core", 0.0),
                   "workers_cores": cores.get("workers", 0.0),
                   "all_cores": sum(cores.values()),
                   "busiest": f"{group} ({busy:.2f} cores)", "busiest_cores": busy}
            report.data["table"].append(row)
            print(f"  concurrency {c}: {row['request_throughput']:.1f} requests/s; busiest "
                  f"serving process: {row['busiest']}", flush=True)
            if row["request_throughput"] > best * GROWTH:
                best, flat = max(best, row["request_throughput"]), 0
            else:
                best, flat = max(best, row["request_throughput"]), flat + 1
                if flat >= FLAT_LEVELS:
                    break
        report.data["http_request_routes"] = http_request_routes(t)
    rows = report.data["table"]
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
    plots = [plot(out / "ceiling.png", "Requests/s by concurrency (max_tokens 1)",
                  [r["concurrency"] for r in rows],
                  {"requests/s": [r["request_throughput"] for r in rows]},
                  "concurrency", "requests/s", logx=True)]
    report.write(COLUMNS, title, plots)
    return report
