"""Every scenario in quick mode, end to end: Locust drives real HTTP, the results folder is
checked for structure and sanity. ``card``, ``baseline`` and ``ceiling`` deploy the stacks they
measure (the deploy path every scenario shares); ``sweep``, ``soak`` and ``overhead`` measure one
running stack (``--run-dir``: its processes found from its run directory), beside which
``overhead`` deploys bare ``vllm serve`` and Ray Serve LLM's app."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest
import yaml
from PIL import Image

from loadtest.metrics import read_records
from tests import utils

ROOT = Path(__file__).resolve().parents[2]
VLLM_KEYS = ("completed", "failed", "duration", "total_input_tokens", "total_output_tokens",
             "request_throughput", "output_throughput", "total_token_throughput",
             "mean_ttft_ms", "median_ttft_ms", "p99_ttft_ms", "mean_tpot_ms", "p99_tpot_ms",
             "mean_itl_ms", "median_e2el_ms", "ttfts", "itls", "latencies", "output_lens")

pytestmark = [pytest.mark.slow, pytest.mark.timeout(1500)]
# The running stack: the default config with the serve module's drain timeout and metrics
# interval, so that one start serves both modules (conftest runs their tests together).
RUNNING = utils.SHARED_STACKS["serve"]
on_running_stack = pytest.mark.shares_stack("serve")


@pytest.fixture
def running(stacks) -> list[str]:
    """The flags that point a scenario at the running stack."""
    stack = stacks.get(*RUNNING)
    return ["--run-dir", stack["env"]["QWEN_VL_RUN_DIR"], "--config", stack["cfg_path"]]


def run_scenario(tmp: Path, *args: str) -> tuple[Path, dict, str]:
    out = tmp / "results"
    r = subprocess.run([sys.executable, "-m", "loadtest", *args, "--quick", "--out", str(out)],
                       capture_output=True, text=True, cwd=ROOT, timeout=1400)
    assert r.returncode == 0, f"{r.stdout[-4000:]}\n{r.stderr[-4000:]}"
    return out, json.loads((out / "results.json").read_text()), r.stdout


def check_folder(out: Path, data: dict, pngs: list[str]) -> None:
    md = (out / "report.md").read_text()
    assert md.startswith("# ") and "Machine: " in md
    lines = md.splitlines()
    head = next(i for i, line in enumerate(lines) if line.startswith("| "))
    assert lines[head + 1].startswith("|---")  # a Markdown table with one row per result
    assert sum(line.startswith("| ") for line in lines[head + 2:head + 2 + len(
        data["table"])]) == len(data["table"])
    assert len((out / "results.csv").read_text().splitlines()) == len(data["table"]) + 1
    for name in pngs:
        raw = (out / name).read_bytes()
        assert raw[:8] == b"\x89PNG\r\n\x1a\n", name
        with Image.open(out / name) as img:
            img.verify()
        assert f"![{Path(name).stem}]({name})" in md
    records = read_records(out / "records.jsonl")
    assert records and all(r.success for r in records)
    assert sum(len(s["ttfts"]) for s in data["steps"]) == len(records)
    for step in data["steps"]:
        for key in VLLM_KEYS:
            assert key in step, key
        assert step["failed"] == 0 and step["completed"] > 0
        assert step["output_throughput"] > 0
        assert step["total_output_tokens"] == sum(step["output_lens"])
        assert step["memory_gib_peak"] > 0


def test_card_quick(tmp_path):
    out, data, stdout = run_scenario(tmp_path, "card", "--variants", "BF16,GPTQ-Int8")
    check_folder(out, data, ["tokens_per_s.png", "memory.png"])
    assert "ETA" in stdout
    rows = data["table"]
    assert [(r["quantization"], r["input_length"]) for r in rows] == [("BF16", 1), ("BF16", 32)]
    for r in rows:
        assert r["prompt_tokens_ok"] and r["output_tokens_ok"]  # exact N in, exact N out
        assert r["tokens_per_s"] > 0 and r["decode_tokens_per_s"] > 0 and r["memory_gib"] > 0
        assert r["hf_tokens_per_s"] > 0 and r["stack_vs_hf"] > 0
    assert rows[0]["card_tokens_per_s"] == 35.29
    assert rows[0]["ratio_tokens_per_s"] == pytest.approx(rows[0]["tokens_per_s"] / 35.29)
    for step in data["steps"]:
        assert all(n == step["workload"]["output_tokens"] for n in step["output_lens"])
        assert all(n == step["workload"]["input_tokens"] for n in step["input_lens"])
    skipped = {s["what"]: s["reason"] for s in data["skipped"]}
    assert "no CPU kernel" in skipped["GPTQ-Int8"]
    target = data["targets"][0]
    assert target["target"].startswith("single-stream decode vs bandwidth limit")
    assert target["measured"] > 0 and "GB/s measured" in target["detail"]
    before, after = data["bandwidth_bytes_per_s"]["BF16"]  # measured around the decode cell
    assert before > 0 and after > 0 and "before and after the decode" in target["detail"]
    assert "| BF16 | float32 | 1 | 16 |" in (out / "report.md").read_text()  # tiny: float32
    assert "(float32)" in target["detail"]


def test_baseline_quick(tmp_path):
    out, data, _ = run_scenario(tmp_path, "baseline")
    check_folder(out, data, ["baseline.png"])
    engines = [(r["engine"].split(" (")[0], r["concurrency"]) for r in data["table"]]
    assert engines == [("HF transformers", 1), ("our stack", 1), ("our stack", 4)]
    hf = data["table"][0]
    assert hf["output_throughput"] > 0 and hf["memory_gib_peak"] > 0
    assert data["table"][2]["vs_hf"] == pytest.approx(
        data["table"][2]["output_throughput"] / hf["output_throughput"])


def test_ceiling_quick_with_fast_paths(tmp_path):
    """HAProxy straight to the engine replica, throughput-optimized Serve: the front door still
    refuses with its OpenAI error, and the levels report requests/s and CPU by process; then
    bare `vllm serve` from the same config, measured the same way, is the reference."""
    out, data, _ = run_scenario(tmp_path, "ceiling", "--fast-paths", "--vllm-serve")
    check_folder(out, data, ["ceiling.png"])
    targets = {t["target"]: t for t in data["targets"]}
    assert targets["front door refuses n over limits.max_n (400, param n)"]["met"] is True
    assert data["processes"]["engine replica (Python)"] == 1  # the API runs there
    assert "ingress replica" not in data["processes"]
    assert data["processes"]["HAProxy"] >= 1  # server.ray_ha_proxy: HAProxy serves HTTP
    rows = [r for r in data["table"] if r["target"] == "stack"]
    assert [r["concurrency"] for r in rows] == [1, 4]
    for r in rows:
        assert r["request_throughput"] > 0 and r["failed"] == 0
        assert r["engine_replica_cores"] > 0 and r["serving_cpu_ms"] > 0
    reference = [r for r in data["table"] if r["target"] == "vllm-serve"]
    assert [r["concurrency"] for r in reference] == [1, 4]
    assert len(data["table"]) == len(rows) + len(reference)
    for r in reference:  # its API server, not ours, serves it
        assert r["request_throughput"] > 0 and r["failed"] == 0
        assert r["api_server_cores"] > 0 and r["engine_replica_cores"] == 0
    versus = targets["stack ceiling / vllm-serve API server ceiling (requests/s)"]
    best = max(r["request_throughput"] for r in rows) / \
        max(r["request_throughput"] for r in reference)
    assert versus["measured"] == pytest.approx(best), versus
    assert versus["met"] is (versus["measured"] >= 1), versus
    assert versus["goal"] == ">= 1"
    assert targets["ceiling, 1 replica(s) (requests/s)"]["measured"] > 0
    assert targets["projected: busiest serving process at one core (requests/s)"]["measured"] > 0
    # Why the rules and the dashboard count requests with the API's own counter: Ray's HTTP
    # request counter, derived from HAProxy's logs, labels the API's paths with the
    # application's prefix, so no /v1/ route appears there.
    routes = data["http_request_routes"]
    assert "/" in routes and not any(r.startswith("/v1/") for r in routes), routes


@on_running_stack
def test_sweep_quick(tmp_path, running):
    out, data, _ = run_scenario(tmp_path, "sweep", *running)
    check_folder(out, data, ["throughput.png", "latency.png"])
    table = data["table"]
    # Quick mode plans levels 1 and 2; a level that saturates is measured and reported too.
    assert [r["concurrency"] for r in table] == [1, 2]
    kinds = {r.kind for r in read_records(out / "records.jsonl")}
    assert kinds == {"text", "image"}  # the mixed workload really sent images
    cap = data["capacity"]
    for r in table:  # each level judged against the SLO from its own measured figures
        assert r["meets_slo"] is (r["failed"] == 0 and r["p99_ttft_ms"] <= cap["slo_ttft_ms"]
                                  and r["p99_tpot_ms"] <= cap["slo_tpot_ms"]), r
    assert cap["max_concurrency_meeting_slo"] == max(
        [r["concurrency"] for r in table if r["meets_slo"]], default=0)
    peak = max(table, key=lambda r: r["output_throughput"])
    assert cap["peak_output_throughput"] == peak["output_throughput"] > 0
    assert cap["peak_at_concurrency"] == peak["concurrency"]
    assert all(r["request_goodput"] is not None for r in data["table"])
    # qwen-vl plan's prediction beside the measurement; the KV cache size is exact.
    rows = {r["what"]: r for r in data["plan_vs_measured"]}
    kv = rows["KV cache tokens"]
    assert kv["measured"] == kv["planned"] and kv["ratio"] == 1.0, kv
    one = rows["decode tokens/s, one stream (bound)"]
    assert one["measured"] and 0 < one["ratio"] < 1.5, one  # a bound (noise allowed)
    assert "## Plan vs measured" in (out / "report.md").read_text()


@on_running_stack
def test_calibrate_quick(tmp_path, running):
    """The running stack swept, the overlay derived from that sweep's own figures and written
    three ways, the calibrated config deployed and sent its claimed rate."""
    import math

    import helm_python as helm

    from engine.checkpoint_fit import check_checkpoint
    from engine.config import load_config
    from launch.generate.chart import CHART_DIR
    from loadtest.scenarios.calibrate import attainment

    out, data, _ = run_scenario(tmp_path, "calibrate", "--request-rate", "100",
                                "--video-fraction", "0.5", "--video-frames", "4",
                                "--video-size", "112x112", *running)
    check_folder(out, data, ["throughput.png"])
    table = data["table"]
    assert [r["tag"] for r in table] == ["c1", "c2", "verify"]
    levels, verify = table[:2], table[2]
    cal = data["calibration"]
    assert levels[0]["meets_slo"], levels[0]  # the quick SLO (10 s, 500 ms) is loose
    at = levels[1] if levels[1]["meets_slo"] else levels[0]
    assert cal["slo_level"] == at["concurrency"]
    tokens = [r["output_throughput"] for r in levels]
    # the knee: level 1 when level 2 gained under 10% over it, else none (two levels only)
    assert cal["knee"] == (1 if tokens[1] < 1.1 * tokens[0] else None), tokens
    op = next(r for r in levels if r["concurrency"] == min(at["concurrency"],
                                                          cal["knee"] or 2))
    assert cal["operating_level"] == op["concurrency"]
    assert cal["per_replica_requests_per_s"] == op["request_throughput"]
    settings = {s["key"]: s["value"] for s in cal["settings"]}
    assert settings["deployment.autoscaling.target_ongoing_requests"] == op["concurrency"]
    assert settings["deployment.max_ongoing_requests"] == at["concurrency"]
    assert settings["deployment.autoscaling.max_replicas"] == math.ceil(
        100 / op["request_throughput"])
    # the files hold exactly the settings; the merged config passes the deploy step's checks
    def flat(d: dict, pre: str = "") -> dict:
        return {key: value for k, v in d.items() for key, value in (
            flat(v, f"{pre}{k}.").items() if isinstance(v, dict) else [(f"{pre}{k}", v)])}

    assert flat(yaml.safe_load((out / "overlay.yaml").read_text())) == settings
    cfg = load_config(out / "calibrated-config.yaml")
    check_checkpoint(cfg)
    assert cfg.deployment.autoscaling.target_ongoing_requests == op["concurrency"]
    assert cfg.deployment.max_queued_requests == settings["deployment.max_queued_requests"]
    values = yaml.safe_load((out / "values-overlay.yaml").read_text())
    manifests = helm.Chart.load(CHART_DIR).render(values, name="q", namespace="ml",
                                                  is_install=True)
    service = next(o for path, text in manifests.items() if not path.endswith("NOTES.txt")
                   for o in yaml.safe_load_all(text) if o and o["kind"] == "RayService")
    args = yaml.safe_load(service["spec"]["serveConfigV2"])["applications"][0]["args"]
    assert args["deployment"]["max_ongoing_requests"] == \
        settings["deployment.max_ongoing_requests"]
    # the verification: the claimed rate, every request sent, attainment from its own records
    assert verify["rate"] == cal["per_replica_requests_per_s"]
    assert verify["completed"] + verify["failed"] == data["settings"]["verify_requests"] == 4
    # the configured mix, videos included, reached the engine (every record succeeded)
    assert {r.kind for r in read_records(out / "records.jsonl")} == {"text", "image", "video"}
    records = [r for r in read_records(out / "records.jsonl") if r.tag == "verify"]
    assert len(records) == 4
    # an open loop: request i is sent no sooner than i / rate after the first
    starts = sorted(r.start_time for r in records)
    assert starts[-1] - starts[0] >= 3 / verify["rate"] - 0.01, (starts, verify["rate"])
    s = data["settings"]
    assert verify["slo_attainment"] == attainment(records, s["slo_ttft_ms"], s["slo_tpot_ms"])
    target = next(t for t in data["targets"] if t["target"].startswith("SLO attainment"))
    assert target["met"] is (verify["slo_attainment"] >= 0.99)
    knee = next(r for r in data["plan_vs_measured"] if r["what"].startswith("knee"))
    assert knee["planned"] == data["plan"]["load"]["fit_concurrency"]
    benches = json.loads((out / "guidellm.json").read_text())["benchmarks"]
    assert [b["config"]["strategy"].get("streams") for b in benches] == [1, 2, None]
    assert [b["metrics"]["request_totals"]["total"] for b in benches] == \
        [r["completed"] + r["failed"] for r in table]


@on_running_stack
def test_soak_quick(tmp_path, running):
    """The 30-second soak (the default is 10 minutes): no failed request, memory growth bounded."""
    out, data, stdout = run_scenario(tmp_path, "soak", *running)
    check_folder(out, data, ["soak.png"])
    assert sum(r["completed"] for r in data["table"]) > 0
    assert sum(r["failed"] for r in data["table"]) == 0
    assert data["table"][-1]["elapsed_s"] >= 30
    kinds = {r.kind for r in read_records(out / "records.jsonl")}
    assert kinds == {"text", "image"}
    targets = {t["target"]: t for t in data["targets"]}
    assert targets["failed valid requests"]["met"] is True
    mem = data["memory"]
    assert mem["start_gib"] > 0.5 and mem["end_gib"] > 0.5  # the whole stack, not one process
    assert targets["resident memory growth"]["measured"] == round(mem["growth"], 4)
    assert "stack resident memory at start" in stdout and "at the end" in stdout


@on_running_stack
def test_overhead_quick(tmp_path, running, stacks):
    """With the third target: Ray Serve LLM's own app from the same config, between the two."""
    out, data, stdout = run_scenario(tmp_path, "overhead", "--ray-serve-llm", *running)
    check_folder(out, data, ["overhead.png"])
    assert [r["target"] for r in data["table"]] == ["stack", "ray-serve-llm", "vllm-serve"]
    assert {s["target"] for s in data["steps"]} == {"stack", "ray-serve-llm", "vllm-serve"}
    # The rounds read every target's memory but scrape none of them: a scrape is the harness's
    # load on the cores the targets share, heavier on a Ray stack than on `vllm serve`.
    rounds = [s for s in data["steps"] if s["tag"].startswith("round")]
    assert len(rounds) == 3 * data["settings"]["rounds"]
    for step in rounds:
        assert step["memory_gib_peak"] > 0 and step["kv_cache_usage_peak"] is None, step["target"]
    targets = {t["target"]: t for t in data["targets"]}
    goals = ["stack / bare vllm serve output tokens/s", "stack - bare vllm serve TTFT p50 (ms)",
             "stack serving-path CPU / vllm serve API server CPU, per text request",
             "stack serving-path CPU / vllm serve API server CPU, per image request"]
    assert list(targets) == [
        *goals[:2], "ray-serve-llm / bare vllm serve output tokens/s",
        "ray-serve-llm - bare vllm serve TTFT p50 (ms)",
        "stack / ray-serve-llm output tokens/s", "stack - ray-serve-llm TTFT p50 (ms)",
        *goals[2:]]
    # Every goal is a measured number judged against its bound; the figures themselves belong
    # in the benchmark files.
    for name in goals:
        assert isinstance(targets[name]["measured"], float), targets[name]
        assert isinstance(targets[name]["met"], bool), targets[name]
        assert targets[name]["goal"].startswith(("<=", ">=")), targets[name]
    assert targets["stack / ray-serve-llm output tokens/s"]["met"] is None  # informational
    # The reference is Ray's own ingress in front of Ray's own engine deployment.
    ray_log = (out / "deploy" / "ray-serve-llm-serve.log").read_text()
    assert "ray-serve-llm: running on" in ray_log
    assert "deployments: LLMServer:qwen2-vl-tiny, OpenAiIngress" in ray_log, ray_log[-2000:]
    argv = json.loads((out / "deploy" / "vllm-serve-argv.json").read_text())
    assert "--max-model-len" in argv and "--limit-mm-per-prompt" in argv
    for name in ("ray-serve-llm", "vllm-serve"):  # what it deployed, it stopped
        assert f"{name} stopped" in stdout
    # The running stack was measured, not deployed, and it still serves.
    assert "measuring stack: the running stack of" in stdout and "stack stopped" not in stdout
    assert data["settings"]["run_dir"] == running[1]
    assert utils.request(stacks.get(*RUNNING)["base"], "/health")[0] == 200
    # CPU per request by process group, side by side (ms): each target's own processes found.
    cpu = {r["group"]: r for r in data["cpu_per_request_ms"]}
    for group, who in (("engine replica (Python)", "stack"), ("HTTP proxy", "ray-serve-llm"),
                       ("ingress replica", "ray-serve-llm")):
        assert cpu[group][f"{who} text"] > 0 and cpu[group][f"{who} image"] > 0, group
        assert cpu[group]["vllm-serve text"] is None, group  # vllm serve has no such process
    # One hop: HAProxy in front of the stack's engine replica, no ingress replica. (Ray's proxy
    # actor still runs beside HAProxy, which it manages: it serves no request.)
    assert cpu["HAProxy"]["stack text"] is not None and cpu["HAProxy"]["ray-serve-llm text"] is None
    assert cpu["ingress replica"]["stack text"] is None
    assert cpu["API server (vllm serve)"]["vllm-serve text"] > 0
    assert cpu["API server (vllm serve)"]["stack text"] is None
    assert cpu["engine core + workers"]["stack text"] > 0
    assert cpu["engine core + workers"]["vllm-serve text"] > 0
    assert "## CPU per request (ms)" in (out / "report.md").read_text()


