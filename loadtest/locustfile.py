"""Locust users for the load tests: streamed OpenAI requests, one raw record per request.

The scenarios (``python -m loadtest``) run this file headless, one Locust run per measured step,
with a spec in the environment variable ``QWEN_VL_LOADTEST_SPEC`` (a JSON file path)::

    {"model": "...", "workload": {...loadtest.workload.Workload...}, "num_requests": 20,
     "records": "/path/records.jsonl", "tag": "c=4", "api_key": null, "timeout_s": 3600,
     "rate": null}

Each user takes the next request index until ``num_requests`` have been sent, so a run is a fixed
number of requests and ends when the last one has finished: no request is ever cut off. With a
``rate`` (requests/s), request ``i`` is sent ``i / rate`` seconds after the first: an open loop at
that rate, as long as a user is free. Every request is written to ``records`` (JSONL,
``loadtest.metrics.RequestRecord``) as it finishes; Locust's own statistics (rounded) are only
informative.

Interactively, against any deployment (web UI on :8089)::

    QWEN_VL_LOADTEST_SPEC=spec.json locust -f loadtest/locustfile.py --host http://HOST:8000
"""

from __future__ import annotations

import json
import os
import sys
import time
from pathlib import Path

import gevent
import requests
from locust import User, constant, events, task
from locust.exception import StopUser

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from loadtest.stream import post_streaming  # noqa: E402
from loadtest.workload import Workload, build_request  # noqa: E402

SPEC = json.loads(Path(os.environ["QWEN_VL_LOADTEST_SPEC"]).read_text())
WORKLOAD = Workload.model_validate(SPEC["workload"])
# Every request is built before the first is sent: building one (a random-pixel JPEG, its
# base64) is CPU work in this process's one event loop, which would hold up the reading of every
# stream in flight and show up as their latency.
REQUESTS = [build_request(WORKLOAD, SPEC["model"], SPEC.get("index_offset", 0) + i)
            for i in range(SPEC["num_requests"])]
STATE: dict = {"next": 0, "done": 0, "start": None}
RECORDS = open(SPEC["records"], "a", buffering=1)


class OpenAIStreamUser(User):
    wait_time = constant(0)

    def on_start(self):
        self.session = requests.Session()

    @task
    def one_request(self):
        index = STATE["next"]
        if index >= SPEC["num_requests"]:
            raise StopUser()
        STATE["next"] += 1
        if SPEC.get("rate"):
            if STATE["start"] is None:
                STATE["start"] = time.monotonic()
            gevent.sleep(max(0.0, STATE["start"] + index / SPEC["rate"] - time.monotonic()))
        path, body, kind, expected = REQUESTS[index]
        rec = post_streaming(self.session, self.host.rstrip("/") + path, body,
                             api_key=SPEC.get("api_key"), timeout=SPEC.get("timeout_s", 3600),
                             kind=kind, tag=SPEC.get("tag", ""), expected_prompt_tokens=expected)
        RECORDS.write(rec.to_json() + "\n")
        self.environment.events.request.fire(
            request_type="POST", name=f"{path} [{kind}]", response_time=rec.latency * 1000,
            response_length=rec.output_tokens, context={},
            exception=None if rec.success else RuntimeError(rec.error))
        STATE["done"] += 1
        if STATE["done"] >= SPEC["num_requests"]:
            gevent.spawn(self.environment.runner.quit)


@events.quitting.add_listener
def _close(environment, **_kw):
    RECORDS.close()
