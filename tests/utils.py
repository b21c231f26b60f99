"""Helpers the tests share: the CLI and a stack on free ports, HTTP calls and SSE streams,
polling, a local media server, encoded images and videos (valid edge cases and broken ones),
and a two-node cluster with the calls its tests make.

Fixtures live in ``conftest.py``; everything here is a plain function or class."""

from __future__ import annotations

import base64
import io
import json
import os
import re
import signal
import struct
import subprocess
import sys
import threading
import time
import urllib.error
import urllib.request
import zlib
from pathlib import Path
from typing import Any, Callable

import numpy as np
from PIL import Image

ROOT = Path(__file__).resolve().parent.parent
MODEL = "qwen2-vl-tiny"  # the served name of configs/default.yaml's embedded model
CONFIGS = ROOT / "configs"


# --------------------------------------------------------------------------------- HTTP
class Reply(tuple):
    """``(status, body)``: the JSON body, or ``{"raw": text}`` when it is not JSON; the
    response headers as ``.headers``."""

    headers: Any

    def __new__(cls, status: int, body: Any, headers: Any):
        reply = super().__new__(cls, (status, body))
        reply.headers = headers
        return reply



def config_with(**sections) -> dict:
    """The smallest config (the tiny embedded model), with ``sections`` merged in: a mapping
    for ``parse_config``."""
    data = {"model": {"source": "embedded:qwen2-vl-tiny", "served_name": "m"}}
    for section, values in sections.items():
        data.setdefault(section, {}).update(values)
    return data


AWQ_QUANT_CONFIG = {"quant_method": "awq", "bits": 4, "group_size": 128, "zero_point": True}


def local_checkpoint(path: Path, quantization_config: dict | None = None,
                     hidden: int = 256) -> str:
    """A checkpoint directory holding only a ``config.json`` (what the checks read): a small
    language model's sizes, quantized as ``quantization_config`` says. Returns its path."""
    cfg: dict = {"text_config": {"hidden_size": hidden, "intermediate_size": 512,
                                 "num_attention_heads": 2, "num_key_value_heads": 1}}
    if quantization_config:
        cfg["quantization_config"] = quantization_config
    path.mkdir(parents=True, exist_ok=True)
    (path / "config.json").write_text(json.dumps(cfg))
    return str(path)


def request(base: str, path: str = "", body: Any = None, *, raw: bytes | None = None,
            key: str | None = None, headers: dict | None = None, method: str | None = None,
            content_type: str = "application/json", timeout: float = 120) -> Reply:
    """One HTTP call; an HTTP error status is an answer, not an exception (network errors
    still raise)."""
    data = raw if raw is not None else (json.dumps(body).encode() if body is not None else None)
    hdrs = {"Content-Type": content_type, **(headers or {})}
    if key:
        hdrs["Authorization"] = f"Bearer {key}"
    req = urllib.request.Request(base + path, data, hdrs, method=method)
    try:
        with urllib.request.urlopen(req, timeout=timeout) as r:
            status, payload, got = r.status, r.read(), r.headers
    except urllib.error.HTTPError as e:
        status, payload, got = e.code, e.read(), e.headers
    try:
        return Reply(status, json.loads(payload or b"null"), got)
    except ValueError:
        return Reply(status, {"raw": payload.decode(errors="replace")}, got)


def stream_events(base: str, path: str, body: dict, *, key: str | None = None,
                  on_event: Callable[[str], Any] | None = None,
                  on_open: Callable[[], Any] | None = None, timeout: float = 600) -> list[str]:
    """The ``data:`` payloads of an SSE response, in order (``[DONE]`` included);
    ``on_event`` sees each as it arrives, ``on_open`` the response's start (status 200 and
    headers received). An HTTP error status raises ``HTTPError``."""
    hdrs = {"Content-Type": "application/json"}
    if key:
        hdrs["Authorization"] = f"Bearer {key}"
    req = urllib.request.Request(base + path, json.dumps(body).encode(), hdrs)
    events = []
    with urllib.request.urlopen(req, timeout=timeout) as r:
        if on_open is not None:
            on_open()
        for line in r:
            line = line.decode().strip()
            if line.startswith("data: "):
                events.append(line[6:])
                if on_event is not None:
                    on_event(line[6:])
    return events


def wait_until(check: Callable[[], Any], timeout: float, interval: float = 0.5,
               what: str = "condition") -> Any:
    """Poll ``check`` until it returns something truthy; its last value on success."""
    deadline = time.monotonic() + timeout
    while True:
        value = check()
        if value:
            return value
        if time.monotonic() > deadline:
            raise AssertionError(f"{what} not reached in {timeout:.0f}s")
        time.sleep(interval)


def settled(read: Callable[[], float], interval: float, what: str) -> float:
    """A counter Ray exports on an interval, once two reads ``interval`` apart agree: what
    earlier requests added has arrived."""
    last = [None]

    def check():
        now = read()
        same, last[0] = now == last[0], now
        return same and (now,)
    return wait_until(check, 180, interval=interval, what=f"{what} settled")[0]


