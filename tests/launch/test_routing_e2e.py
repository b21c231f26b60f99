"""The image-affinity router on a live stack: two engine replicas behind HAProxy, which asks Ray
Serve LLM's ingress router for each request's replica, which asks our policy
(``launch.router.affinity``) with the request body.

Requests go one at a time, so no replica is ever busier than ``affinity_max_load_gap`` and
each choice is known in advance: every repeat of an image is a router hit, and a hit in vLLM's
multimodal cache of the replica it reached (a repeat sent to the other replica would miss there).
"""

from __future__ import annotations

import json
import re

import pytest

from tests.utils import (MODEL, chat_body, data_url, image_part, png, request, wait_until,
                         with_text)

pytestmark = pytest.mark.slow
OVERRIDES = {"deployment": {"replicas": 2, "max_ongoing_requests": 4, "max_queued_requests": 8,
                            "routing": {"image_affinity": True, "load_report_s": 0.5}},
             "limits": {"max_body_bytes": 1 << 20}}
# Ray's metrics reach its agent every second (default 10 s): the counters settle within seconds.
ENV = {"RAY_metrics_report_interval_ms": "1000"}
COUNTERS = {"hit": ('ray_qwen_vl_router_affinity_total', 'outcome="hit"'),
            "new": ('ray_qwen_vl_router_affinity_total', 'outcome="new"'),
            "busy": ('ray_qwen_vl_router_affinity_total', 'outcome="busy"'),
            "gone": ('ray_qwen_vl_router_affinity_total', 'outcome="gone"'),
            "mm_queries": ("ray_vllm_mm_cache_queries_total", ""),
            "mm_hits": ("ray_vllm_mm_cache_hits_total", "")}


@pytest.fixture(scope="module")
def live(stacks):
    return stacks.get(overrides=OVERRIDES, env=ENV)


def counts(live) -> dict[str, float]:
    """COUNTERS from the node's metrics, each summed over its series (replicas)."""
    text = request(live["metrics"], "", timeout=30)[1]["raw"]
    out = {}
    for key, (name, label) in COUNTERS.items():
        out[key] = sum(float(v) for labels, v in re.findall(
            rf"^{name}\{{([^}}]*)\}} ([0-9.e+-]+)$", text, re.M) if label in labels)
    return out


def test_each_image_goes_back_to_the_replica_that_saw_it(live):
    before = counts(live)
    images = [data_url(png(96, 96, seed=seed), "image/png") for seed in (11, 12, 13)]
    rounds = 4
    for r in range(rounds):
        for url in images:
            body = chat_body(with_text(image_part(url), text=f"Question {r}?"), max_tokens=2)
            code, answer = request(live["base"], "/v1/chat/completions", body)
            assert code == 200, answer
        # a text-only request between rounds: routed by load, counted nowhere
        assert request(live["base"], "/v1/chat/completions", chat_body("Hi", max_tokens=2))[0] \
            == 200
    sent = rounds * len(images)
    want = {"hit": sent - len(images), "new": len(images), "busy": 0, "gone": 0,
            "mm_queries": sent, "mm_hits": sent - len(images)}
    got: dict[str, float] = {}

    def settled():
        got.update({k: v - before.get(k, 0) for k, v in counts(live).items()})
        return got == want

    try:
        wait_until(settled, 60, interval=2, what="the router's and vLLM's counters")
    except AssertionError:
        assert got == want  # names what differs
    # Each replica's own cache agrees: both replicas took images (three images, least-loaded
    # ties broken at random: the odds that one replica got all three are a quarter, so the
    # per-replica split is printed, not asserted).
    print("mm cache hits by replica:", mm_hits_by_replica(live))


def mm_hits_by_replica(live) -> dict[str, float]:
    text = request(live["metrics"], "", timeout=30)[1]["raw"]
    out: dict[str, float] = {}
    for labels, v in re.findall(r"^ray_vllm_mm_cache_hits_total\{([^}]*)\} ([0-9.e+-]+)$", text,
                                re.M):
        replica = dict(re.findall(r'(\w+)="([^"]*)"', labels)).get("ReplicaId", "?")
        out[replica] = out.get(replica, 0) + float(v)
    return out


def test_bad_bodies_get_the_apis_errors_through_the_router(live):
    """The router routes what it cannot read by load: the replica's front door answers, with
    OpenAI error JSON, never HAProxy's page for a failed routing."""
    base = live["base"]
    code, out = request(base, "/v1/chat/completions", raw=b"{not json")
    assert code == 400 and out["error"]["type"] == "invalid_request_error", out
    big = json.dumps(chat_body(with_text(image_part(
        data_url(b"\0" * (2 << 20), "image/png"))))).encode()
    code, out = request(base, "/v1/chat/completions", raw=big)
    assert code == 413 and out["error"]["code"] == "request_too_large", out
    code, out = request(base, "/v1/chat/completions",
                        chat_body([{"type": "image_url", "image_url": {"url": "data:,"}}]))
    assert code == 400 and out["error"]["param"].startswith("messages[0].content[0]"), out
    code, out = request(base, "/v1/models")
    assert code == 200 and out["data"][0]["id"] == MODEL
