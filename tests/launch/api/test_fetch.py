"""URL fetching under the policy, against real local HTTP servers."""

import pytest

from engine.config import UrlPolicy
from launch.api.fetch import fetch, is_public_address
from tests import utils
from tests.utils import MediaServer, rejected_by

ALLOWED = UrlPolicy(schemes=["http", "https", "data"], allowed_networks=["127.0.0.2/32"],
                    fetch_timeout_s=2)


@pytest.fixture(scope="module")
def allowed_host():
    s = MediaServer("127.0.0.2", {"/cat.png": utils.png(40, 40)})
    yield s
    s.close()


@pytest.fixture(scope="module")
def loopback_host():
    s = MediaServer("127.0.0.1", {"/cat.png": utils.png(40, 40)})
    yield s
    s.close()


def refused(url, match, policy=ALLOWED, max_bytes=1 << 20):
    return rejected_by(lambda: fetch(url, policy, max_bytes, "p"), "p", match)


@pytest.mark.parametrize("ip", ["127.0.0.1", "10.1.2.3", "172.16.0.1", "192.168.1.1",
                                "169.254.169.254", "::1", "fc00::1", "::ffff:127.0.0.1"])
def test_special_addresses_are_not_public(ip):
    assert not is_public_address(ip)


def test_public_address():
    assert is_public_address("8.8.8.8") and is_public_address("2606:4700::1111")


def test_an_unresolvable_host_is_a_400_naming_the_part(monkeypatch):
    import socket

    def no_such_host(*args, **kwargs):
        raise socket.gaierror(socket.EAI_NONAME, "Name or service not known")

    monkeypatch.setattr(socket, "getaddrinfo", no_such_host)
    refused("http://images.invalid/cat.png", r"cannot resolve host 'images.invalid': Name or")


def test_allowed_network_fetches(allowed_host):
    assert fetch(allowed_host.url + "/cat.png", ALLOWED, 1 << 20, "p") == utils.png(40, 40)


def test_loopback_refused(loopback_host):
    e = refused(loopback_host.url + "/cat.png", r"resolves to 127\.0\.0\.1")
    assert e.reason == "url_private_address"


def test_hostname_resolving_to_loopback_refused(loopback_host):
    port = loopback_host.url.rsplit(":", 1)[1]
    refused(f"http://localhost:{port}/cat.png", r"host 'localhost' resolves to (127\.0\.0\.1|::1)")


@pytest.mark.parametrize("url", ["http://169.254.169.254/latest/meta-data/",
                                 "http://10.0.0.1/x.png", "http://[::1]/x.png"])
def test_private_targets_refused_without_connecting(url):
    refused(url, "private, loopback, link-local or reserved")


def test_redirect_to_private_refused(allowed_host, loopback_host):
    allowed_host.redirects["/go"] = loopback_host.url + "/cat.png"
    refused(allowed_host.url + "/go", r"resolves to 127\.0\.0\.1")


def test_redirect_limit(allowed_host):
    allowed_host.redirects["/loop"] = "/loop"
    refused(allowed_host.url + "/loop", "more than 3 redirects")


@pytest.mark.parametrize("url", ["file:///etc/passwd", "ftp://example.com/a.png",
                                 "gopher://example.com/"])
def test_schemes_refused(url):
    refused(url, r"URL scheme '(file|ftp|gopher)' is not allowed")


def test_http_refused_by_default(allowed_host):
    refused(allowed_host.url + "/cat.png", r"scheme 'http' is not allowed; allowed: https",
            policy=UrlPolicy())


def test_domain_allow_list(allowed_host):
    refused(allowed_host.url + "/cat.png", "not in the allowed domains",
            policy=UrlPolicy(schemes=["http"], allowed_domains=["images.example.com"]))


def test_size_cap_while_streaming(allowed_host):
    refused(allowed_host.url + "/endless", r"exceeds the limit of 100000 bytes", max_bytes=100000)


def test_timeout(allowed_host):
    refused(allowed_host.url + "/slow", r"took longer than limits.url.fetch_timeout_s \(2s\)")


def test_a_dripping_body_is_cut_at_the_whole_fetch_deadline(allowed_host):
    """Headers at once, then a byte every 0.5 s: each read is quick, the whole fetch is not.
    fetch_timeout_s (2 s) bounds it all."""
    import time

    t0 = time.monotonic()
    refused(allowed_host.url + "/drip/40", r"took longer than limits.url.fetch_timeout_s")
    assert time.monotonic() - t0 < 2 + 1.0  # the deadline, and the read in flight at it


def test_the_deadline_spans_every_redirect_hop(allowed_host):
    """Three hops of 0.8 s each: each is quick, together they pass the deadline (2 s), which
    counts from the first."""
    import time

    policy = UrlPolicy(schemes=["http"], allowed_networks=["127.0.0.2/32"], fetch_timeout_s=2,
                       max_redirects=5)
    t0 = time.monotonic()
    refused(allowed_host.url + "/r/0.8/r/0.8/r/0.8/cat.png",
            r"took longer than limits.url.fetch_timeout_s", policy=policy)
    assert time.monotonic() - t0 < 2 + 1.0
    # Two hops fit.
    assert fetch(allowed_host.url + "/r/0.5/r/0.5/cat.png", policy, 1 << 20, "p")[:4] == \
        b"\x89PNG"


