"""Load client-supplied media URLs under the configured policy: ``data:`` URLs, http(s) and files
inside ``limits.media_dir``, all in this module (``load_url``).

The engine never fetches anything itself: the front door fetches, validates, and passes the
bytes on as a ``data:`` URL, so what was checked is exactly what the engine decodes. The
connection goes to the very address that was checked (no second DNS lookup, so no DNS
rebinding between check and fetch); TLS verifies the certificate for the URL's host name.

Every hop is checked: scheme, domain allow-list, and *every address the host resolves to*
(loopback, private, link-local/metadata, unique-local and other special addresses are refused
unless ``allow_private_networks``). Redirects are followed by hand and re-checked; the body is
read in chunks and cut at the byte cap.
"""

from __future__ import annotations

import ipaddress
import os
import socket
from pathlib import Path
from urllib.parse import unquote, urljoin, urlsplit

from engine.config import LimitsSettings, UrlPolicy

from . import media
from .rejections import RequestRejected, bad_request

CHUNK = 64 << 10


def _host_allowed(host: str, allowed: list[str]) -> bool:
    host = host.lower().rstrip(".")
    return any(host == d.lower() or host.endswith("." + d.lower().lstrip(".")) for d in allowed)


def is_public_address(ip: str) -> bool:
    """Globally routable unicast only: not loopback, private (10/8, 172.16/12, 192.168/16),
    link-local (169.254/16, the metadata service), CGNAT, reserved, fc00::/7, ::1, multicast."""
    addr = ipaddress.ip_address(ip.split("%", 1)[0])
    if addr.version == 6 and addr.ipv4_mapped:
        addr = addr.ipv4_mapped
    return addr.is_global and not addr.is_multicast


def resolve(host: str, port: int, param: str) -> list[str]:
    try:
        infos = socket.getaddrinfo(host, port, type=socket.SOCK_STREAM)
    except socket.gaierror as err:
        raise bad_request(f"cannot resolve host {host!r}: {err.strerror}", param=param,
                          reason="url_unresolvable") from None
    return sorted({info[4][0] for info in infos})


def check_url(url: str, policy: UrlPolicy, param: str) -> list[str]:
    """Check scheme, domain and every resolved address; returns the addresses (to connect to)."""
    parts = urlsplit(url)
    scheme = parts.scheme.lower()
    if scheme not in policy.schemes or scheme == "data":
        allowed = ", ".join(s for s in policy.schemes if s != "data")
        raise bad_request(
            f"URL scheme {scheme or '(none)'!r} is not allowed; allowed: {allowed or 'none'}",
            param=param, reason="url_scheme")
    host = parts.hostname
    if not host:
        raise bad_request("URL has no host", param=param, reason="url_invalid")
    if policy.allowed_domains and not _host_allowed(host, policy.allowed_domains):
        raise bad_request(f"host {host!r} is not in the allowed domains",
                          param=param, reason="url_domain")
    port = parts.port or (443 if scheme == "https" else 80)
    allowed = [ipaddress.ip_network(n, strict=False) for n in policy.allowed_networks]
    addresses = resolve(host, port, param)
    for ip in addresses:
        if not is_public_address(ip) and not any(
                ipaddress.ip_address(ip.split("%", 1)[0]) in net for net in allowed):
            raise bad_request(
                f"host {host!r} resolves to {ip}, a private, loopback, link-local or "
                "reserved address; fetching it is not allowed (limits.url.allowed_networks)",
                param=param, reason="url_private_address")
    return addresses


def _get(url: str, ip: str, seconds: float):
    """GET pinned to the address that was checked (no second DNS lookup: no rebinding).
    TLS still verifies the certificate for the URL's host name (SNI + hostname check).
    Connecting and each read of the headers may take ``seconds``."""
    import certifi
    import urllib3

    parts = urlsplit(url)
    scheme, host = parts.scheme.lower(), parts.hostname
    port = parts.port or (443 if scheme == "https" else 80)
    timeout = urllib3.Timeout(connect=seconds, read=seconds)
    if scheme == "https":
        pool = urllib3.HTTPSConnectionPool(
            ip, port, timeout=timeout, retries=False, cert_reqs="CERT_REQUIRED",
            ca_certs=certifi.where(), server_hostname=host, assert_hostname=host)
    else:
        pool = urllib3.HTTPConnectionPool(ip, port, timeout=timeout, retries=False)
    path = (parts.path or "/") + (f"?{parts.query}" if parts.query else "")
    host_header = host if parts.port is None else f"{host}:{parts.port}"
    return pool.urlopen("GET", path, headers={"Host": host_header,
                                              "User-Agent": "qwen-vl-serving"},
                        redirect=False, preload_content=False)