def test_affinity_quick(tmp_path):
    """Two stacks of two replicas, Ray Serve's default routing then the image-affinity router,
    each sent a step without repeats and one where nine in ten images were sent before. The
    router sees every image request once; it calls the first request of each image new and
    sends every other one to a replica (hit, or busy when that replica is too loaded), so its
    counts follow from the workload alone; each engine's multimodal cache is asked once per
    image. Speed is the benchmark's, not this test's: the targets are judged, not required."""
    from loadtest.workload import Workload, image_source

    out, data, _ = run_scenario(tmp_path, "affinity")
    check_folder(out, data, ["affinity.png"])
    rows = data["table"]
    assert [(r["policy"], r["repeat"]) for r in rows] == [
        ("default", 0.0), ("default", 0.9), ("affinity", 0.0), ("affinity", 0.9)]
    n = data["settings"]["requests_per_step"]
    for i, r in enumerate(rows):
        c = r["counters"]
        assert r["failed"] == 0 and r["requests"] == n
        assert c["mm_queries"] == n, c  # one image per request, each looked up once
        assert r["engine_cpu_ms"] > 0 and r["core_cpu_ms"] > 0 and r["replica_cpu_ms"] > 0
        w = Workload(image_repeat_fraction=r["repeat"], seed=100 + i % 2)
        distinct = len({image_source(w, k) for k in range(n)})
        # what routing alone reaches: every repeat when sticky, at most that when spread
        if r["policy"] == "affinity":
            assert r["replayed_hit_ratio"] == (n - distinct) / n, r
        else:
            assert r["replayed_hit_ratio"] <= (n - distinct) / n, r
        if r["policy"] == "default":
            assert c["router_all"] == 0 and r["router_hit_ratio"] is None, c
            continue
        assert c["router_all"] == n and c["router_new"] == distinct, (c, distinct)
        assert c["router_hit"] + c["router_busy"] == n - distinct, c
        assert r["router_hit_ratio"] == pytest.approx(c["router_hit"] / n), c
        if r["repeat"] == 0:
            assert c["router_hit"] == 0 and distinct == n
    targets = {t["target"] for t in data["targets"]}
    assert {"engine-side CPU per request, affinity / default, 90% repeats",
            "TTFT p50, affinity / default, 90% repeats",
            "output tokens/s, affinity / default, no repeats"} <= targets, targets