def generated_tokens(metrics_url: str) -> float:
    """The engine's generated-token counter, summed over its series."""
    text = request(metrics_url, "", timeout=30)[1]["raw"]
    return sum(float(line.rsplit(" ", 1)[1]) for line in text.splitlines()
               if line.startswith("ray_vllm_generation_tokens_total"))


def read_stream_until(base: str, body: dict, started: threading.Event,
                      done: threading.Event) -> threading.Thread:
    """A thread reading a streamed chat until ``done``, then hanging up; ``started`` is set at
    its first event (or when it ends without one)."""
    req = urllib.request.Request(base + "/v1/chat/completions", json.dumps(body).encode(),
                                 {"Content-Type": "application/json"})

    def read():
        with urllib.request.urlopen(req, timeout=120) as r:
            for line in r:
                if line.startswith(b"data: "):
                    started.set()
                if done.is_set():
                    break
        started.set()

    reader = threading.Thread(target=read, daemon=True)
    reader.start()
    return reader


def rejected_by(fn: Callable[[], Any], param: str | None, match: str, status: int = 400):
    """``fn()`` raises the front door's ``RequestRejected`` with ``status``, ``param`` and a
    message matching ``match``; returns it."""
    import pytest

    from launch.api.rejections import RequestRejected

    with pytest.raises(RequestRejected, match=match) as exc:
        fn()
    assert (exc.value.status, exc.value.param) == (status, param), \
        (exc.value.status, exc.value.param, exc.value.message)
    return exc.value


def wait_ready(ready: threading.Event, proc: subprocess.Popen, lines: list[str],
               timeout: float, what: str) -> None:
    """Wait for ``ready`` (set by a thread reading ``proc``'s output into ``lines``) while
    ``proc`` runs; its last lines in the failure."""
    deadline = time.monotonic() + timeout
    while not ready.wait(2):
        if proc.poll() is not None:
            raise AssertionError(f"{what} exited:\n" + "".join(lines[-40:]))
        if time.monotonic() > deadline:
            raise AssertionError(f"{what} not ready in {timeout:.0f}s:\n" + "".join(lines[-40:]))


def is_openai_error(body: Any) -> bool:
    return isinstance(body, dict) and isinstance(body.get("error"), dict) and \
        set(body["error"]) == {"message", "type", "param", "code"} and \
        isinstance(body["error"]["message"], str) and body["error"]["message"] != "" and \
        (body["error"]["param"] is None or isinstance(body["error"]["param"], str))


def qwen_video_frames(total_frames: int, fps: float, height: int, width: int, *,
                      video_fps: float, max_frames: int, min_pixels: int, max_pixels: int,
                      total_pixels: float | None = None) -> tuple[int, int, int]:
    """(frames, height, width) of a video by qwen-vl-utils' ``fetch_video`` rules, with its own
    functions and constants (independent of launch.api.video): frames by ``smart_nframes``, the
    per-frame bound from ``total_pixels``, the frame size by ``smart_resize``."""
    from qwen_vl_utils.vision_process import (
        FRAME_FACTOR,
        VIDEO_MAX_TOKEN_NUM,
        smart_nframes,
        smart_resize,
    )

    n = smart_nframes({"fps": video_fps, "max_frames": max_frames}, total_frames=total_frames,
                      video_fps=fps)
    if total_pixels is not None:
        bound = max(min(VIDEO_MAX_TOKEN_NUM * 28 * 28, total_pixels / n * FRAME_FACTOR),
                    int(min_pixels * 1.05))
        max_pixels = min(max_pixels, bound)
    h, w = smart_resize(height, width, factor=28, min_pixels=min_pixels, max_pixels=max_pixels)
    return n, h, w


def video_tokens(total_frames: int, fps: float, height: int, width: int, **settings) -> int:
    """A video's pad tokens by qwen-vl-utils (``qwen_video_frames``): two frames a temporal
    patch, one token per 28x28 pixels."""
    n, h, w = qwen_video_frames(total_frames, fps, height, width, **settings)
    return (n + 1) // 2 * (h // 28) * (w // 28)


# ------------------------------------------------------------------ CLI, stacks, media server
def run_cli(*args: str, env: dict | None = None, timeout: float = 1200) -> subprocess.CompletedProcess:
    return subprocess.run(
        [sys.executable, "-m", "launch.cli", *args],
        capture_output=True, text=True, timeout=timeout, cwd=ROOT,
        env={**os.environ, **(env or {})},
    )


def write_config(tmp: Path, overrides: dict | None = None) -> tuple[Path, dict]:
    """configs/default.yaml with per-section overrides and free API/metrics ports."""
    import yaml

    from launch.cluster.local_cluster import free_port

    data = yaml.safe_load((CONFIGS / "default.yaml").read_text())
    for section, values in (overrides or {}).items():
        data.setdefault(section, {}).update(values)
    data["server"].update(port=free_port(), metrics_port=free_port())
    path = tmp / "config.yaml"
    path.write_text(yaml.safe_dump(data))
    return path, data


