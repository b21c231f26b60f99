"""Scenario ``affinity``: requests that send an image again, routed by Ray Serve's default
(HAProxy's least-connections choice) and by the image-affinity router
(``deployment.routing.image_affinity``), side by side on the same replicas.

One stack per routing policy, deployed one after the other from the same config but for
``deployment.routing``. On each, one step per repeat ratio (the share of image requests whose
image an earlier request sent, ``Workload.image_repeat_fraction``), each with its own images: TTFT
(``vllm bench serve``'s key names), engine-side CPU per request (net of idle,
``loadtest.cpu_usage``: the engine replica's Python side, where the API decodes images and vLLM's
processor turns them into patches, plus the engine core and workers, where the vision encoder
and the prefill run), and three hit ratios read from the deployment's metrics before and after
the step: the router's own (hits among requests with images), vLLM's multimodal processor cache
(``vllm:mm_cache_hits`` / ``queries``) and its prefix cache (hit tokens / queried tokens).
"""

from __future__ import annotations

import contextlib
import copy
import time
from contextlib import AbstractContextManager
from pathlib import Path

from ..cpu_usage import ENGINE_GROUPS, CpuMeter
from ..memory import scrape
from ..metrics import summarize
from ..report import Report, plot, step_result
from ..runner import WARMUP_OFFSET, Target, run_step
from ..workload import Workload, replayed_hit_ratio

POLICIES = ("default", "affinity")
# Ray's metrics reach its agent every second (its default is 10 s), so the counters read after
# a step settle within seconds (``settled_counters``); the same for both stacks.
STACK_ENV = {"RAY_metrics_report_interval_ms": "1000"}
REPLICA_GROUP = "engine replica (Python)"  # loadtest.cpu_usage's name for it
# Ray's metrics agent exports vLLM's counters with a ray_ prefix and ":" as "_".
COUNTERS = {
    "router_hit": ('ray_qwen_vl_router_affinity_total', {"outcome": "hit"}),
    "router_new": ('ray_qwen_vl_router_affinity_total', {"outcome": "new"}),
    "router_busy": ('ray_qwen_vl_router_affinity_total', {"outcome": "busy"}),
    "router_all": ('ray_qwen_vl_router_affinity_total', {}),
    "mm_hits": ("ray_vllm_mm_cache_hits_total", {}),
    "mm_queries": ("ray_vllm_mm_cache_queries_total", {}),
    "prefix_hits": ("ray_vllm_prefix_cache_hits_total", {}),
    "prefix_queries": ("ray_vllm_prefix_cache_queries_total", {}),
}
COLUMNS = [
    ("policy", "routing"), ("repeat", "repeat ratio"), ("requests", "requests"),
    ("failed", "failed"), ("median_ttft_ms", "TTFT p50 ms"), ("p99_ttft_ms", "TTFT p99 ms"),
    ("output_throughput", "output tokens/s"), ("replica_cpu_ms", "replica (Python) CPU ms/request"),
    ("core_cpu_ms", "engine core CPU ms/request"), ("engine_cpu_ms", "engine-side CPU ms/request"),
    ("router_hit_ratio", "router hit ratio"), ("mm_cache_hit_ratio", "mm cache hit ratio"),
    ("prefix_cache_hit_ratio", "prefix cache hit ratio"),
    ("replayed_hit_ratio", "replayed hit ratio"),
]


def counters(urls: list[str]) -> dict[str, float]:
    """COUNTERS summed over every series (with the given labels) of every metrics endpoint."""
    from prometheus_client.parser import text_string_to_metric_families

    samples = []
    for url in urls:
        try:
            text = scrape(url, timeout=30)
        except OSError:
            continue
        samples += [s for family in text_string_to_metric_families(text) for s in family.samples]
    return {key: sum(s.value for s in samples if s.name == name
                     and all(s.labels.get(k) == v for k, v in want.items()))
            for key, (name, want) in COUNTERS.items()}


