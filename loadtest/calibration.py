"""From a measured sweep of one replica to the settings production runs with: the autoscaler's
target and replica range, the per-replica queue limits and the alert thresholds, each with the
measurement that set it (``qwen-vl-loadtest calibrate``).

Definitions (docs/capacity-planning.md, "Calibrate from a measured sweep"):

- the **SLO level**: the highest concurrency whose requests all succeeded with TTFT p99 and
  TPOT p99 within the SLO, as did every level below it;
- the **knee**: the best level before the first that gained less than the sweep's saturation
  margin (10%) in output tokens/s over it (none if every level gained);
- the **operating level**: what the autoscaler aims at, the highest level that met the SLO below
  the knee (at the knee a replica runs at its peak, and traffic that arrives at that peak rate
  only grows its queue); the SLO level when there is no knee or it is below it;
- the **per-replica rate**: the requests/s one replica completed at the operating level.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field


# A level that adds less than this factor of output tokens/s over the best before it is
# saturated: the sweep stops there, and the level before is the knee.
SATURATION_GAIN = 1.10


# The KV cache alert's lowest threshold: a cache less than half full is not what makes requests
# wait, whatever the calibrated mix used of it.
KV_FLOOR = 0.5


class CalibrationError(ValueError):
    """The sweep cannot calibrate anything (no level met the SLO); the message says why."""


@dataclass(frozen=True)
class Setting:
    """One calibrated config key: its path under the config's top level, value, and why."""

    path: tuple[str, ...]
    value: int | float
    why: str


@dataclass
class Calibration:
    slo_level: dict
    knee: dict | None
    operating: dict  # what the autoscaler aims at (``operating_level``)
    per_replica_rps: float
    settings: list[Setting] = field(default_factory=list)
    notes: list[str] = field(default_factory=list)

    def overlay(self) -> dict:
        """The settings as a nested config mapping (what the overlay file holds)."""
        out: dict = {}
        for s in self.settings:
            node = out
            for key in s.path[:-1]:
                node = node.setdefault(key, {})
            node[s.path[-1]] = s.value
        return out

    def value(self, *path: str):
        return next(s.value for s in self.settings if s.path == path)


def slo_level(table: list[dict]) -> dict | None:
    """The highest level that met the SLO with every level below it meeting it too (a level
    above a failed one that passes is taken as luck, not capacity), or None."""
    out = None
    for row in sorted(table, key=lambda r: r["concurrency"]):
        if not row["meets_slo"]:
            break
        out = row
    return out


def knee(table: list[dict]) -> dict | None:
    """The best level before the first one that gained less than ``SATURATION_GAIN`` over it in
    output tokens/s (more requests at once from there on buy latency, not throughput); None while
    every level gained."""
    best = None
    for row in sorted(table, key=lambda r: r["concurrency"]):
        if best is not None and row["output_throughput"] < best["output_throughput"] \
                * SATURATION_GAIN:
            return best
        if best is None or row["output_throughput"] > best["output_throughput"]:
            best = row
    return None


def operating_level(table: list[dict], at: dict, k: dict | None) -> dict:
    """The highest level that met the SLO below the knee (the SLO level itself without a
    knee, or when it is below the knee); the knee when nothing below it was measured."""
    if k is None or at["concurrency"] < k["concurrency"]:
        return at
    below = [r for r in table if r["concurrency"] < k["concurrency"]
                                 and r["concurrency"] <= at["concurrency"]]
    return max(below, key=lambda r: r["concurrency"]) if below else k


def _round_up(x: float, step: float) -> float:
    return round(math.ceil(round(x / step, 6)) * step, 6)