def ensure_prometheus() -> str:
    """The directory of Debian's ``prometheus`` and ``promtool`` (``make install`` installs
    them); fails the test, saying so, when they are missing."""
    import shutil

    found = shutil.which("promtool")
    if not (found and shutil.which("prometheus")):
        raise AssertionError("prometheus and promtool are not installed: run `make install` "
                             "(it installs Debian's prometheus package)")
    return str(Path(found).parent)


def start_stack(tmp: Path, overrides: dict | None = None, env: dict | None = None) -> dict:
    """`qwen-vl serve --detach` with the default config (plus overrides) on free ports."""
    from engine.config import parse_config

    cfg_path, data = write_config(tmp, overrides)
    port, metrics_port = data["server"]["port"], data["server"]["metrics_port"]
    env = {"QWEN_VL_RUN_DIR": str(tmp / "run"), **(env or {})}
    r = run_cli("serve", "--config", str(cfg_path), "--detach", env=env, timeout=1200)
    assert r.returncode == 0, f"serve failed:\n{r.stdout[-3000:]}\n{r.stderr[-3000:]}"
    assert "ready: http://127.0.0.1:" in r.stdout and "curl -s" in r.stdout
    cfg = parse_config(data)
    return {"base": f"http://127.0.0.1:{port}", "model": cfg.model.served_name, "cfg": cfg,
            "metrics": f"http://127.0.0.1:{metrics_port}/metrics", "env": env,
            "cfg_path": str(cfg_path)}


def stop_stack(info: dict) -> None:
    """`qwen-vl stop`, then check that no process of the cluster is left."""
    from launch.cluster.local_cluster import cluster_processes, read_state

    state = read_state(Path(info["env"]["QWEN_VL_RUN_DIR"]))
    stop = run_cli("stop", env=info["env"], timeout=300)
    assert stop.returncode == 0, stop.stderr
    assert state is not None and cluster_processes(state) == [], "processes left after stop"


class Stack:
    """A running stack, as vLLM's ``tests/utils.py`` ``RemoteOpenAIServer`` is a running
    server: ``qwen-vl serve --detach`` with the default config plus ``overrides``, on free
    ports, in a folder of its own. A context manager (started on entry, stopped and checked for
    leftover processes on exit); ``stack["base"]`` etc. read the started stack's facts
    (``start_stack``'s dict)."""

    def __init__(self, tmp: Path, overrides: dict | None = None, env: dict | None = None):
        self.tmp, self.overrides, self.extra_env = tmp, overrides or {}, env
        self.info: dict | None = None
        self.starts = 0

    def start(self) -> "Stack":
        self.starts += 1
        folder = self.tmp / f"start-{self.starts}"
        folder.mkdir(parents=True, exist_ok=True)
        self.info = start_stack(folder, self.overrides, self.extra_env)
        return self

    def stop(self) -> None:
        info, self.info = self.info, None
        if info is not None:
            stop_stack(info)

    def restart(self) -> "Stack":
        self.stop()
        return self.start()

    def alive(self) -> bool:
        from launch.cluster.local_cluster import cluster_processes, read_state

        if self.info is None:
            return False
        state = read_state(Path(self.info["env"]["QWEN_VL_RUN_DIR"]))
        return state is not None and bool(cluster_processes(state))

    def __getitem__(self, key: str):
        assert self.info is not None, "the stack is not running"
        return self.info[key]

    def __setitem__(self, key: str, value) -> None:  # a module's own facts beside the stack's
        assert self.info is not None, "the stack is not running"
        self.info[key] = value

    def __enter__(self) -> "Stack":
        return self.start()

    def __exit__(self, *exc) -> None:
        self.stop()

    @property
    def cfg(self):
        return self["cfg"]

    @property
    def metrics_url(self) -> str:
        return self["metrics"]

    def url_for(self, *parts: str) -> str:
        return "/".join([self["base"].rstrip("/"), *(p.strip("/") for p in parts)])

    def client(self, api_key: str = "unused", **kw):
        """The official OpenAI client, pointed at the stack."""
        from openai import OpenAI

        return OpenAI(base_url=self.url_for("v1"), api_key=api_key, **kw)


# A drain test holds its request in the front door on an image URL its own server
# (``MediaServer`` on 127.0.0.2, ``/held/``) answers late: that one address over plain http,
# with a fetch deadline longer than a stop takes to begin.
HELD_MEDIA_LIMITS = {"url": {"schemes": ["https", "http", "data"],
                             "allowed_networks": ["127.0.0.2/32"], "fetch_timeout_s": 300}}

# Stacks that tests of several modules share (``@pytest.mark.shares_stack(name)``: conftest runs
# them one after another, so one start serves them all): name -> (overrides, environment).
SHARED_STACKS = {
    # The serve module's and the load scenarios' running stack: a long drain timeout (the drain
    # test stops it while a request runs) and Ray's metrics exported every second (its default
    # is 10 s), so a counter read settles within seconds; the drain test's held request.
    "serve": ({"deployment": {"drain_timeout_s": 300}, "limits": HELD_MEDIA_LIMITS},
              {"RAY_metrics_report_interval_ms": "1000"}),
}


