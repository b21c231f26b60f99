"""The operator side's pure pieces (``launch.cluster.lifecycle``): the URL a client uses, an HTTP GET
that never raises, what a failed deployment's status says, the progress line, the root cause
found in the engine workers' logs, and which sources need a download. Starting, deploying,
draining and stopping a real cluster are the e2e modules' (test_serve_e2e, test_cli,
test_local_cluster, test_scaleout_e2e)."""

from __future__ import annotations

import http.server
import threading
from types import SimpleNamespace

import pytest

from engine.config import parse_config
from launch.cluster import lifecycle


@pytest.mark.parametrize("host, url", [("0.0.0.0", "http://127.0.0.1:8000"),
                                       ("::", "http://127.0.0.1:8000"),
                                       ("10.1.2.3", "http://10.1.2.3:8000")])
def test_base_url_is_what_a_client_on_this_machine_dials(host, url):
    assert lifecycle.base_url(host, 8000) == url


@pytest.fixture(scope="module")
def server():
    class Handler(http.server.BaseHTTPRequestHandler):
        def log_message(self, *a):
            pass

        def do_GET(self):
            body = {"/ok": b'{"a": 1}', "/empty": b"", "/bad": b"not json",
                    "/503": b'{"error": "x"}'}[self.path]
            self.send_response(503 if self.path == "/503" else 200)
            self.end_headers()
            self.wfile.write(body)

    httpd = http.server.ThreadingHTTPServer(("127.0.0.1", 0), Handler)
    threading.Thread(target=httpd.serve_forever, daemon=True).start()
    yield f"http://127.0.0.1:{httpd.server_address[1]}"
    httpd.shutdown()


def test_http_get_answers_status_and_json_and_never_raises(server):
    assert lifecycle.http_get(server + "/ok") == (200, {"a": 1})
    assert lifecycle.http_get(server + "/empty") == (200, None)
    assert lifecycle.http_get(server + "/503") == (503, {"error": "x"})
    assert lifecycle.http_get(server + "/bad") == (0, None)
    assert lifecycle.http_get("http://127.0.0.1:9/nothing", timeout=2) == (0, None)


def status(app="RUNNING", message="", **deployments):
    return SimpleNamespace(status=app, message=message, deployments={
        name: SimpleNamespace(status=s, message=m, replica_states=r)
        for name, (s, m, r) in deployments.items()})


def test_failure_cause_is_the_first_replica_that_failed_to_start():
    assert lifecycle._failure_cause(None) is None
    assert lifecycle._failure_cause(status(e=("UPDATING", "", {"STARTING": 1}))) is None
    failed = status(e=("UPDATING", "A replica failed to start: EngineDeadError: out of memory\n"
                                   "Traceback...", {}))
    assert lifecycle._failure_cause(failed).startswith("A replica failed to start: "
                                                        "EngineDeadError: out of memory")
    assert "\n" not in lifecycle._failure_cause(failed)
    assert lifecycle._failure_cause(status("DEPLOY_FAILED", "app", e=(
        "DEPLOY_FAILED", "bad argument", {}))) == "bad argument"


def test_progress_line_counts_replicas_by_state():
    assert lifecycle._progress(None, 3) == "[    3s] deploying..."
    line = lifecycle._progress(status(e=("UPDATING", "", {"RUNNING": 1, "STARTING": 1})), 42)
    assert line == "[   42s] e: 1 RUNNING, 1 STARTING"


def test_root_cause_is_the_engine_workers_last_error_line(tmp_path):
    logs = tmp_path / "session_latest" / "logs"
    logs.mkdir(parents=True)
    assert lifecycle.root_cause_from_logs(str(tmp_path)) is None
    marker = lifecycle._ROOT_CAUSE_MARKERS[0]
    (logs / "worker-1.err").write_text(f"noise\n  {marker}: the first\n{marker} Warning: no\n"
                                       f"{marker}: the cause\n")
    assert lifecycle.root_cause_from_logs(str(tmp_path)) == f"{marker}: the cause"


@pytest.mark.parametrize("source, download", [
    ("embedded:qwen2-vl-tiny", False), ("Qwen/Qwen2-VL-2B-Instruct", True)])
def test_only_hub_sources_need_a_download(source, download):
    cfg = parse_config({"model": {"source": source, "served_name": "m"}})
    assert lifecycle.needs_download(cfg) is download