def test_a_small_drip_within_the_deadline_is_fetched(allowed_host):
    assert fetch(allowed_host.url + "/drip/2", ALLOWED, 1 << 20, "p") == b"\0\0"


def test_http_error_status(allowed_host):
    refused(allowed_host.url + "/missing.png", "returned HTTP 404")


def test_connection_pinned_to_checked_address(allowed_host, monkeypatch):
    """The host name is resolved once, checked, and that address is connected to: a name no DNS
    knows works only if nothing resolves it a second time (no DNS rebinding window)."""
    import launch.api.fetch as f

    calls = []

    def fake_resolve(host, port, param):
        calls.append(host)
        return ["127.0.0.2"]

    monkeypatch.setattr(f, "resolve", fake_resolve)
    port = allowed_host.url.rsplit(":", 1)[1]
    assert fetch(f"http://images.invalid:{port}/cat.png", ALLOWED, 1 << 20, "p") == utils.png(40, 40)
    assert calls == ["images.invalid"]


def test_rebinding_to_private_refused(allowed_host, monkeypatch):
    import launch.api.fetch as f

    monkeypatch.setattr(f, "resolve", lambda host, port, param: ["127.0.0.2", "127.0.0.1"])
    port = allowed_host.url.rsplit(":", 1)[1]
    refused(f"http://images.invalid:{port}/cat.png", r"resolves to 127\.0\.0\.1")


# ---------------------------------------------------------------------------------- https
# https is the default scheme. A throwaway CA made here stands in for the public ones: the
# fetch trusts what ``certifi.where()`` names, which the tests point at that CA.
TLS = UrlPolicy(schemes=["https"], allowed_networks=["127.0.0.2/32", "127.0.0.3/32"],
                fetch_timeout_s=5)
NAME = "media.example.test"


@pytest.fixture(scope="module")
def tls(tmp_path_factory):
    """Servers for NAME: one on 127.0.0.2 with a certificate the trusted CA signed, one on
    127.0.0.3 with a certificate for NAME from a CA nobody trusts."""
    tmp = tmp_path_factory.mktemp("tls")
    trusted, stranger = utils.make_ca(tmp), utils.make_ca(tmp, "untrusted CA")
    good = MediaServer("127.0.0.2", {"/cat.png": utils.png(40, 40)},
                       tls=utils.tls_context(tmp, trusted, NAME))
    other = MediaServer("127.0.0.3", {"/cat.png": utils.png(41, 41)},
                        tls=utils.tls_context(tmp, stranger, NAME))
    yield {"ca": str(trusted[2]), "good": good, "other": other}
    good.close()
    other.close()


@pytest.fixture
def dns(tls, monkeypatch):
    """Names resolve as the test says (``answers[name]``: one answer per lookup, in turn); the
    CA bundle is the test's. Returns (answers, lookups)."""
    import certifi

    import launch.api.fetch as f

    answers: dict[str, list[list[str]]] = {}
    lookups: list[str] = []

    def resolve(host, port, param):
        lookups.append(host)
        return answers[host].pop(0)

    monkeypatch.setattr(f, "resolve", resolve)
    monkeypatch.setattr(certifi, "where", lambda: tls["ca"])
    return answers, lookups


def port_of(server) -> str:
    return server.url.rsplit(":", 1)[1]


def test_https_fetch_verifies_the_certificate_and_succeeds(tls, dns):
    answers, lookups = dns
    answers[NAME] = [["127.0.0.2"]]
    url = f"https://{NAME}:{port_of(tls['good'])}/cat.png"
    assert fetch(url, TLS, 1 << 20, "p") == utils.png(40, 40)
    assert lookups == [NAME]


def test_https_certificate_from_an_untrusted_ca_is_refused(tls, dns):
    answers, _ = dns
    answers[NAME] = [["127.0.0.3"]]
    err = refused(f"https://{NAME}:{port_of(tls['other'])}/cat.png", "fetching the URL failed",
                  policy=TLS)
    assert err.reason == "url_fetch_failed"


def test_https_certificate_for_another_name_is_refused(tls, dns):
    """The good server's certificate is for NAME; reached as another name it is refused (the
    pinned connection still checks the URL's host name)."""
    answers, _ = dns
    answers["other.example.test"] = [["127.0.0.2"]]
    refused(f"https://other.example.test:{port_of(tls['good'])}/cat.png",
            "fetching the URL failed", policy=TLS)


def test_https_connection_is_pinned_to_the_checked_answer(tls, dns):
    """A DNS answer that changes after the check (here: the second lookup would name the
    stranger's server) is never asked for: one lookup, the checked address, the good file."""
    answers, lookups = dns
    answers[NAME] = [["127.0.0.2"], ["127.0.0.3"]]
    assert fetch(f"https://{NAME}:{port_of(tls['good'])}/cat.png", TLS, 1 << 20, "p") == \
        utils.png(40, 40)
    assert lookups == [NAME] and answers[NAME] == [["127.0.0.3"]]