def settled_counters(urls: list[str], quiet_s: float = 4, limit_s: float = 60
                     ) -> dict[str, float]:
    """COUNTERS once they have stopped changing for ``quiet_s``: Ray's metrics agent takes a
    worker's counters every ``STACK_ENV`` interval, so a step's last requests show up late."""
    last, changed = counters(urls), time.monotonic()
    deadline = changed + limit_s
    while time.monotonic() - changed < quiet_s and time.monotonic() < deadline:
        time.sleep(2)
        now = counters(urls)
        if now != last:
            last, changed = now, time.monotonic()
    return last


def ratio(a: float, b: float) -> float | None:
    return a / b if b > 0 else None


def measure(t: Target, policy: str, repeats: list[float], workload: Workload, concurrency: int,
            requests: int, out: Path, idle_s: float, replicas: int) -> list[dict]:
    """One row per repeat ratio on the deployment ``t``; beside the measured hit ratios, what
    routing alone reaches for the step's own requests (``replayed_hit_ratio``: unbounded
    caches, a random replica or the image's last one)."""
    meter = CpuMeter(t.stack_pids or t.engine_pids, idle_s=idle_s)
    urls = [t.metrics_url] if t.metrics_url else []
    rows = []
    for i, repeat in enumerate(repeats):
        w = workload.model_copy(update={"image_repeat_fraction": repeat, "seed": 100 + i})
        before = settled_counters(urls)
        reading, step = meter.measure(lambda: run_step(
            t, w, concurrency=concurrency, num_requests=requests, out_dir=out / "steps",
            tag=f"{policy}-r{repeat:g}", progress_every=15, scrape=False))
        after = settled_counters(urls)
        d = {k: after[k] - before.get(k, 0.0) for k in after}
        s = summarize(step.records, step.duration)
        core_ms = 1000 * sum(v for g, v in reading.net.items() if g in ENGINE_GROUPS)
        replica_ms = 1000 * reading.net.get(REPLICA_GROUP, 0.0)
        row = {"policy": policy, "repeat": repeat, "requests": requests, "failed": s["failed"],
               "median_ttft_ms": s["median_ttft_ms"], "p99_ttft_ms": s["p99_ttft_ms"],
               "output_throughput": s["output_throughput"],
               "replica_cpu_ms": replica_ms / requests, "core_cpu_ms": core_ms / requests,
               "engine_cpu_ms": (replica_ms + core_ms) / requests,
               "router_hit_ratio": ratio(d["router_hit"], d["router_all"]),
               "mm_cache_hit_ratio": ratio(d["mm_hits"], d["mm_queries"]),
               "prefix_cache_hit_ratio": ratio(d["prefix_hits"], d["prefix_queries"]),
               "replayed_hit_ratio": replayed_hit_ratio(w, requests, replicas,
                                                        sticky=policy == "affinity"),
               "counters": d, "step": step, "workload": w}
        mm = row["mm_cache_hit_ratio"]
        print(f"  {policy}, repeat {repeat:.0%}: TTFT p50 {row['median_ttft_ms']:.0f} ms, "
              f"engine-side CPU {row['engine_cpu_ms']:.0f} ms/request, mm cache hit ratio "
              + ("-" if mm is None else f"{mm:.2f}"), flush=True)
        rows.append(row)
    return rows


def policy_configs(data: dict, replicas: int) -> dict[str, dict]:
    """The scenario's config per routing policy: ``data`` on ``replicas`` replicas, routed by
    Ray Serve's default or by the image-affinity router."""
    out = {}
    for policy in POLICIES:
        d = copy.deepcopy(data)
        dep = d.setdefault("deployment", {})
        dep["replicas"] = replicas
        dep.pop("autoscaling", None)
        dep.setdefault("routing", {})["image_affinity"] = policy == "affinity"
        out[policy] = d
    return out


