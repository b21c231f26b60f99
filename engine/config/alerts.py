"""``alerts:``: the thresholds of the Prometheus alerts."""

from __future__ import annotations

from pydantic import Field

from .base import _Strict


class AlertSettings(_Strict):
    """Thresholds of the Prometheus alert rules (``qwen-vl rules``, the chart's PrometheusRule)."""

    ttft_p99_s: float = Field(2.0, gt=0, description="Time-to-first-token SLO: alert when the "
                              "p99 over 5 minutes exceeds it.")
    error_ratio: float = Field(0.05, gt=0, le=1, description="Alert when this share of the "
                               "API's responses over 5 minutes are 5xx.")
    kv_cache_usage: float = Field(0.9, gt=0, le=1, description="Alert when an engine's KV cache "
                                  "is fuller than this while requests wait.")
    queue_waiting: float = Field(16, ge=0, description="Alert when a replica holds more requests "
                                 "than this waiting for a slot at its engine (its queue: "
                                 "deployment.max_queued_requests at most).")
    rejections_per_s: float = Field(1.0, gt=0, description="Alert when the front door refuses "
                                    "more requests per second than this (any reason but auth).")
    for_minutes: int = Field(5, ge=0, description="How long a condition holds before its alert "
                             "fires (down and overload alerts: a fifth of it, at least 1).")
