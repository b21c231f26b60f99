"""Scenario ``calibrate``: sweep one replica to saturation with the configured workload, derive
the production settings from it (``loadtest.calibration``), write them as a config overlay and
Helm values (``loadtest.overlay``), then verify: deploy the calibrated config and send the
workload at the rate it claims one replica holds, reporting the share of requests within the SLO.

The report also sets the measured knee beside ``qwen-vl plan``'s prediction for the same
workload (plan, measured, ratio) and writes every step in GuideLLM's key names
(``guidellm.json``) besides ``vllm bench serve``'s (``results.json``).
"""

from __future__ import annotations

import copy
import json
from contextlib import AbstractContextManager
from pathlib import Path
from typing import Callable

from .. import guidellm_keys, overlay
from ..calibration import Calibration, CalibrationError, calibrate
from ..metrics import within_slo
from ..plan_check import comparison, comparison_table
from ..report import Report, plot, step_result
from ..runner import Target, run_step, warm_up
from ..workload import Workload
from . import sweep

COLUMNS = [("tag", "step"), *sweep.COLUMNS[:-1], ("rate", "sent req/s"),
           ("slo_attainment", "within SLO"), sweep.COLUMNS[-1]]
ATTAINMENT_GOAL = 0.99  # the SLO is on p99: 99% of requests within it


def sweep_config(data: dict, max_concurrency: int) -> dict:
    """The swept deployment: one replica (no autoscaling) that admits every level at its
    engine, so the sweep finds the engine's own knee rather than the configured queue's."""
    out = copy.deepcopy(data)
    d = out.setdefault("deployment", {})
    d.pop("autoscaling", None)
    d["replicas"] = 1
    d["max_ongoing_requests"] = max(d.get("max_ongoing_requests", 32), max_concurrency)
    return out


def verify_config(calibrated: dict) -> dict:
    """The calibrated config on one replica: the rate it is verified at is one replica's."""
    out = copy.deepcopy(calibrated)
    out["deployment"].pop("autoscaling", None)
    out["deployment"]["replicas"] = 1
    return out


def attainment(records, slo_ttft_ms: float, slo_tpot_ms: float) -> float:
    """The share of all requests sent that succeeded within both SLOs."""
    slo = {"ttft": slo_ttft_ms, "tpot": slo_tpot_ms}
    good = sum(within_slo(r, slo) for r in records)
    return good / len(records) if records else 0.0


def knee_row(plan: dict | None, cal: Calibration) -> dict:
    planned = plan["load"]["fit_concurrency"] if plan else None
    measured = cal.knee["concurrency"] if cal.knee else None
    limit = plan["load"]["fit_limited_by"] if plan else "-"
    return {"what": f"knee: concurrency (plan: what the engine runs at once, {limit}; measured: "
                    "the best level before one gained under 10% output tokens/s)",
            "planned": planned, "measured": measured,
            "ratio": measured / planned if measured and planned else None}