class Stacks:
    """Stacks keyed by their overrides, for modules that need the same one to share one start.
    One runs at a time (two stacks on two cores slow each other): asking for another stops the
    one running."""

    def __init__(self, tmp_factory):
        self.tmp_factory = tmp_factory
        self.running: tuple[str, Stack] | None = None

    def get(self, overrides: dict | None = None, env: dict | None = None) -> Stack:
        key = json.dumps([overrides or {}, env or {}], sort_keys=True)
        if self.running is not None and self.running[0] == key and self.running[1].alive():
            return self.running[1]
        self.close()
        stack = Stack(self.tmp_factory.mktemp("stack"), overrides, env).start()
        self.running = (key, stack)
        return stack

    def take(self, overrides: dict | None = None, env: dict | None = None) -> Stack:
        """``get``, for a test that ends the stack itself (a stop or drain test): it is no
        longer held, and the next ``get`` starts another."""
        stack = self.get(overrides, env)
        self.running = None
        return stack

    def close(self) -> None:
        running, self.running = self.running, None
        if running is not None:
            running[1].stop()


class Reusable:
    """A module's expensive server, started on first use and started again when a test has
    ended it (a stop or drain test), so the module's tests pass in any order. ``get()`` for a
    test that uses it; ``take()`` for one that ends it (then ``close`` leaves it alone)."""

    def __init__(self, start: Callable[[], dict], stop: Callable[[dict], None],
                 alive: Callable[[dict], bool] = lambda info: True):
        self._start, self._stop, self._alive = start, stop, alive
        self.info: dict | None = None

    def get(self) -> dict:
        if self.info is not None and not self._alive(self.info):
            self.close()
        if self.info is None:
            self.info = self._start()
        return self.info

    def take(self) -> dict:
        info = self.get()
        self.info = None
        return info

    def close(self) -> None:
        info, self.info = self.info, None
        if info is not None:
            self._stop(info)


class MediaServer:
    """A real HTTP server for media URLs: files, redirects (slow ones too), slow, dripping,
    endless and held responses."""

    def __init__(self, host: str, files: dict[str, bytes], tls=None):
        """``tls``: an ``ssl.SSLContext`` to serve HTTPS with (``tls_context``)."""
        import http.server
        import threading
        import time

        self.files = files
        self.redirects: dict[str, str] = {}
        # /held/<file>: ``held`` is set when the request arrives, the answer waits for ``release``
        self.held, self.release = threading.Event(), threading.Event()
        outer = self

        class Handler(http.server.BaseHTTPRequestHandler):
            def log_message(self, *a):
                pass

            def do_GET(self):
                if self.path in outer.redirects:
                    self.send_response(302)
                    self.send_header("Location", outer.redirects[self.path])
                    self.end_headers()
                elif self.path == "/slow":
                    time.sleep(5)
                    self.send_response(200)
                    self.end_headers()
                elif self.path.startswith("/sleep/"):  # /sleep/<seconds>/<file>
                    _, _, secs, name = self.path.split("/", 3)
                    time.sleep(float(secs))
                    body = outer.files.get("/" + name, b"")
                    self.send_response(200 if body else 404)
                    self.send_header("Content-Length", str(len(body)))
                    self.end_headers()
                    self.wfile.write(body)
                elif self.path.startswith("/held/"):  # /held/<file>: answers once released
                    outer.held.set()
                    outer.release.wait(600)
                    body = outer.files.get(self.path[len("/held"):], b"")
                    self.send_response(200 if body else 404)
                    self.send_header("Content-Length", str(len(body)))
                    self.end_headers()
                    self.wfile.write(body)
                elif self.path.startswith("/r/"):  # /r/<seconds>/<rest>: waits, then 302 to /<rest>
                    _, _, secs, rest = self.path.split("/", 3)
                    time.sleep(float(secs))
                    self.send_response(302)
                    self.send_header("Location", "/" + rest)
                    self.end_headers()
                elif self.path.startswith("/drip/"):  # /drip/<bytes>: answers at once, then
                    n = int(self.path.split("/")[2])  # one byte every 0.5 s
                    self.send_response(200)
                    self.send_header("Content-Length", str(n))
                    self.end_headers()
                    try:
                        for _ in range(n):
                            self.wfile.write(b"\0")
                            self.wfile.flush()
                            time.sleep(0.5)
                    except OSError:
                        pass
                elif self.path == "/endless":  # no Content-Length, more bytes than any cap
                    self.send_response(200)
                    self.end_headers()
                    try:
                        for _ in range(4096):
                            self.wfile.write(b"\0" * 65536)
                    except OSError:
                        pass
                elif self.path in outer.files:
                    body = outer.files[self.path]
                    self.send_response(200)
                    self.send_header("Content-Length", str(len(body)))
                    self.end_headers()
                    self.wfile.write(body)
                else:
                    self.send_response(404)
                    self.end_headers()

        class Server(http.server.ThreadingHTTPServer):
            def handle_error(self, request, client_address):
                # A client that hangs up early (the front door refusing an oversized or slow
                # answer) is what several tests provoke: not printed. A printed traceback
                # would also parse source in this thread (3.11's caret anchors), racing the
                # test thread's own parsing in CPython's AST constructor (gh-106905).
                if not isinstance(sys.exc_info()[1], ConnectionError):
                    super().handle_error(request, client_address)

        self.httpd = Server((host, 0), Handler)
        self.httpd.daemon_threads = True
        if tls is not None:
            self.httpd.socket = tls.wrap_socket(self.httpd.socket, server_side=True)
        self.url = f"{'https' if tls else 'http'}://{host}:{self.httpd.server_address[1]}"
        threading.Thread(target=self.httpd.serve_forever, daemon=True).start()

    def close(self):
        self.httpd.shutdown()


