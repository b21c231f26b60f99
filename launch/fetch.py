"""Fetch client-supplied media URLs under the configured policy.

The engine never fetches anything itself: the front door fetches, validates, and passes the
bytes on as a ``data:`` URL, so what was checked is exactly what the engine decodes.

Every hop is checked: scheme, domain allow-list, and *every address the host resolves to*
(loopback, private, link-local/metadata, unique-local and other special addresses are refused
unless ``allow_private_networks``). Redirects are followed by hand and re-checked; the body is
read in chunks and cut at the byte cap.
"""

from __future__ import annotations

import ipaddress
import socket
from urllib.parse import urljoin, urlsplit

import requests

from engine.config import UrlPolicy

from .rejections import RequestRejected

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


def resolve(host: str, port: int) -> list[str]:
    try:
        infos = socket.getaddrinfo(host, port, type=socket.SOCK_STREAM)
    except socket.gaierror as err:
        raise RequestRejected(400, f"cannot resolve host {host!r}: {err.strerror}",
                              reason="url_unresolvable") from None
    return sorted({info[4][0] for info in infos})


def check_url(url: str, policy: UrlPolicy, param: str) -> None:
    parts = urlsplit(url)
    scheme = parts.scheme.lower()
    if scheme not in policy.schemes or scheme == "data":
        allowed = ", ".join(s for s in policy.schemes if s != "data")
        raise RequestRejected(
            400, f"URL scheme {scheme or '(none)'!r} is not allowed; allowed: {allowed or 'none'}",
            param=param, reason="url_scheme")
    host = parts.hostname
    if not host:
        raise RequestRejected(400, "URL has no host", param=param, reason="url_invalid")
    if policy.allowed_domains and not _host_allowed(host, policy.allowed_domains):
        raise RequestRejected(400, f"host {host!r} is not in the allowed domains",
                              param=param, reason="url_domain")
    port = parts.port or (443 if scheme == "https" else 80)
    allowed = [ipaddress.ip_network(n, strict=False) for n in policy.allowed_networks]
    for ip in resolve(host, port):
        if not is_public_address(ip) and not any(
                ipaddress.ip_address(ip.split("%", 1)[0]) in net for net in allowed):
            raise RequestRejected(
                400, f"host {host!r} resolves to {ip}, a private, loopback, link-local or "
                "reserved address; fetching it is not allowed (limits.url.allowed_networks)",
                param=param, reason="url_private_address")


def fetch(url: str, policy: UrlPolicy, max_bytes: int, param: str) -> bytes:
    """GET ``url`` under the policy; returns the body (at most ``max_bytes``)."""
    current = url
    for _hop in range(policy.max_redirects + 1):
        check_url(current, policy, param)
        try:
            r = requests.get(current, stream=True, timeout=policy.fetch_timeout_s,
                             allow_redirects=False, headers={"User-Agent": "qwen-vl-serving"})
        except requests.Timeout:
            raise RequestRejected(400, f"fetching the URL timed out after "
                                  f"{policy.fetch_timeout_s:g}s", param=param,
                                  reason="url_timeout") from None
        except requests.RequestException as err:
            raise RequestRejected(400, f"fetching the URL failed: {type(err).__name__}",
                                  param=param, reason="url_fetch_failed") from None
        with r:
            if r.is_redirect:
                location = r.headers.get("location", "")
                current = urljoin(current, location)
                continue
            if r.status_code != 200:
                raise RequestRejected(400, f"fetching the URL returned HTTP {r.status_code}",
                                      param=param, reason="url_status")
            declared = int(r.headers.get("content-length") or 0)
            if declared > max_bytes:
                raise RequestRejected(400, f"the URL's content is {declared} bytes; the limit is "
                                      f"{max_bytes}", param=param, reason="media_too_large")
            buf = bytearray()
            for chunk in r.iter_content(CHUNK):
                buf.extend(chunk)
                if len(buf) > max_bytes:
                    raise RequestRejected(400, f"the URL's content exceeds the limit of "
                                          f"{max_bytes} bytes", param=param,
                                          reason="media_too_large")
            return bytes(buf)
    raise RequestRejected(400, f"more than {policy.max_redirects} redirects", param=param,
                          reason="url_redirects")
