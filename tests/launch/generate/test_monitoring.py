"""The Prometheus rules and the Grafana dashboard (``launch.generate.monitoring``), checked and
unit-tested by Debian's ``promtool`` (installed by the test when missing). Each alert has a series
that fires it and one that must leave it silent. The live scrape: test_monitoring_e2e."""

from __future__ import annotations

import json
import subprocess
from pathlib import Path

import pytest
import yaml

from engine.config import load_config
from launch import cli
from launch.generate import monitoring
from tests.utils import CONFIGS, ensure_prometheus

ENGINE = 'application="qwen-vl",deployment="QwenVLServer:m"'
MODEL = 'model_name="m"'


@pytest.fixture(scope="module")
def promtool() -> str:
    return str(Path(ensure_prometheus()) / "promtool")


def write_rules(tmp_path: Path, rules: dict, *, annotations: bool = True) -> Path:
    if not annotations:  # unit tests compare labels; annotations are checked by check rules
        rules = json.loads(json.dumps(rules))
        for group in rules["groups"]:
            for rule in group["rules"]:
                rule.pop("annotations", None)
    path = tmp_path / "rules.yaml"
    path.write_text(yaml.safe_dump(rules, sort_keys=False))
    return path


def test_promtool_checks_the_rules_of_every_shipped_config(promtool, tmp_path):
    for config in sorted(CONFIGS.glob("*.yaml")):
        rules = monitoring.rules(load_config(config))
        r = subprocess.run([promtool, "check", "rules", str(write_rules(tmp_path, rules))],
                           capture_output=True, text=True)
        assert r.returncode == 0, f"{config.name}: {r.stdout}{r.stderr}"
        assert f"SUCCESS: {len(monitoring.RECORDING) + len(monitoring.ALERT_NAMES)} rules" \
            in r.stdout


def series(name: str, labels: str, values: str) -> dict:
    return {"series": f"{name}{{{labels}}}", "values": values}


def healthy(replica: str, values: str) -> dict:
    return series("ray_serve_deployment_replica_healthy", f'{ENGINE},replica="{replica}"',
                  values)


def http(code: str, values: str, route: str = "/v1/chat/completions") -> dict:
    return series("ray_qwen_vl_requests_total",
                  f'application="qwen-vl",deployment="QwenVLServer:m",route="{route}",'
                  f'code="{code}"', values)


def rejected(reason: str, values: str) -> dict:
    return series("ray_qwen_vl_rejected_requests_total",
                  f'application="qwen-vl",deployment="QwenVLServer:m",reason="{reason}"', values)


def ttft(fast: str, slow: str) -> list[dict]:
    """TTFT histogram buckets: ``fast`` requests per minute under 1 s, ``slow`` ones 1-4 s."""
    return [series("ray_vllm_time_to_first_token_seconds_bucket", f'{MODEL},le="1"',
                   f"0+{fast}x30"),
            series("ray_vllm_time_to_first_token_seconds_bucket", f'{MODEL},le="4"',
                   f"0+{int(fast) + int(slow)}x30"),
            series("ray_vllm_time_to_first_token_seconds_bucket", f'{MODEL},le="+Inf"',
                   f"0+{int(fast) + int(slow)}x30")]