def make_ca(tmp: Path, name: str = "qwen-vl-serving test CA"):
    """A throwaway certificate authority: (key, certificate, path of its PEM)."""
    import datetime

    from cryptography import x509
    from cryptography.hazmat.primitives import hashes, serialization
    from cryptography.hazmat.primitives.asymmetric import ec
    from cryptography.x509.oid import NameOID

    key = ec.generate_private_key(ec.SECP256R1())
    subject = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, name)])
    now = datetime.datetime.now(datetime.timezone.utc)
    cert = (x509.CertificateBuilder().subject_name(subject).issuer_name(subject)
            .public_key(key.public_key()).serial_number(x509.random_serial_number())
            .not_valid_before(now - datetime.timedelta(hours=1))
            .not_valid_after(now + datetime.timedelta(days=1))
            .add_extension(x509.BasicConstraints(ca=True, path_length=None), critical=True)
            .sign(key, hashes.SHA256()))
    path = tmp / f"{name.replace(' ', '-')}.pem"
    path.write_bytes(cert.public_bytes(serialization.Encoding.PEM))
    return key, cert, path


def tls_context(tmp: Path, ca, dns_name: str):
    """A server ``ssl.SSLContext`` whose certificate, for ``dns_name``, ``ca`` signed."""
    import datetime
    import ssl

    from cryptography import x509
    from cryptography.hazmat.primitives import hashes, serialization
    from cryptography.hazmat.primitives.asymmetric import ec
    from cryptography.x509.oid import NameOID

    ca_key, ca_cert, _ = ca
    key = ec.generate_private_key(ec.SECP256R1())
    now = datetime.datetime.now(datetime.timezone.utc)
    cert = (x509.CertificateBuilder()
            .subject_name(x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, dns_name)]))
            .issuer_name(ca_cert.subject).public_key(key.public_key())
            .serial_number(x509.random_serial_number())
            .not_valid_before(now - datetime.timedelta(hours=1))
            .not_valid_after(now + datetime.timedelta(days=1))
            .add_extension(x509.SubjectAlternativeName([x509.DNSName(dns_name)]), critical=False)
            .sign(ca_key, hashes.SHA256()))
    pem = tmp / f"{dns_name}-{x509.random_serial_number()}.pem"
    pem.write_bytes(cert.public_bytes(serialization.Encoding.PEM) + key.private_bytes(
        serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8,
        serialization.NoEncryption()))
    ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    ctx.load_cert_chain(pem)
    return ctx


# ------------------------------------------------------------------------- images, videos
def noise(h: int, w: int, seed: int = 0, mode: str = "RGB") -> Image.Image:
    arr = (np.random.RandomState(seed).rand(h, w, 3) * 255).astype("uint8")
    return Image.fromarray(arr).convert(mode)


def encode(img: Image.Image, fmt: str, **kw) -> bytes:
    buf = io.BytesIO()
    img.save(buf, fmt, **kw)
    return buf.getvalue()


def data_url(data: bytes, mime: str) -> str:
    return f"data:{mime};base64," + base64.b64encode(data).decode()


def png(h: int, w: int, seed: int = 0) -> bytes:
    return encode(noise(h, w, seed), "PNG")


def gradient_png(h: int, w: int) -> bytes:
    """A smooth image: small as PNG even at thousands of pixels a side."""
    yy, xx = np.mgrid[0:h, 0:w]
    arr = np.stack([xx * 255 // max(w - 1, 1), yy * 255 // max(h - 1, 1),
                    (xx + yy) % 256], -1).astype("uint8")
    return encode(Image.fromarray(arr), "PNG")


def png_url(h: int, w: int, seed: int = 0) -> str:
    """A noise PNG as a data URL."""
    return data_url(png(h, w, seed), "image/png")


def jpeg(h: int, w: int, seed: int = 0, **kw) -> bytes:
    return encode(noise(h, w, seed), "JPEG", quality=90, **kw)


