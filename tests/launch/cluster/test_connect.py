"""``launch.cluster.connect``: the URL a client uses and an HTTP GET that never raises."""

from __future__ import annotations

import http.server
import threading

import pytest

from launch.cluster import connect


@pytest.mark.parametrize("host, url", [("0.0.0.0", "http://127.0.0.1:8000"),
                                       ("::", "http://127.0.0.1:8000"),
                                       ("10.1.2.3", "http://10.1.2.3:8000")])
def test_base_url_is_what_a_client_on_this_machine_dials(host, url):
    assert connect.base_url(host, 8000) == url


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
    assert connect.http_get(server + "/ok") == (200, {"a": 1})
    assert connect.http_get(server + "/empty") == (200, None)
    assert connect.http_get(server + "/503") == (503, {"error": "x"})
    assert connect.http_get(server + "/bad") == (0, None)
    assert connect.http_get("http://127.0.0.1:9/nothing", timeout=2) == (0, None)


def test_progress_lines_are_printed_bare_once_a_cli_asks(monkeypatch):
    import io
    import logging

    log = connect.progress_log
    monkeypatch.setattr(log, "handlers", [])
    monkeypatch.setattr(log, "propagate", False)
    monkeypatch.setattr(log, "level", logging.NOTSET)
    out = io.StringIO()
    log.info("before")  # no CLI has asked: nothing printed
    connect.print_progress(out)
    connect.print_progress(out)  # a second call adds no second handler
    log.info("draining: 1 requests still running")
    assert out.getvalue() == "draining: 1 requests still running\n"
    assert len(log.handlers) == 1 and log.level == logging.INFO
