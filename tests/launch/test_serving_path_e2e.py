"""End to end: the engine replica's HTTP server hands API requests to the API itself
(``launch.ray_compat.serve_http_in_place``), on the stack the serve module shares: Ray still
counts each request as ongoing (autoscaling and graceful shutdown read that count), Ray's
per-request wrapper does not see them, and a client that hangs up on a whole (non-streamed)
answer still stops its generation."""

from __future__ import annotations

import json
import re
import socket
import threading
import urllib.parse

import pytest

from tests import utils
from launch.drain import POLL_S
from tests.utils import SHARED_STACKS, request, wait_until

pytestmark = [pytest.mark.slow, pytest.mark.shares_stack("serve")]
OVERRIDES, ENV = SHARED_STACKS["serve"]
EXPORT_S = int(ENV["RAY_metrics_report_interval_ms"]) / 1000
LONG = 2000  # tokens: far more than the engine generates in the seconds these tests wait


@pytest.fixture
def server(stacks):
    return stacks.get(OVERRIDES, ENV)


def scrape(server) -> str:
    code, out = request(server["metrics"], timeout=30)
    assert code == 200, out
    return out["raw"]


def engine_series(text: str, name: str) -> list[float]:
    """Values of ``name`` for the engine deployment's replicas."""
    return [float(v) for labels, v in re.findall(rf'^{name}\{{([^}}]*)\}} ([0-9.e+-]+)$',
                                                 text, re.M)
            if 'deployment="QwenVLServer:' in labels]


def generated(server) -> float:
    return utils.generated_tokens(server["metrics"])


def api_count(server, code: str) -> float:
    pat = re.compile(r'^ray_qwen_vl_requests_total\{([^}]*)\} ([0-9.e+-]+)$', re.M)
    return sum(float(v) for labels, v in pat.findall(scrape(server))
               if 'route="/v1/chat/completions"' in labels and f'code="{code}"' in labels)


def settled(read, what: str) -> float:
    """``read`` once it has taken what the replica's flush round and Ray's export added."""
    return utils.settled(read, EXPORT_S + POLL_S + 0.5, what)


def long_stream(server, done: threading.Event, started: threading.Event) -> threading.Thread:
    """A streamed chat of LONG tokens read until ``done``, then hung up on."""
    return utils.read_stream_until(server["base"], utils.chat_body(
        "Tell me a very long story.", max_tokens=LONG, ignore_eos=True, stream=True),
        started, done)


def test_api_requests_count_as_ongoing_but_skip_rays_request_wrapper(server):
    """While a stream runs Ray's ongoing-request gauge for the replica reads 1 (what the
    autoscaler and a stopping replica's drain wait read), and 0 once it ends; Ray's own
    per-request counter does not count it, the API's counter does (Ray's counts a request of
    its own at start-up, before the API serves)."""
    before = settled(lambda: api_count(server, "200"), "the API's counter")
    wrapped = sum(engine_series(scrape(server), "ray_serve_deployment_request_counter_total"))
    done, started = threading.Event(), threading.Event()
    reader = long_stream(server, done, started)
    try:
        assert started.wait(120), "the stream never began"
        wait_until(lambda: engine_series(scrape(server), "ray_serve_replica_processing_queries")
                   == [1.0], 60, interval=0.5, what="Ray's ongoing-request gauge at 1")
    finally:
        done.set()
        reader.join(60)
    assert not reader.is_alive()
    wait_until(lambda: engine_series(scrape(server), "ray_serve_replica_processing_queries")
               == [0.0], 60, interval=0.5, what="Ray's ongoing-request gauge back at 0")
    wait_until(lambda: api_count(server, "200") > before, 60, interval=0.5,
               what="the API's counter of the stream")
    assert settled(lambda: api_count(server, "200"), "the API's counter") == before + 1
    assert sum(engine_series(scrape(server), "ray_serve_deployment_request_counter_total")) \
        == wrapped, "Ray's per-request wrapper counted the stream"


def test_whole_answer_stops_generating_when_the_client_hangs_up(server):
    """A client waiting for a non-streamed LONG-token answer closes its connection once the
    engine generates: vLLM's handler sees the disconnect (the API counts a 499) and the engine
    stops, so far fewer than LONG tokens are generated."""
    hung_up = settled(lambda: api_count(server, "499"), "the API's counter")
    before = settled(lambda: generated(server), "the token counter")
    body = json.dumps(utils.chat_body("Tell me a very long story.", max_tokens=LONG,
                                      ignore_eos=True)).encode()
    url = urllib.parse.urlsplit(server["base"])
    sock = socket.create_connection((url.hostname, url.port), timeout=60)
    try:
        sock.sendall(b"POST /v1/chat/completions HTTP/1.1\r\nHost: x\r\n"
                     b"Content-Type: application/json\r\n"
                     + f"Content-Length: {len(body)}\r\n\r\n".encode() + body)
        wait_until(lambda: generated(server) > before, 60, interval=0.5,
                   what="the engine generating the answer")
    finally:
        sock.close()
    wait_until(lambda: api_count(server, "499") > hung_up, 60, interval=0.5,
               what="the API counting the hang-up")
    assert settled(lambda: api_count(server, "499"), "the API's counter") == hung_up + 1
    after = settled(lambda: generated(server), "the token counter")
    assert 0 < after - before < LONG / 2, (before, after)