def png_header_only(w: int, h: int) -> bytes:
    """A PNG that declares w x h pixels (a decompression bomb's header) with a tiny body."""
    def chunk(kind: bytes, payload: bytes) -> bytes:
        return struct.pack(">I", len(payload)) + kind + payload + struct.pack(
            ">I", zlib.crc32(kind + payload) & 0xFFFFFFFF)
    ihdr = struct.pack(">IIBBBBB", w, h, 8, 0, 0, 0, 0)
    return (b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", ihdr) + chunk(b"IDAT", zlib.compress(b"\0" * 64))
            + chunk(b"IEND", b""))


def truncated_jpeg() -> bytes:
    data = jpeg(200, 200, seed=3)
    return data[: len(data) // 2]


def corrupt_jpeg() -> bytes:
    data = bytearray(jpeg(200, 200, seed=4))
    for i in range(600, len(data) - 10, 7):
        data[i] = 0xFF  # markers everywhere in the entropy-coded data
    return bytes(data)


def grayscale() -> bytes:
    return encode(noise(64, 80, 5, "L"), "PNG")


def rgba() -> bytes:
    img = noise(64, 80, 6).convert("RGBA")
    img.putalpha(128)
    return encode(img, "PNG")


def cmyk_jpeg() -> bytes:
    return encode(noise(64, 80, 7).convert("CMYK"), "JPEG")


def png16() -> bytes:
    arr = (np.random.RandomState(8).rand(64, 80) * 65535).astype("uint16")
    img = Image.fromarray(arr)  # mode I;16
    data = encode(img, "PNG")
    assert Image.open(io.BytesIO(data)).mode.startswith("I"), "not a 16-bit PNG"
    return data


def exif_rotated_jpeg(h: int = 100, w: int = 300) -> bytes:
    """Stored as h x w with EXIF orientation 6 (rotate 90): displayed as w x h."""
    img = noise(h, w, 9)
    exif = img.getexif()
    exif[0x0112] = 6
    return encode(img, "JPEG", exif=exif.tobytes())


def webp() -> bytes:
    return encode(noise(64, 80, 10), "WEBP")


def animated_gif() -> bytes:
    frames = [noise(64, 64, s).convert("P") for s in range(3)]
    buf = io.BytesIO()
    frames[0].save(buf, "GIF", save_all=True, append_images=frames[1:], duration=100, loop=0)
    return buf.getvalue()


def mp4(seconds: float, fps: float = 4, size: int = 64, width: int | None = None,
        height: int | None = None, pattern: bool = False) -> bytes:
    """An MPEG-4 clip of the given duration (PyAV): noise frames, or with ``pattern`` a moving
    gradient (compresses well: minutes of video in a few hundred KB)."""
    from fractions import Fraction

    import av

    w, h = width or size, height or size
    ramp = np.add.outer(np.arange(h), np.arange(w)).astype("uint16")
    buf = io.BytesIO()
    with av.open(buf, "w", format="mp4") as container:
        stream = container.add_stream("mpeg4", rate=Fraction(fps).limit_denominator(1000))
        stream.width, stream.height = w, h
        stream.pix_fmt = "yuv420p"
        for i in range(round(seconds * fps)):
            if pattern:
                arr = ((ramp + 3 * i) % 256).astype("uint8")
                img = Image.fromarray(np.stack([arr, arr[::-1], np.full_like(arr, i % 256)], -1))
            else:
                img = noise(h, w, i)
            for packet in stream.encode(av.VideoFrame.from_image(img)):
                container.mux(packet)
        for packet in stream.encode():
            container.mux(packet)
    return buf.getvalue()


# --------------------------------------------------------------------------- content parts
def image_part(url: str) -> dict:
    return {"type": "image_url", "image_url": {"url": url}}


def image_data_part(data: bytes, mime: str = "image/png") -> dict:
    return image_part(data_url(data, mime))


def video_data_part(data: bytes, mime: str = "video/mp4") -> dict:
    return {"type": "video_url", "video_url": {"url": data_url(data, mime)}}


def frames_part(n: int, size: int = 56) -> dict:
    """A video as ``n`` JPEG frames (vLLM's ``data:video/jpeg;base64,f1,f2,...``)."""
    payload = ",".join(base64.b64encode(jpeg(size, size, seed=s)).decode() for s in range(n))
    return {"type": "video_url", "video_url": {"url": "data:video/jpeg;base64," + payload}}


def image_from_data_url(url: str) -> Image.Image:
    return Image.open(io.BytesIO(base64.b64decode(url.split(",", 1)[1]))).convert("RGB")


def doc_pages() -> list[Path]:
    """Every Markdown page a reader sees: the README, the docs site's pages and the chart's
    README."""
    return [ROOT / "README.md", ROOT / "helm" / "qwen-vl-serving" / "README.md",
            *sorted((ROOT / "docs").rglob("*.md"))]


def documented_metrics() -> set[str]:
    """Every exported metric name the pages name in backticks (a histogram by its base name)."""
    names = set()
    for page in doc_pages():
        names |= set(re.findall(r"`(ray_[a-z0-9_]+[a-z0-9])[`{]", page.read_text()))
    return names


def stack_metric_names() -> set[str]:
    """The names Ray exports the stack's own metrics under, read from the calls that define
    them (``ray_`` prefixed; counters with ``_total``)."""
    names = set()
    for path in (ROOT / "launch").rglob("*.py"):
        for kind, name in re.findall(r"(inc_counter|set_gauge|Counter)\(\s*\"(qwen_vl_\w+)\"",
                                     path.read_text()):
            names.add(f"ray_{name}{'_total' if kind in ('inc_counter', 'Counter') else ''}")
    return names


_FENCE = re.compile(r"^```(\w*)[^\n]*\n(.*?)^```", re.S | re.M)


def fenced_blocks(text: str) -> list[tuple[str, str, str]]:
    """(language, body, the line just before the fence) for every fenced block."""
    out = []
    for m in _FENCE.finditer(text):
        before = text[:m.start()].rstrip("\n").rsplit("\n", 1)[-1]
        out.append((m.group(1), m.group(2), before))
    return out


def commands(body: str) -> list[str]:
    """A shell block's commands: continuations joined, comments and prompts dropped."""
    joined = re.sub(r"\\\n\s*", " ", body)
    out = []
    for line in joined.splitlines():
        line = line.strip().removeprefix("$ ")
        if line and not line.startswith("#"):
            out.append(line)
    return out

# ------------------------------------------------------------ a two-node cluster (scale-out)
# ``tests/launch/conftest.py``'s ``two_nodes``: `qwen-vl serve` in the foreground on the head,
# `qwen-vl join` for the worker, one engine replica on each.
ENGINE = f"QwenVLServer:{MODEL}"


def call(base, body=None, path="/v1/chat/completions", timeout=120):
    """(status, json body or None, headers: case-insensitive); raises only for network errors."""
    r = request(base, path, body, timeout=timeout)
    return r[0], r[1], r.headers


def chat_body(content: str | list, *, max_tokens: int = 8, role: str = "user", **kw) -> dict:
    """A chat completion request of one message (``content``: a string or a list of parts),
    greedy; ``kw`` adds or overrides fields (``stream``, ``tools``, ``model``...)."""
    return {"model": MODEL, "messages": [{"role": role, "content": content}],
            "max_tokens": max_tokens, "temperature": 0, **kw}


def with_text(*parts: dict, text: str = "Describe this.") -> list[dict]:
    """Content parts (images, videos) followed by the question as a text part."""
    return [*parts, {"type": "text", "text": text}]


def chat(max_tokens=8, image=False, **kw):
    """A small chat, with one 56x56 PNG as a data URL when ``image``."""
    parts = [{"type": "image_url", "image_url": {"url": data_url(png(56, 56, seed=3),
                                                                 "image/png")}}] if image else []
    return chat_body(with_text(*parts), max_tokens=max_tokens, **kw)


def stream_chunks(events: list[str]) -> list[dict]:
    """The chunks of a stream that ended as OpenAI's protocol says (every event JSON, then
    ``[DONE]``); fails naming the last events otherwise."""
    assert events and events[-1] == "[DONE]", f"the stream did not end with [DONE]: {events[-3:]}"
    return [json.loads(e) for e in events[:-1]]


def stream_usage(events: list[str]) -> dict:
    """The usage a complete stream ends with (``stream_options.include_usage``)."""
    usage = stream_chunks(events)[-1].get("usage")
    assert usage, f"the stream's last chunk carries no usage: {events[-2:]}"
    return usage


def stream(base, max_tokens, started: threading.Event | None = None, timeout=600,
           image_url: str | None = None) -> dict:
    """A streamed chat (with one image by URL when ``image_url``); returns its events, or the
    error that ended it (``opened``: whether the response had begun, status 200 and headers
    received, before it)."""
    parts = [image_part(image_url)] if image_url else []
    body = chat_body(with_text(*parts), max_tokens=max_tokens, ignore_eos=True, stream=True,
                     stream_options={"include_usage": True})
    events: list[str] = []
    opened: list[bool] = []
    try:
        stream_events(base, "/v1/chat/completions", body, timeout=timeout,
                      on_event=lambda e: (events.append(e), started and started.set()),
                      on_open=lambda: opened.append(True))
    except urllib.error.HTTPError as err:  # refused before the stream started
        try:
            body = json.loads(err.read())
        except ValueError:
            body = None
        return {"events": events, "status": err.code, "body": body,
                "retry_after": err.headers.get("Retry-After")}
    except Exception as err:  # recorded, judged by the test
        return {"events": events, "exception": repr(err), "opened": bool(opened)}
    return {"events": events}


def outcome(result: dict, max_tokens: int) -> str:
    """'ok', 'error:<code>' for a clean OpenAI error end, or 'BAD: ...'."""
    events = result["events"]
    if "exception" in result:
        return f"BAD: {result['exception']}"
    if "status" in result:
        err = (result["body"] or {}).get("error") or {}
        ok = result["status"] == 503 and result["retry_after"] and set(err) == {
            "message", "type", "param", "code"}
        return f"error:{err.get('code')}" if ok else f"BAD: {result['status']} {result['body']}"
    if not events or events[-1] != "[DONE]":
        return f"BAD: no [DONE] ({events[-2:]})"
    last = json.loads(events[-2])
    if "error" in last:
        err = last["error"]
        return f"error:{err.get('code')}" if set(err) == {"message", "type", "param", "code"} \
            else f"BAD: {last}"
    if last.get("usage", {}).get("completion_tokens") != max_tokens:
        return f"BAD: usage {last.get('usage')}"
    return "ok"


def health(base):
    code, body, headers = call(base, path="/health", timeout=30)
    return code, body


def start_cluster(tmp: Path) -> dict:
    """`qwen-vl serve` in the foreground starts the head; `qwen-vl join` adds the worker."""
    from launch.cluster.local_cluster import free_port, read_state

    cfg_path, data = write_config(tmp, {
        "deployment": {"replicas": 2, "max_ongoing_requests": 4, "max_queued_requests": 8,
                       "health_check_period_s": 2, "drain_timeout_s": 120, "retry_after_s": 3},
        # One engine replica (2 CPUs: its actor's bundle and the engine's) fits on each node.
        # One machine, so HAProxy runs on the head only (two would both bind the port).
        "server": {"ray_num_cpus": 2, "proxy_location": "HeadOnly"},
        "limits": HELD_MEDIA_LIMITS,  # the SIGTERM drain test's held request
    })
    head_env = {"QWEN_VL_RUN_DIR": str(tmp / "head")}
    worker_env = {"QWEN_VL_RUN_DIR": str(tmp / "worker")}
    log = open(tmp / "serve.log", "w")
    serve = subprocess.Popen([sys.executable, "-m", "launch.cli", "serve", "--config", str(cfg_path)],
                             cwd=ROOT, env={**os.environ, **head_env}, stdout=log,
                             stderr=subprocess.STDOUT, text=True)
    info = {"base": f"http://127.0.0.1:{data['server']['port']}", "serve": serve, "tmp": tmp,
            "cfg_path": cfg_path, "data": data, "head_env": head_env, "worker_env": worker_env,
            "metrics": [data["server"]["metrics_port"]], "log": log}
    try:
        wait_until(lambda: read_state(tmp / "head") is not None or serve.poll() is not None,
                   300, interval=1, what="the head's state file")
        assert serve.poll() is None, (tmp / "serve.log").read_text()[-3000:]
        address = read_state(tmp / "head").address
        worker_metrics = free_port()
        r = run_cli("join", "--address", address, "--num-cpus", "2",
                    "--metrics-port", str(worker_metrics), env=worker_env, timeout=300)
        assert r.returncode == 0, r.stdout + r.stderr
        assert f"joined {address}" in r.stdout
        info["metrics"].append(worker_metrics)
        wait_until(lambda: "ready: " in (tmp / "serve.log").read_text() or serve.poll() is not None,
                   900, interval=2, what="serve's ready line")
        assert serve.poll() is None, (tmp / "serve.log").read_text()[-3000:]
        assert "qwen-vl join --address" in (tmp / "serve.log").read_text()
    except BaseException:
        stop_cluster(info)
        raise
    return info


def stop_cluster(info: dict) -> None:
    """SIGTERM to the head's `serve` (if it still runs), `qwen-vl stop` on the worker, then no
    process of either node is left."""
    from launch.cluster.local_cluster import cluster_processes, read_state

    serve = info["serve"]
    if serve.poll() is None:
        serve.send_signal(signal.SIGTERM)
        try:
            serve.wait(timeout=300)
        except subprocess.TimeoutExpired:
            serve.kill()
    run_cli("stop", env=info["worker_env"], timeout=300)
    info["log"].close()
    for env in (info["head_env"], info["worker_env"]):
        state = read_state(Path(env["QWEN_VL_RUN_DIR"]))
        if state is not None:
            assert cluster_processes(state) == [], "processes left after stop"


def replica_lines(status_out: str) -> list[str]:
    """The engine replicas' lines of `qwen-vl status`."""
    return [ln for ln in status_out.splitlines()
            if ln.strip().startswith(ENGINE) and " node " in ln]


def engine_rows(base):
    code, body = health(base)
    return code, [r for r in (body or {}).get("replicas", []) if r["deployment"] == ENGINE]


def two_healthy(base) -> list | None:
    """Both engine replicas' rows once the replica that answers sees both healthy, else None.
    Each replica's view refreshes on its own, so two answers in a row may differ for a
    moment after a change: a test that needs both healthy waits for it."""
    try:
        code, rows = engine_rows(base)
    except OSError:
        return None
    return rows if code == 200 and len(rows) == 2 and all(
        r["health"] == "healthy" for r in rows) else None