def run(*, data: dict, deployment: AbstractContextManager[Target],
        verify: Callable[[dict], AbstractContextManager[Target]] | None, workload: Workload,
        max_concurrency: int, min_requests: int, slo_ttft_ms: float, slo_tpot_ms: float,
        request_rate: float | None, min_request_rate: float | None, verify_requests: int,
        out: Path, title: str, settings: dict, capacity_plan: dict | None,
        most_replicas: int) -> Report:
    """``data``: the base config the overlay applies to; ``deployment``: the swept replica;
    ``verify``: deploys a config for the verification (None: skipped, with a note)."""
    report = Report("calibrate", out, {
        **settings, "workload": workload.model_dump(), "max_concurrency": max_concurrency,
        "min_requests": min_requests, "slo_ttft_ms": slo_ttft_ms, "slo_tpot_ms": slo_tpot_ms,
        "request_rate": request_rate, "min_request_rate": min_request_rate,
        "verify_requests": verify_requests})
    print(f"calibrate: sweep one replica with {workload.describe()}, concurrency "
          f"{sweep.levels(max_concurrency)}; SLO TTFT p99 <= {slo_ttft_ms:g} ms, TPOT p99 <= "
          f"{slo_tpot_ms:g} ms", flush=True)
    with deployment as target:
        kv_measured = sweep.measure(target, workload, report, max_concurrency=max_concurrency,
                                    min_requests=min_requests, slo_ttft_ms=slo_ttft_ms,
                                    slo_tpot_ms=slo_tpot_ms, out=out)
    table = list(report.data["table"])  # the sweep's levels (the verification comes after)
    try:
        cal = calibrate(table, slo_ttft_ms=slo_ttft_ms, slo_tpot_ms=slo_tpot_ms,
                        request_rate=request_rate, min_request_rate=min_request_rate,
                        most_replicas=most_replicas)
    except CalibrationError as err:
        report.data["notes"].append(f"nothing calibrated: {err}")
        report.write(COLUMNS, title)
        raise RuntimeError(f"nothing calibrated: {err}") from None
    report.data["notes"] += cal.notes
    report.data["calibration"] = {
        "slo_level": cal.slo_level["concurrency"],
        "knee": cal.knee["concurrency"] if cal.knee else None,
        "operating_level": cal.operating["concurrency"],
        "per_replica_requests_per_s": cal.per_replica_rps,
        "settings": [{"key": ".".join(s.path), "value": s.value, "why": s.why}
                     for s in cal.settings]}
    header = [f"Calibrated by qwen-vl-loadtest calibrate on {report.data['date']} "
              f"({report.data['machine']}).",
              f"Workload: {workload.describe()}. SLO: TTFT p99 <= {slo_ttft_ms:g} ms, "
              f"TPOT p99 <= {slo_tpot_ms:g} ms. The sweep: results.json beside this file."]
    try:
        paths = overlay.write(out, data, cal, header)
    except ValueError as err:  # the calibrated config fails the deploy step's checks
        report.data["notes"].append(str(err))
        report.write(COLUMNS, title)
        raise RuntimeError(str(err)) from None
    report.data["files"] = {k: str(v) for k, v in paths.items()}
    report.section("Calibrated settings", f"Written to `{paths['overlay'].name}`, "
                   f"`{paths['values'].name}` (Helm) and `{paths['config'].name}` (the base "
                   "config with the overlay applied).",
                   report.data["calibration"]["settings"],
                   [("key", "key"), ("value", "value"), ("why", "set from")])
    rows = [knee_row(capacity_plan, cal)]
    if capacity_plan is not None:
        rows += comparison(capacity_plan, table, cal.slo_level["concurrency"], kv_measured)
        report.data["plan"] = capacity_plan
    report.data["plan_vs_measured"] = rows
    print("plan vs measured:\n" + comparison_table(rows), flush=True)
    benches = guidellm_keys.levels(report.records, table)
    if verify is None:
        report.skip("verification", "it deploys the calibrated config, which needs a local "
                    "deployment; deploy calibrated-config.yaml and give its URL as --verify-url")
    else:
        with verify(verify_config(overlay.merged(data, cal.overlay()))) as target:
            res = _verify(target, workload, cal, verify_requests, slo_ttft_ms, slo_tpot_ms, out,
                          report)
        benches.append(guidellm_keys.benchmark(
            [r for r in report.records if r.tag == "verify"],
            {"type_": "constant", "rate": cal.per_replica_rps}))
        report.target("SLO attainment at the calibrated rate", res["slo_attainment"],
                      f">= {ATTAINMENT_GOAL:.0%} of requests within TTFT {slo_ttft_ms:g} ms and "
                      f"TPOT {slo_tpot_ms:g} ms", res["slo_attainment"] >= ATTAINMENT_GOAL,
                      f"{res['completed']} of {verify_requests} completed, sent at "
                      f"{cal.per_replica_rps:.3g} requests/s (one replica's rate at "
                      f"concurrency {cal.operating['concurrency']}); TTFT p99 "
                      f"{res['p99_ttft_ms']:.0f} ms, TPOT p99 {res['p99_tpot_ms']:.0f} ms")
    (out / "guidellm.json").write_text(json.dumps({"benchmarks": benches}, indent=1))
    xs = [r["concurrency"] for r in table]
    plots = [plot(out / "throughput.png", "Output tokens/s per concurrency (one replica)", xs,
                  {"output tokens/s": [r["output_throughput"] for r in table]},
                  "concurrent users", "tokens/s", logx=True)]
    report.write(COLUMNS, title, plots)
    return report


def _verify(target: Target, workload: Workload, cal: Calibration, n: int, slo_ttft_ms: float,
            slo_tpot_ms: float, out: Path, report: Report) -> dict:
    """The workload at one replica's calibrated rate, open loop, on the calibrated config."""
    rate = cal.per_replica_rps
    users = int(cal.value("deployment", "max_ongoing_requests")
                + cal.value("deployment", "max_queued_requests")) + 1
    print(f"verify: {n} requests at {rate:.3g} requests/s on the calibrated config (one "
          "replica)", flush=True)
    warm_up(target, workload, output_tokens=min(8, workload.output_tokens),
            out_dir=out / "steps", tag="verify-warmup")
    step = run_step(target, workload, concurrency=min(users, n), num_requests=n,
                    out_dir=out / "steps", tag="verify", index_offset=10**5, rate=rate)
    res = step_result("verify", target.name, cal.operating["concurrency"], step.records,
                      step.duration, step.memory, workload.model_dump(),
                      goodput={"ttft": slo_ttft_ms, "tpot": slo_tpot_ms})
    res["meets_slo"] = sweep.meets_slo(res, slo_ttft_ms, slo_tpot_ms)
    res["rate"] = rate
    res["slo_attainment"] = attainment(step.records, slo_ttft_ms, slo_tpot_ms)
    report.add_step(res, step.records)
    report.data["table"].append(res)
    return res