def fetch(url: str, policy: UrlPolicy, max_bytes: int, param: str) -> bytes:
    """GET ``url`` under the policy; returns the body (at most ``max_bytes``).

    ``fetch_timeout_s`` is the whole fetch's deadline: connecting, the headers, the body and
    every redirect hop together. Each socket operation may block only until the deadline, and
    the body is read as it arrives (not in fixed-size reads that wait to fill), so a server that
    drips its body cannot hold the request past it."""
    import time

    import urllib3

    deadline = time.monotonic() + policy.fetch_timeout_s
    timed_out = bad_request(f"fetching the URL timed out: it took longer than "
                            f"limits.url.fetch_timeout_s ({policy.fetch_timeout_s:g}s), the "
                            "deadline of the whole fetch", param=param, reason="url_timeout")

    def remaining() -> float:
        left = deadline - time.monotonic()
        if left <= 0:
            raise timed_out
        return left

    current = url
    for _hop in range(policy.max_redirects + 1):
        addresses = check_url(current, policy, param)
        try:
            r = _get(current, addresses[0], remaining())
        except (urllib3.exceptions.TimeoutError, TimeoutError):
            raise timed_out from None
        except (urllib3.exceptions.HTTPError, OSError) as err:
            raise bad_request(f"fetching the URL failed: {type(err).__name__}",
                              param=param, reason="url_fetch_failed") from None
        try:
            if r.status in (301, 302, 303, 307, 308):
                current = urljoin(current, r.headers.get("location", ""))
                continue
            if r.status != 200:
                raise bad_request(f"fetching the URL returned HTTP {r.status}",
                                  param=param, reason="url_status")
            declared = int(r.headers.get("content-length") or 0)
            if declared > max_bytes:
                raise bad_request(f"the URL's content is {declared} bytes; the limit is "
                                  f"{max_bytes}", param=param, reason="media_too_large")
            return _read_body(r, max_bytes, remaining, timed_out, param)
        finally:
            r.release_conn()
    raise bad_request(f"more than {policy.max_redirects} redirects", param=param,
                      reason="url_redirects")


def _read_body(r, max_bytes: int, remaining, timed_out: RequestRejected, param: str) -> bytes:
    """The body as it arrives, each read bounded by the time left."""
    import urllib3

    buf = bytearray()
    sock = getattr(r.connection, "sock", None)
    try:
        while True:
            if sock is not None:
                sock.settimeout(remaining())
            chunk = r.read1(CHUNK)
            if not chunk:
                return bytes(buf)
            buf.extend(chunk)
            if len(buf) > max_bytes:
                raise bad_request(f"the URL's content exceeds the limit of "
                                  f"{max_bytes} bytes", param=param,
                                  reason="media_too_large")
            remaining()
    except (urllib3.exceptions.TimeoutError, urllib3.exceptions.ReadTimeoutError, TimeoutError):
        raise timed_out from None
    except (urllib3.exceptions.HTTPError, OSError):
        raise bad_request("fetching the URL failed while reading",
                          param=param, reason="url_fetch_failed") from None


def load_url(url: str, limits: LimitsSettings, param: str, max_bytes: int,
             what: str) -> tuple[str | None, bytes]:
    """(mime or None, bytes) from a data: URL, an allowed http(s) URL or a media_dir file."""
    if url.startswith("data:"):
        if "data" not in limits.url.schemes:
            raise bad_request("data: URLs are not allowed", param=param, reason="url_scheme")
        mime, payload = media.decode_data_url(url, param)
        return mime, media.b64decode(payload, max_bytes, param, what)
    scheme = urlsplit(url).scheme.lower()
    if scheme in ("http", "https"):
        return None, fetch(url, limits.url, max_bytes, param)
    if scheme == "file" or (not scheme and url.startswith(("/", "."))):
        return None, _local_file(url, limits.media_dir, param, max_bytes)
    raise bad_request(f"URL scheme {scheme or '(none)'!r} is not allowed; allowed: "
                      f"{', '.join(limits.url.schemes)}", param=param, reason="url_scheme")


def _local_file(url: str, root: str | None, param: str, max_bytes: int) -> bytes:
    if not root:
        raise bad_request("local file paths are not allowed (no media_dir is configured)",
                          param=param, reason="local_file")
    path = Path(unquote(urlsplit(url).path) if url.startswith("file:") else url)
    real, base = Path(os.path.realpath(path)), Path(os.path.realpath(root))
    if base != real and base not in real.parents:
        raise bad_request("file is outside the configured media_dir", param=param,
                          reason="local_file")
    try:
        size = real.stat().st_size
        if size > max_bytes:
            raise bad_request(f"file is {size} bytes; the limit is {max_bytes}", param=param,
                              reason="media_too_large")
        return real.read_bytes()
    except OSError:
        raise bad_request("file not found in media_dir", param=param,
                          reason="local_file") from None