WARN, CRIT = {"severity": "warning"}, {"severity": "critical"}
# alert -> (series that fire it, the labels it fires with, series that leave it silent)
CASES = {
    "QwenVLEngineReplicaUnhealthy": (
        [healthy("r1", "1 1 1 0x20"), healthy("r2", "1x20")],
        {**WARN, "application": "qwen-vl", "deployment": "QwenVLServer:m", "replica": "r1"},
        [healthy("r1", "1x20"), healthy("r2", "1x20")]),
    "QwenVLNoHealthyReplica": (
        [healthy("r1", "1 1 1 0x20"), healthy("r2", "1 1 0x20")],
        {**CRIT, "application": "qwen-vl"},
        [healthy("r1", "1 1 1 0x20"), healthy("r2", "1x20")]),
    "QwenVLHigh5xxRatio": (
        [http("200", "0+100x30"), http("500", "0+10x30")],  # 9% of requests fail
        CRIT,
        # capacity 503s and failing health checks are not the API failing (/health is not
        # counted as an API request)
        [http("200", "0+100x30"), http("503", "0+50x30"),
         series("ray_serve_num_http_requests_total",
                'application="qwen-vl",method="GET",route="/health",status_code="500"',
                "0+50x30")]),
    "QwenVLTimeToFirstTokenOverSLO": (ttft("10", "10"), {**WARN, "model_name": "m"},
                                      ttft("100", "0")),
    "QwenVLKVCacheFull": (
        [series("ray_vllm_kv_cache_usage_perc", f'{MODEL},ReplicaId="a"', "0.95x20"),
         series("ray_vllm_num_requests_waiting", f'{MODEL},ReplicaId="a"', "3x20")],
        {**WARN, "model_name": "m"},
        [series("ray_vllm_kv_cache_usage_perc", f'{MODEL},ReplicaId="a"', "0.95x20"),
         series("ray_vllm_num_requests_waiting", f'{MODEL},ReplicaId="a"', "0x20")]),
    "QwenVLQueueBacklog": (  # the default threshold is 16 waiting on one replica
        [series("ray_qwen_vl_requests_waiting", 'application="qwen-vl",replica="a"', "17x20"),
         series("ray_qwen_vl_requests_waiting", 'application="qwen-vl",replica="b"', "0x20")],
        {**WARN, "application": "qwen-vl"},
        [series("ray_qwen_vl_requests_waiting", 'application="qwen-vl",replica="a"', "16x20"),
         series("ray_qwen_vl_requests_waiting", 'application="qwen-vl",replica="b"', "16x20")]),
    "QwenVLOverloaded": (
        [rejected("overloaded", "0+30x20")], WARN,
        [rejected("quota_requests_per_minute", "0+30x20")]),
    "QwenVLRejectionsSpike": (
        [rejected("bad_image", "0+120x20")], WARN,  # 2 per second
        [rejected("auth", "0+600x20"), rejected("bad_image", "0+30x20")]),
    "QwenVLRayNodeLost": (
        [series("ray_cluster_active_nodes", 'node_type="head"', "1x20"),
         series("ray_cluster_active_nodes", 'node_type="gpu"', "2x5 1x15")],
        WARN,
        [series("ray_cluster_active_nodes", 'node_type="head"', "1x20"),
         series("ray_cluster_active_nodes", 'node_type="gpu"', "2x20")]),
}


def test_every_alert_has_a_unit_test():
    assert sorted(CASES) == sorted(monitoring.ALERT_NAMES)


@pytest.mark.parametrize("alert", sorted(CASES))
def test_each_alert_fires_on_its_condition_and_stays_silent_otherwise(promtool, tmp_path,
                                                                      alert):
    fire, labels, calm = CASES[alert]
    rules = write_rules(tmp_path, monitoring.rules(load_config(CONFIGS / "default.yaml")),
                        annotations=False)
    at = "15m"  # past every alert's `for` (5 minutes by default) and the 5-minute rate windows
    tests = {"rule_files": [str(rules)], "evaluation_interval": "1m", "tests": [
        {"interval": "1m", "input_series": fire,
         "alert_rule_test": [{"eval_time": at, "alertname": alert,
                              "exp_alerts": [{"exp_labels": labels}]},
                             {"eval_time": "1m", "alertname": alert, "exp_alerts": []}]},
        {"interval": "1m", "input_series": calm,
         "alert_rule_test": [{"eval_time": at, "alertname": alert, "exp_alerts": []}]},
    ]}
    path = tmp_path / "tests.yaml"
    path.write_text(yaml.safe_dump(tests, sort_keys=False))
    r = subprocess.run([promtool, "test", "rules", str(path)], capture_output=True, text=True)
    assert r.returncode == 0, r.stdout + r.stderr


