"""Per-key quotas and the monitoring rules against a live stack scraped by a real Prometheus.

One stack for the module: an unnamed key (``default``) and two named ones from environment
variables, team-a with a token and a concurrency quota, team-b with a request quota; a small
capacity (4 running, 8 queued: Ray Serve counts a request as queued while its router picks a
replica, so the quota test's 5 clients need room there; a burst of 32 does not fit). A local Prometheus (Debian's
package, from make install) scrapes Ray's metrics port and the API's ``/metrics`` (with a
key from a credentials file) every second and evaluates the shipped rules every second.
"""

from __future__ import annotations

import json
import re
import threading
import time
import urllib.error
from pathlib import Path

import pytest

from launch.cluster.local_cluster import read_state
from launch.generate.monitoring import (ALERT_NAMES, dashboard, dashboard_queries, metric_names,
                                        rules)
from loadtest.dashboard import render_png
from loadtest.prometheus import LocalPrometheus
from tests.utils import (chat_body, documented_metrics, ensure_prometheus, image_data_part, png,
                         request, stack_metric_names, stream_chunks,
                         stream_events, wait_until)

pytestmark = pytest.mark.slow
KEYS = {"default": "sk-e2e-default-" + "d" * 24, "team-a": "sk-e2e-team-a-" + "a" * 24,
        "team-b": "sk-e2e-team-b-" + "b" * 24}
TPM_A, CONCURRENT_A, RPM_B = 600, 2, 10
# exported name -> vLLM's name, for metrics that appear only from their first event on
LAZY = {"ray_vllm_num_preemptions_total": "vllm:num_preemptions"}
LOAD_S = 15  # well inside one 60-second window: no admitted request leaves it during the test
ERRORS: list[str] = []  # every error body the module's requests got (no secret may be in one)


@pytest.fixture(scope="module")
def live(stacks, tmp_path_factory):
    """The module's stack (through ``stacks``) with a real Prometheus scraping it."""
    ensure_prometheus()
    tmp = tmp_path_factory.mktemp("monitoring")
    (tmp / "api-keys").write_text(KEYS["default"] + "\n")
    (tmp / "scrape-key").write_text(KEYS["default"])
    info = stacks.get(overrides={
        # The image-affinity router on (one replica: every request goes there), so its metric
        # is exported too.
        "deployment": {"max_ongoing_requests": 4, "max_queued_requests": 8,
                       "routing": {"image_affinity": True}},
        "access": {"api_keys_env": None, "api_keys_file": str(tmp / "api-keys"),
                   "metrics": "key",
                   "keys": {"team-a": {"env": "QWEN_VL_TEAM_A_KEY"},
                            "team-b": {"env": "QWEN_VL_TEAM_B_KEY"}},
                   "quotas": {"team-a": {"tokens_per_minute": TPM_A,
                                         "concurrent_requests": CONCURRENT_A},
                              "team-b": {"requests_per_minute": RPM_B}}},
    }, env={"QWEN_VL_TEAM_A_KEY": KEYS["team-a"], "QWEN_VL_TEAM_B_KEY": KEYS["team-b"],
            # Ray's metrics reach the agent every second (default 10 s): the test's waits
            "RAY_metrics_report_interval_ms": "1000"})
    ray_target = info["metrics"].split("//", 1)[1].split("/", 1)[0]
    prom = LocalPrometheus(tmp / "prometheus", [
        LocalPrometheus.job("ray", ray_target),
        # the API's /metrics is the same text behind the key: scraped to prove the key
        # works from a credentials file, stored nowhere (the series would count twice)
        LocalPrometheus.job("api", info["base"].split("//", 1)[1],
                            credentials_file=str(tmp / "scrape-key"), keep_none=True),
    ], rules(info["cfg"]))
    info["prom"], info["started"] = prom, time.time()
    yield info
    prom.close()


def chat(live, key: str, *, stream: bool = False, usage: bool = False, max_tokens: int = 16,
         content="Say something.") -> dict:
    """One chat completion: status, Retry-After, error, and the usage the client saw."""
    body = chat_body(content, max_tokens=max_tokens, model=live["model"])
    if stream:
        body["stream"] = True
        if usage:
            body["stream_options"] = {"include_usage": True}
        try:
            events = stream_events(live["base"], "/v1/chat/completions", body, key=KEYS[key])
        except urllib.error.HTTPError as err:
            out = {"status": err.code, "retry_after": err.headers.get("retry-after"),
                   "error": json.loads(err.read())}
        else:
            found = [c.get("usage") for c in stream_chunks(events)]
            out = {"status": 200, "usage": next((u for u in reversed(found) if u), None)}
    else:
        r = request(live["base"], "/v1/chat/completions", body, key=KEYS[key])
        status, reply = r
        out = {"status": status, "retry_after": r.headers.get("retry-after")}
        if status == 200:
            out["usage"] = reply["usage"]
        else:
            out["error"] = reply
    if "error" in out:
        ERRORS.append(json.dumps(out["error"]))
    return out