def calibrate(table: list[dict], *, slo_ttft_ms: float, slo_tpot_ms: float,
              request_rate: float | None = None, min_request_rate: float | None = None,
              most_replicas: int = 1) -> Calibration:
    """The settings for a deployment whose replicas each behave like the swept one.

    ``request_rate``: the peak requests/s the deployment must hold (sets ``max_replicas``;
    None: ``most_replicas``, the config's own); ``min_request_rate``: what it holds at least at
    all times (sets ``min_replicas``; None: one replica)."""
    if not table:
        raise CalibrationError("the sweep measured no level")
    at = slo_level(table)
    if at is None:
        low = min(table, key=lambda r: r["concurrency"])
        raise CalibrationError(
            f"the first level did not meet the SLO (TTFT p99 <= {slo_ttft_ms:g} ms, TPOT p99 <= "
            f"{slo_tpot_ms:g} ms, no failures): at concurrency {low['concurrency']} TTFT p99 was "
            f"{low['p99_ttft_ms']:.0f} ms, TPOT p99 {low['p99_tpot_ms']:.0f} ms, "
            f"{low['failed']} failed; relax the SLO or give the replica more hardware")
    k = knee(table)
    op = operating_level(table, at, k)
    rps = op["request_throughput"]
    c = at["concurrency"]
    cal = Calibration(slo_level=at, knee=k, operating=op, per_replica_rps=rps)
    queued = int(math.floor(at["request_throughput"] * slo_ttft_ms / 1000.0))
    peak = request_rate
    max_r = (max(1, math.ceil(peak / rps)) if peak else most_replicas)
    min_r = max(1, math.ceil(min_request_rate / rps)) if min_request_rate else 1
    if min_r > max_r:
        max_r = min_r
    kv_peak = at.get("kv_cache_usage_peak")
    met = (f"{c} concurrent requests met TTFT p99 {at['p99_ttft_ms']:.0f} ms <= "
           f"{slo_ttft_ms:g} and TPOT p99 {at['p99_tpot_ms']:.0f} ms <= {slo_tpot_ms:g}")
    if op is at:
        target_why = (f"the SLO level: {met}; {rps:.3g} requests/s per replica there" + (
            " (the knee was not reached: a sweep to a higher --max-concurrency may find more)"
            if k is None else f", below the knee ({k['concurrency']})"))
    elif op is k:
        target_why = (f"the knee ({k['concurrency']}: the next level gained less than "
                      f"{SATURATION_GAIN - 1:.0%} output tokens/s), the lowest level measured; "
                      f"{rps:.3g} requests/s per replica there is its peak, with no headroom")
    else:
        target_why = (f"the level below the knee ({k['concurrency']}, "
                      f"{k['request_throughput']:.3g} requests/s: the next level gained less "
                      f"than {SATURATION_GAIN - 1:.0%} output tokens/s): traffic arriving at the "
                      f"knee's own rate would only grow the queue; {rps:.3g} requests/s per "
                      f"replica here")
    settings = [
        Setting(("deployment", "autoscaling", "target_ongoing_requests"), op["concurrency"],
                target_why),
        Setting(("deployment", "autoscaling", "min_replicas"), min_r,
                f"{min_request_rate:g} requests/s at least / {rps:.3g} per replica, rounded up"
                if min_request_rate else "one replica always up (no --min-request-rate given)"),
        Setting(("deployment", "autoscaling", "max_replicas"), max_r,
                f"{peak:g} requests/s at peak / {rps:.3g} per replica, rounded up" if peak else
                f"the config's own ({most_replicas}); --request-rate sizes it from a peak rate"),
        Setting(("deployment", "max_ongoing_requests"), c,
                f"the SLO level, the most at once that met the SLO: {met}; a replica runs up to "
                f"this many while the autoscaler's new replicas start"),
        Setting(("deployment", "max_queued_requests"), queued,
                f"a queued request waits about its place / {at['request_throughput']:.3g} "
                f"requests/s (the rate at concurrency {c}) before it starts; past {queued} "
                f"it would wait longer than the TTFT SLO ({slo_ttft_ms:g} ms), so it gets 503 "
                f"with Retry-After instead"),
        Setting(("alerts", "ttft_p99_s"), round(slo_ttft_ms / 1000.0, 6),
                f"the SLO the sweep was held to; measured p99 at the SLO level "
                f"{at['p99_ttft_ms']:.0f} ms"),
        Setting(("alerts", "queue_waiting"), max(1, queued // 2) if queued else 0,
                f"half of max_queued_requests ({queued}): warned before 503s start"
                if queued else "no queue (max_queued_requests 0): any wait is worth a warning"),
    ]
    if kv_peak is not None:
        settings.append(Setting(
            ("alerts", "kv_cache_usage"),
            min(1.0, max(KV_FLOOR, _round_up(kv_peak + 0.1, 0.05))),
            f"KV cache usage peaked at {kv_peak:.3f} at concurrency {c} "
            f"(max_ongoing_requests): fuller means requests heavier than the calibrated mix "
            f"(0.1 above it, rounded up, and at least {KV_FLOOR:g})"))
    else:
        cal.notes.append("no KV cache usage was read (no metrics URL): alerts.kv_cache_usage "
                         "is left as configured")
    cal.settings = settings
    return cal