def run(*, deployments: dict[str, AbstractContextManager[Target]], repeats: list[float],
        workload: Workload, concurrency: int, requests: int, out: Path, title: str,
        settings: dict, idle_s: float, replicas: int) -> Report:
    """``deployments``: policy -> the stack that routes by it (deployed in turn), each with
    ``replicas`` engine replicas."""
    report = Report("affinity", out, {**settings, "repeats": repeats, "concurrency": concurrency,
                                      "requests_per_step": requests})
    print(f"affinity: {workload.describe()}, concurrency {concurrency}, {requests} requests per "
          f"step, repeat ratios {repeats}, routing {list(deployments)}", flush=True)
    rows: list[dict] = []
    for policy, deployment in deployments.items():
        with contextlib.ExitStack() as up:
            t = up.enter_context(deployment)
            # A few rounds of the load first (images of their own): the first requests of a
            # fresh engine are slow, and would count against whichever step came first.
            run_step(t, workload.model_copy(update={"seed": 99}), concurrency=concurrency,
                     num_requests=2 * concurrency, out_dir=out / "steps", tag=f"{policy}-warmup",
                     index_offset=WARMUP_OFFSET, scrape=False)
            rows += measure(t, policy, repeats, workload, concurrency, requests, out, idle_s,
                            replicas)
    for row in rows:
        step, w = row.pop("step"), row.pop("workload")
        report.add_step(step_result(f"{row['policy']}-r{row['repeat']:g}", row["policy"],
                                    concurrency, step.records, step.duration, step.memory,
                                    w.model_dump()), step.records)
        report.data["table"].append(row)
    judge(report, rows)
    repeats_seen = sorted({r["repeat"] for r in rows})
    series = {policy: [next((r["engine_cpu_ms"] for r in rows if r["policy"] == policy
                             and r["repeat"] == x), float("nan")) for x in repeats_seen]
              for policy in deployments}
    plots = [plot(out / "affinity.png", "Engine-side CPU per request by routing",
                  [f"{x:.0%}" for x in repeats_seen], series, "repeat ratio", "CPU ms/request",
                  kind="bar")]
    report.write(COLUMNS, title, plots)
    return report


def judge(report: Report, rows: list[dict]) -> None:
    """The issue's targets, as ratios of the two policies measured in the same run."""
    by = {(r["policy"], r["repeat"]): r for r in rows}
    for repeat in sorted({r["repeat"] for r in rows}):
        base, aff = by.get(("default", repeat)), by.get(("affinity", repeat))
        if base is None or aff is None:
            continue
        cpu = ratio(aff["engine_cpu_ms"], base["engine_cpu_ms"])
        ttft = ratio(aff["median_ttft_ms"], base["median_ttft_ms"])
        if repeat >= 0.9:
            report.target(f"engine-side CPU per request, affinity / default, {repeat:.0%} repeats",
                          cpu, "<= 0.6", cpu is not None and cpu <= 0.6,
                          f"{aff['engine_cpu_ms']:.1f} vs {base['engine_cpu_ms']:.1f} ms")
            report.target(f"TTFT p50, affinity / default, {repeat:.0%} repeats", ttft, "<= 0.7",
                          ttft is not None and ttft <= 0.7,
                          f"{aff['median_ttft_ms']:.0f} vs {base['median_ttft_ms']:.0f} ms")
        if repeat == 0:
            tps = ratio(aff["output_throughput"], base["output_throughput"])
            report.target("output tokens/s, affinity / default, no repeats", tps, ">= 0.95",
                          tps is not None and tps >= 0.95,
                          f"{aff['output_throughput']:.1f} vs {base['output_throughput']:.1f}")
            report.target("TTFT p50, affinity / default, no repeats", ttft, "<= 1.05",
                          ttft is not None and ttft <= 1.05,
                          f"{aff['median_ttft_ms']:.0f} vs {base['median_ttft_ms']:.0f} ms")
        hit, mm = aff["router_hit_ratio"], aff["mm_cache_hit_ratio"]
        if hit is not None and mm is not None:
            gap = abs(hit - mm)
            report.target(f"router hit ratio vs mm cache hit ratio, {repeat:.0%} repeats "
                          "(points)", 100 * gap, "<= 5", gap <= 0.05,
                          f"router {hit:.3f}, vLLM's multimodal cache {mm:.3f}")