def counted(live, expr: str) -> dict[tuple, float]:
    return {tuple(sorted(s["metric"].items())): float(s["value"][1])
            for s in live["prom"].query(expr)}


# ---------------------------------------------------------------------------------- quotas
def test_each_key_stays_within_its_quota_under_concurrent_load_and_counters_agree(live):
    results: dict[str, list[dict]] = {k: [] for k in KEYS}
    lock = threading.Lock()
    end = time.monotonic() + LOAD_S

    def worker(key: str, i: int) -> None:
        n = 0
        while time.monotonic() < end:
            stream = key != "default" and (i + n) % 2 == 1
            r = chat(live, key, stream=stream, usage=stream and key == "team-a")
            with lock:
                results[key].append({**r, "stream": stream})
            n += 1
            if r["status"] == 429:
                time.sleep(0.2)

    threads = [threading.Thread(target=worker, args=(key, i))
               for key, n in (("team-a", CONCURRENT_A + 1), ("team-b", 2), ("default", 1))
               for i in range(n)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()

    a, b, free = results["team-a"], results["team-b"], results["default"]
    # team-a: the tokens it was served (as the responses report them) fit its quota
    served_a = [r for r in a if r["status"] == 200]
    tokens_a = sum(r["usage"]["prompt_tokens"] + r["usage"]["completion_tokens"]
                   for r in served_a)
    assert served_a and tokens_a <= TPM_A, (len(served_a), tokens_a)
    refused_a = [r for r in a if r["status"] == 429]
    assert refused_a, "team-a's load never reached its quota"
    assert {r["status"] for r in a} == {200, 429}
    for r in refused_a:
        err = r["error"]["error"]
        assert err["code"] == "rate_limit_exceeded" and err["type"] == "rate_limit_error"
        assert "tokens_per_minute = 600" in err["message"] or \
            "concurrent_requests = 2" in err["message"], err["message"]
        assert int(r["retry_after"]) >= 1
    # team-b: exactly its requests per minute served, the rest refused with Retry-After
    assert sum(r["status"] == 200 for r in b) == RPM_B, [(r["status"], r.get("error")) for r in b if r["status"] != 429]
    refused_b = [r for r in b if r["status"] != 200]
    assert refused_b and all(r["status"] == 429 for r in refused_b)
    assert all("requests_per_minute = 10" in r["error"]["error"]["message"] and
               1 <= int(r["retry_after"]) <= 60 for r in refused_b)
    # a stream that did not ask for usage gets none, though the server counted it
    streamed_b = [r for r in b if r["stream"] and r["status"] == 200]
    assert streamed_b and all(r["usage"] is None for r in streamed_b)
    # the unnamed keys have no quota: every request served beside the others' refusals
    assert free and all(r["status"] == 200 for r in free)

    # Prometheus' counters equal the client's counts, per key and status, and team-a's tokens
    def requests_by_key() -> dict:
        return {(dict(k)["key"], dict(k)["code"]): v for k, v in counted(
            live, "sum by (key, code) (ray_qwen_vl_key_requests_total)").items()}

    client = {}
    for key, rs in results.items():
        for r in rs:
            client[(key, str(r["status"]))] = client.get((key, str(r["status"])), 0) + 1
    try:
        wait_until(lambda: requests_by_key() == client, 60, interval=1)
    except AssertionError:
        assert requests_by_key() == client  # shows both
    tokens = {dict(k)["kind"]: v for k, v in counted(
        live, 'sum by (kind) (ray_qwen_vl_key_tokens_total{key="team-a"})').items()}
    assert tokens.get("prompt", 0) + tokens.get("completion", 0) == tokens_a
    assert tokens["completion"] == sum(r["usage"]["completion_tokens"] for r in served_a)


def test_no_secret_appears_in_metrics_logs_or_errors(live):
    status, wrong = request(live["base"], "/v1/models", key=KEYS["team-a"][:-1] + "X")
    assert status == 401
    ERRORS.append(json.dumps(wrong))
    texts = {"errors": "\n".join(ERRORS)}
    texts["metrics"] = request(live["metrics"], "")[1]["raw"]
    texts["api /metrics"] = request(live["base"], "/metrics", key=KEYS["default"])[1]["raw"]
    assert 'key="team-a"' in texts["metrics"] and 'key="default"' in texts["metrics"]
    logs = Path(read_state(Path(live["env"]["QWEN_VL_RUN_DIR"])).temp_dir)
    access = []
    for path in logs.rglob("*"):
        if path.is_file() and path.suffix in (".log", ".out", ".err", ".txt", ".json"):
            text = path.read_text(errors="replace")
            texts[str(path)] = text
            access += [ln for ln in text.splitlines() if " access key=" in ln]
    assert any("access key=team-a " in ln and "status=429" in ln for ln in access)
    assert any("access key=team-b " in ln and "status=200" in ln for ln in access)
    for where, text in texts.items():
        for name, secret in KEYS.items():
            assert secret not in text, f"{name}'s key appears in {where}"


# ------------------------------------------------------------------------------ monitoring
def test_every_metric_the_dashboard_and_rules_read_is_exported(live):
    prom = live["prom"]
    # Twice: vLLM's cache hit counters (multimodal, prefix) are exported from their first hit on.
    for _ in range(2):
        image = chat(live, "default", content=[image_data_part(png(120, 160)),
                                               {"type": "text", "text": "What is it?"}])
        assert image["status"] == 200
    assert chat(live, "default", max_tokens=0)["status"] == 400  # a front-door rejection
    names = set()
    for expr in dashboard_queries(dashboard()):
        names |= metric_names(expr)
    for group in rules(live["cfg"])["groups"]:
        for rule in group["rules"]:
            names |= metric_names(rule["expr"])
    recorded = {r["record"] for r in rules(live["cfg"])["groups"][0]["rules"]}
    assert {n for n in names if n.startswith("qwen_vl:")} <= recorded
    # ... and every metric the README, the docs and the chart's README name
    documented = documented_metrics()
    own = stack_metric_names()
    assert len(own) == 10 and own <= documented, own - documented  # the stack's own, all named

    # Ray exports vLLM's gauges (running, waiting, KV cache) only while the engine steps, and
    # Prometheus marks a series stale once a scrape lacks it: samples anywhere in the module's
    # run count, not only at this instant.
    def missing() -> list[str]:
        return sorted(n for n in names | documented if n not in LAZY and not prom.query(
            f'count(last_over_time({{__name__=~"{n}(_bucket)?"}}[10m]))'))

    # A metric Ray exports only from its first event on (a preemption is not cheap to cause
    # here) is checked where vLLM registers it with Ray instead.
    from vllm.v1.metrics import loggers

    source = Path(loggers.__file__).read_text()
    for name, vllm_name in LAZY.items():
        assert name in names | documented and f'name="{vllm_name}"' in source, name

    try:
        wait_until(lambda: not missing(), 60, interval=2)
    except AssertionError:
        assert not missing(), missing()
    up = {s["metric"]["job"]: float(s["value"][1]) for s in prom.query("up")}
    assert up == {"ray": 1.0, "api": 1.0}, up  # the API's /metrics answered with the key
    # The API's /metrics (scraped above, stored nowhere) serves the node's metrics: each of the
    # stack's own among them.
    text = request(live["base"], "/metrics", key=KEYS["default"])[1]["raw"]
    served = {m.group(1) for m in re.finditer(r"^(ray_qwen_vl_\w+?)(?:\{| )", text, re.M)}
    assert served == own, (served, own)


def test_overload_alert_is_true_during_a_burst_and_false_after(live):
    prom = live["prom"]
    alert = next(r for r in rules(live["cfg"])["groups"][1]["rules"]
                 if r["alert"] == "QwenVLOverloaded")
    assert not prom.query(alert["expr"]), "overloaded before the burst"
    stop = threading.Event()
    statuses: list[dict] = []

    def burst() -> None:
        while not stop.is_set():
            statuses.append(chat(live, "default", max_tokens=48))

    threads = [threading.Thread(target=burst) for _ in range(32)]
    for t in threads:
        t.start()
    try:
        wait_until(lambda: prom.query(alert["expr"]), 60, interval=1,
                   what="the overload expression true during the burst")
    finally:
        stop.set()
        for t in threads:
            t.join()
    overloaded = [r for r in statuses if r["status"] == 503]
    assert overloaded and all(r["error"]["error"]["code"] == "overloaded" and
                              int(r["retry_after"]) >= 1 for r in overloaded)
    assert {r["status"] for r in statuses} <= {200, 503}
    # rate(...[1m]) forgets the burst a minute after its last refusal
    wait_until(lambda: not prom.query(alert["expr"]), 120, interval=2,
               what="the overload expression false after the burst")
    assert "QwenVLOverloaded" in ALERT_NAMES


def test_the_dashboard_draws_from_the_scrape(live, tmp_path):
    out = tmp_path / "dashboard.png"
    panels = render_png(live["prom"], out, live["started"], time.time(), rate_interval="15s")
    assert out.stat().st_size > 50_000
    assert panels == len(dashboard()["panels"])
