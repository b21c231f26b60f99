"""Prometheus rules and the Grafana dashboard, derived from the one config.

``rules(cfg)``: recording rules for the heavy queries (latency quantiles, ratios, rates) and the
alerts, their thresholds from ``alerts:`` (``engine.config.AlertSettings``). ``dashboard()``: the
Grafana dashboard, whose heavy panels read the recording rules (install both). ``qwen-vl rules``
writes both as files; the chart ships them as a PrometheusRule and a ConfigMap for Grafana's
sidecar (``make generate`` regenerates the chart's copies; a test keeps them current).

Every metric named here is one the stack exports (tests/launch/test_monitoring_e2e.py scrapes a
live stack with a real Prometheus and checks each name): Ray Serve's ``ray_serve_*``, vLLM's
``ray_vllm_*`` (``log_engine_metrics``), Ray's ``ray_cluster_active_nodes``, and ours
(``ray_qwen_vl_*``: ``launch.api.rejections``, ``launch.api.usage``, ``launch.router.affinity``).
"""

from __future__ import annotations

import json
import re
from pathlib import Path
from typing import Any

import yaml

from engine.config import AlertSettings, ServingConfig

RUNBOOK = "docs/operations.md#{anchor}"  # the runbook paragraph of each alert
# The API's own request counter (``launch.api.usage``): every request its routes answered, by route
# and status. Ray's HTTP request metrics are not used: behind HAProxy they carry route="/".
REQUESTS = "ray_qwen_vl_requests_total"
ENGINES = 'deployment=~"QwenVLServer:.*"'  # the engine replicas' deployment (launch.app)


def _quantile(q: float, metric: str, window: str) -> str:
    return (f"histogram_quantile({q}, sum by (le, model_name) "
            f"(rate({metric}_bucket[{window}])))")


RECORDING: list[tuple[str, str]] = [
    ("qwen_vl:http_requests:rate1m",
     f"sum by (application, route, code) (rate({REQUESTS}[1m]))"),
    # 503 is capacity or drain, each with its own alert; this ratio is the server failing
    # (or vector(0): a ratio of 0, not "no data", while nothing has failed)
    ("qwen_vl:http_5xx_ratio:rate5m",
     f'(sum(rate({REQUESTS}{{code=~"5..",code!="503"}}[5m])) or vector(0)) / '
     f"sum(rate({REQUESTS}[5m]))"),
    *[(f"qwen_vl:{name}_seconds:p{int(q * 100)}_5m", _quantile(q, metric, "5m"))
      for name, metric in (("ttft", "ray_vllm_time_to_first_token_seconds"),
                           ("tpot", "ray_vllm_inter_token_latency_seconds"),
                           ("e2e", "ray_vllm_e2e_request_latency_seconds"))
      for q in (0.5, 0.9, 0.99)],
    ("qwen_vl:prompt_tokens:rate1m",
     "sum by (model_name) (rate(ray_vllm_prompt_tokens_total[1m]))"),
    ("qwen_vl:generation_tokens:rate1m",
     "sum by (model_name) (rate(ray_vllm_generation_tokens_total[1m]))"),
    ("qwen_vl:overload_refusals:rate1m",
     'sum(rate(ray_qwen_vl_rejected_requests_total{reason="overloaded"}[1m])) or vector(0)'),
    ("qwen_vl:rejections:rate5m",
     'sum by (reason) (rate(ray_qwen_vl_rejected_requests_total{reason!="auth"}[5m]))'),
    ("qwen_vl:ray_nodes:sum", "sum(ray_cluster_active_nodes)"),
    # The image-affinity router's choices (deployment.routing.image_affinity; none without it)
    # and how often vLLM's caches found an image or a prompt prefix they already held.
    ("qwen_vl:router_affinity:rate5m",
     "sum by (outcome) (rate(ray_qwen_vl_router_affinity_total[5m]))"),
    ("qwen_vl:mm_cache_hit_ratio:rate5m",
     "sum by (ReplicaId) (rate(ray_vllm_mm_cache_hits_total[5m])) / "
     "sum by (ReplicaId) (rate(ray_vllm_mm_cache_queries_total[5m]))"),
    ("qwen_vl:prefix_cache_hit_ratio:rate5m",
     "sum by (ReplicaId) (rate(ray_vllm_prefix_cache_hits_total[5m])) / "
     "sum by (ReplicaId) (rate(ray_vllm_prefix_cache_queries_total[5m]))"),
]