def test_thresholds_come_from_the_config(promtool, tmp_path):
    """A TTFT SLO of 5 s: the slow requests (1-4 s) that fire the default's 2 s stay silent."""
    cfg = load_config(CONFIGS / "default.yaml").model_copy(
        update={"alerts": load_config(CONFIGS / "default.yaml").alerts.model_copy(
            update={"ttft_p99_s": 5.0})})
    rules = monitoring.rules(cfg)
    ttft_rule = next(r for r in rules["groups"][1]["rules"]
                     if r["alert"] == "QwenVLTimeToFirstTokenOverSLO")
    assert ttft_rule["expr"].endswith("> 5") and "is 5 s" in \
        ttft_rule["annotations"]["description"]
    path = tmp_path / "tests.yaml"
    path.write_text(yaml.safe_dump({"rule_files": [str(write_rules(tmp_path, rules,
                                                                   annotations=False))],
                                    "evaluation_interval": "1m", "tests": [
        {"interval": "1m", "input_series": ttft("10", "10"), "alert_rule_test": [
            {"eval_time": "15m", "alertname": "QwenVLTimeToFirstTokenOverSLO",
             "exp_alerts": []}]}]}))
    r = subprocess.run([promtool, "test", "rules", str(path)], capture_output=True, text=True)
    assert r.returncode == 0, r.stdout + r.stderr


def test_the_dashboard_reads_only_recorded_names_or_exported_metrics():
    recorded = {name for name, _ in monitoring.RECORDING}
    used = set().union(*map(monitoring.metric_names,
                            monitoring.dashboard_queries(monitoring.dashboard())))
    assert {n for n in used if n.startswith("qwen_vl:")} <= recorded
    assert all(n.startswith(("ray_", "qwen_vl:")) for n in used)
    titles = [p["title"] for p in monitoring.dashboard()["panels"]]
    for topic in ("status", "5xx", "first token", "output token", "End-to-end", "Tokens per",
                  "running and waiting", "KV-cache", "Preemptions", "Replicas", "rejections",
                  "Images and videos", "bytes", "by key", "Drain"):
        assert any(topic in t for t in titles), topic


def test_metric_names_reads_names_not_labels_or_functions():
    assert monitoring.metric_names(
        'max by (model_name) (ray_vllm_kv_cache_usage_perc) > 0.9 and on (model_name) '
        'sum by (model_name) (ray_vllm_num_requests_waiting{reason="ray_x"}) > 0') == \
        {"ray_vllm_kv_cache_usage_perc", "ray_vllm_num_requests_waiting"}


def test_the_charts_copies_are_current():
    for name, text in monitoring.chart_files().items():
        assert (monitoring.CHART_FILES / name).read_text() == text, \
            f"helm/qwen-vl-serving/files/{name} is stale: run `make generate`"


def test_the_cli_writes_the_rules_and_the_dashboard(tmp_path, capsys):
    assert cli.main(["monitoring", "--config", str(CONFIGS / "default.yaml"),
                     "--out", str(tmp_path)]) == 0
    assert yaml.safe_load((tmp_path / "qwen-vl-serving.rules.yaml").read_text()) == \
        monitoring.rules(load_config(CONFIGS / "default.yaml"))
    assert json.loads((tmp_path / "qwen-vl-serving.dashboard.json").read_text()) == \
        monitoring.dashboard()
    assert "wrote" in capsys.readouterr().out


def test_every_alert_has_its_runbook_paragraph():
    doc = (Path(__file__).resolve().parents[3] / "docs" / "operations.md").read_text()
    for name in monitoring.ALERT_NAMES:
        assert f"\n### {name}\n" in doc, name
    for rule in monitoring.rules()["groups"][1]["rules"]:
        assert rule["annotations"]["runbook_url"] == \
            f"docs/operations.md#{rule['alert'].lower()}"
    for field in ("ttft_p99_s", "error_ratio", "kv_cache_usage", "rejections_per_s",
                  "for_minutes"):
        assert f"`{field}`" in doc, field