def thresholds(a: AlertSettings) -> dict[str, str]:
    """Each alert setting as the text the rules hold, and the down alerts' ``for`` minutes."""
    out = {name: f"{value:g}" for name, value in a.model_dump().items()}
    out["fast_minutes"] = str(max(1, a.for_minutes // 5))
    return out


# The chart's copy of the rules holds these where the thresholds go; its template puts the
# values' thresholds (serving.alerts, else the defaults) in their place.
PLACEHOLDERS = {name: f"__{name}__" for name in [*AlertSettings.model_fields, "fast_minutes"]}


def _alerts(t: dict[str, str]) -> list[dict[str, Any]]:
    slow, fast = f"{t['for_minutes']}m", f"{t['fast_minutes']}m"
    engines = f"ray_serve_deployment_replica_healthy{{{ENGINES}}}"
    table = [
        ("QwenVLEngineReplicaUnhealthy", "warning", fast,
         f"min by (application, deployment, replica) ({engines}) == 0",
         "An engine replica fails its health checks",
         "Replica {{ $labels.replica }} of {{ $labels.deployment }} has failed Ray Serve's "
         "health check; Ray Serve replaces it after three misses."),
        ("QwenVLNoHealthyReplica", "critical", fast,
         f"(sum by (application) ({engines}) or on() vector(0)) == 0",
         "No engine replica is healthy: the API answers 503",
         "No engine replica of the application passes its health check (or none reports)."),
        ("QwenVLHigh5xxRatio", "critical", slow,
         f"qwen_vl:http_5xx_ratio:rate5m > {t['error_ratio']}",
         "The API fails too many requests",
         f"{{{{ $value | humanizePercentage }}}} of API responses over 5 minutes are 5xx "
         f"(503 excluded); the threshold is {t['error_ratio']}."),
        ("QwenVLTimeToFirstTokenOverSLO", "warning", slow,
         f"qwen_vl:ttft_seconds:p99_5m > {t['ttft_p99_s']}",
         "Time to first token is over its SLO",
         f"p99 TTFT of {{{{ $labels.model_name }}}} is {{{{ $value | humanizeDuration }}}}; "
         f"the SLO (alerts.ttft_p99_s) is {t['ttft_p99_s']} s."),
        ("QwenVLKVCacheFull", "warning", slow,
         f"max by (model_name) (ray_vllm_kv_cache_usage_perc) > {t['kv_cache_usage']} and on "
         "(model_name) sum by (model_name) (ray_vllm_num_requests_waiting) > 0",
         "The KV cache is nearly full and requests wait",
         f"An engine of {{{{ $labels.model_name }}}} has its KV cache over "
         f"{t['kv_cache_usage']} full while requests wait for room."),
        ("QwenVLQueueBacklog", "warning", slow,
         f"max by (application) (ray_qwen_vl_requests_waiting) > {t['queue_waiting']}",
         "Requests queue for an engine slot",
         f"A replica holds {{{{ $value }}}} requests waiting for a slot at its engine; the "
         f"threshold (alerts.queue_waiting) is {t['queue_waiting']}."),
        ("QwenVLOverloaded", "warning", fast,
         "qwen_vl:overload_refusals:rate1m > 0",
         "Requests are refused for capacity (503 overloaded)",
         "The replicas refuse requests: each holds deployment.max_ongoing_requests at its "
         "engine and max_queued_requests more waiting."),
        ("QwenVLRejectionsSpike", "warning", slow,
         f"sum(qwen_vl:rejections:rate5m) > {t['rejections_per_s']}",
         "The front door refuses many requests",
         f"{{{{ $value | humanize }}}} requests/s refused by the front door (auth excluded); "
         f"the threshold is {t['rejections_per_s']}."),
        ("QwenVLRayNodeLost", "warning", "0m",
         "max_over_time(qwen_vl:ray_nodes:sum[15m]) - qwen_vl:ray_nodes:sum > 0",
         "A Ray node left the cluster",
         "{{ $value }} fewer Ray nodes than at some point in the last 15 minutes."),
    ]
    return [{"alert": name, "expr": expr, "for": for_, "labels": {"severity": severity},
             "annotations": {"summary": summary, "description": description,
                             "runbook_url": RUNBOOK.format(anchor=name.lower())}}
            for name, severity, for_, expr, summary, description in table]


def rules(cfg: ServingConfig | None = None, *, placeholders: bool = False) -> dict[str, Any]:
    """The Prometheus rules file (``groups:``) for a config (None: the defaults)."""
    t = PLACEHOLDERS if placeholders else thresholds(
        cfg.alerts if cfg is not None else AlertSettings())
    return {"groups": [
        {"name": "qwen-vl-serving.recording", "interval": "30s",
         "rules": [{"record": name, "expr": expr} for name, expr in RECORDING]},
        {"name": "qwen-vl-serving.alerts", "rules": _alerts(t)},
    ]}


ALERT_NAMES = tuple(a["alert"] for a in rules()["groups"][1]["rules"])

# ------------------------------------------------------------------------ dashboard
RATE = "$__rate_interval"
PANELS: list[tuple[str, str, list[tuple[str, str]]]] = [  # (title, unit, [(legend, expr)])
    ("Requests per second by status", "reqps",
     [("{{code}}", "sum by (code) (qwen_vl:http_requests:rate1m)")]),
    ("5xx ratio (503 excluded)", "percentunit",
     [("5xx", "qwen_vl:http_5xx_ratio:rate5m")]),
    ("Time to first token", "s",
     [(f"p{q} {{{{model_name}}}}", f"qwen_vl:ttft_seconds:p{q}_5m") for q in (50, 90, 99)]),
    ("Time per output token", "s",
     [(f"p{q} {{{{model_name}}}}", f"qwen_vl:tpot_seconds:p{q}_5m") for q in (50, 90, 99)]),
    ("End-to-end latency", "s",
     [(f"p{q} {{{{model_name}}}}", f"qwen_vl:e2e_seconds:p{q}_5m") for q in (50, 90, 99)]),
    ("Tokens per second", "short",
     [("prompt {{model_name}}", "qwen_vl:prompt_tokens:rate1m"),
      ("generated {{model_name}}", "qwen_vl:generation_tokens:rate1m")]),
    ("Requests running and waiting", "short",
     [("running", "sum(ray_vllm_num_requests_running)"),
      ("waiting", "sum(ray_vllm_num_requests_waiting)")]),
    ("KV-cache usage per engine", "percentunit",
     [("{{ReplicaId}}", "max by (ReplicaId) (ray_vllm_kv_cache_usage_perc)")]),
    ("Preemptions per second", "short",
     # (Ray exports the counter from an engine's first preemption on: 0 until then)
     [("preempted", f"sum(rate(ray_vllm_num_preemptions_total[{RATE}])) or vector(0)")]),
    ("Replicas by health", "short",
     [("healthy {{deployment}}",
       "sum by (deployment) (ray_serve_deployment_replica_healthy == 1)"),
      ("unhealthy {{deployment}}",
       "count by (deployment) (ray_serve_deployment_replica_healthy == 0)")]),
    ("Front-door rejections by reason", "reqps",
     [("{{reason}}", f"sum by (reason) (rate(ray_qwen_vl_rejected_requests_total[{RATE}]))")]),
    ("Images and videos per second", "short",
     [("{{kind}}", f"sum by (kind) (rate(ray_qwen_vl_key_media_total[{RATE}]))")]),
    ("Image and video bytes per second", "Bps",
     [("{{kind}}", f"sum by (kind) (rate(ray_qwen_vl_key_media_bytes_total[{RATE}]))")]),
    ("Requests per second by key", "reqps",
     [("{{key}} {{code}}",
       f"sum by (key, code) (rate(ray_qwen_vl_key_requests_total[{RATE}]))")]),
    ("Tokens per second by key", "short",
     [("{{key}} {{kind}}",
       f"sum by (key, kind) (rate(ray_qwen_vl_key_tokens_total[{RATE}]))")]),
    ("Drain and in-flight requests", "short",
     [("draining", "max(ray_qwen_vl_draining)"),
      ("in flight", "sum(ray_qwen_vl_requests_in_flight)"),
      ("waiting for an engine slot", "sum(ray_qwen_vl_requests_waiting)"),
      ("Ray nodes", "qwen_vl:ray_nodes:sum")]),
    ("Image affinity and cache hits", "percentunit",
     [("router hits", 'sum(qwen_vl:router_affinity:rate5m{outcome="hit"}) / '
                      "sum(qwen_vl:router_affinity:rate5m)"),
      ("mm cache {{ReplicaId}}", "qwen_vl:mm_cache_hit_ratio:rate5m"),
      ("prefix cache {{ReplicaId}}", "qwen_vl:prefix_cache_hit_ratio:rate5m")]),
]


def dashboard() -> dict[str, Any]:
    """The Grafana dashboard (schema 39), a Prometheus data source chosen by variable."""
    panels = []
    for i, (title, unit, targets) in enumerate(PANELS):
        panels.append({
            "id": i + 1, "type": "timeseries", "title": title,
            "datasource": {"type": "prometheus", "uid": "${datasource}"},
            "gridPos": {"h": 8, "w": 8, "x": (i % 3) * 8, "y": (i // 3) * 8},
            "fieldConfig": {"defaults": {"unit": unit}, "overrides": []},
            "options": {"legend": {"displayMode": "list", "placement": "bottom"},
                        "tooltip": {"mode": "multi"}},
            "targets": [{"refId": chr(65 + j), "expr": expr, "legendFormat": legend,
                         "datasource": {"type": "prometheus", "uid": "${datasource}"}}
                        for j, (legend, expr) in enumerate(targets)],
        })
    return {
        "uid": "qwen-vl-serving", "title": "qwen-vl-serving", "schemaVersion": 39,
        "version": 1, "editable": True, "tags": ["qwen-vl-serving", "vllm", "ray"],
        "time": {"from": "now-1h", "to": "now"}, "refresh": "30s",
        "templating": {"list": [{"name": "datasource", "type": "datasource",
                                 "query": "prometheus", "label": "Prometheus"}]},
        "annotations": {"list": []},
        "panels": panels,
    }


def dashboard_queries(board: dict[str, Any]) -> list[str]:
    return [t["expr"] for p in board["panels"] for t in p["targets"]]


def metric_names(expr: str) -> set[str]:
    """The metric and recording-rule names a PromQL expression reads."""
    expr = re.sub(r'"[^"]*"', '""', expr)  # label values
    expr = re.sub(r"\{[^}]*\}", "{}", expr)  # label matchers
    expr = re.sub(r"\bby\s*\([^)]*\)|\bon\s*\([^)]*\)", "", expr)  # grouping labels
    return {m for m in re.findall(r"[a-zA-Z_:][a-zA-Z0-9_:]*", expr)
            if m.startswith(("ray_", "qwen_vl:"))}


def dashboard_json() -> str:
    return json.dumps(dashboard(), indent=2) + "\n"


def rules_yaml(cfg: ServingConfig | None = None, *, placeholders: bool = False) -> str:
    return yaml.safe_dump(rules(cfg, placeholders=placeholders), sort_keys=False, width=100)


CHART_FILES = Path(__file__).resolve().parents[2] / "helm" / "qwen-vl-serving" / "files"


def chart_files() -> dict[str, str]:
    """The chart's copies: the dashboard, the rules with placeholders, the default thresholds."""
    return {"grafana-dashboard.json": dashboard_json(),
            "prometheus-rules.yaml": rules_yaml(placeholders=True),
            "alert-defaults.yaml": yaml.safe_dump(AlertSettings().model_dump(), sort_keys=True)}


def write_chart_files(out: Path = CHART_FILES) -> list[Path]:
    out.mkdir(parents=True, exist_ok=True)
    for name, text in chart_files().items():
        (out / name).write_text(text)
    return [out / name for name in chart_files()]


def write_files(cfg: ServingConfig, out: Path) -> list[Path]:
    """``qwen-vl monitoring``: the rules for ``cfg`` and the dashboard, as plain files."""
    out.mkdir(parents=True, exist_ok=True)
    paths = [out / "qwen-vl-serving.rules.yaml", out / "qwen-vl-serving.dashboard.json"]
    paths[0].write_text(rules_yaml(cfg))
    paths[1].write_text(dashboard_json())
    return paths
