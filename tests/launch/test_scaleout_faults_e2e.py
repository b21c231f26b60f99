"""Faults on the two-node cluster (``two_nodes`` in ``conftest.py``, left by
``test_scaleout_e2e.py`` with two healthy replicas): each process a request passes through is
killed with SIGKILL in turn under four users (two streaming), and what the clients saw is
classified and printed (docs/operations.md, "What a client sees when a process dies", quotes
these figures from a dated benchmark file). Then SIGTERM to the foreground `serve`, which ends
the cluster.

The serving path: HAProxy (on the head) -> an engine replica's own HTTP server (the API and
vLLM's engine client, one process) -> its engine core. The Serve controller is off that path.
"""

from __future__ import annotations

import http.client
import json
import re
import signal
import threading
import time
import urllib.error
from pathlib import Path

import pytest

from launch.proxy.pages import MARKER
from tests.utils import (MediaServer, call, chat, outcome, png, replica_lines, run_cli, stream,
                         stop_cluster, two_healthy, wait_until)

pytestmark = pytest.mark.slow
USERS = 4  # half of them stream
MAX_TOKENS = 32
LOAD_AFTER_KILL_S = 20  # how long the users go on after the kill
REQUEST_TIMEOUT_S = 120  # a request still open after this is a hang
NOT_ANSWERED: list[str] = []  # what a whole answer's client saw instead of one, for the report


def one_request(base: str, i: int) -> tuple[str, float, float]:
    """(what the client saw, start, end): 'ok'; 'error:<code>' (an OpenAI error: a shaped 503
    with Retry-After, or a stream's error event); 'cut' (a response that had begun, status and
    headers, and ended early: a stream without [DONE] or an error event, with or without
    events before, or a whole answer short of its length); 'dropped' (the connection closed
    before any answer); 'refused' (no
    connection); 'plain:<status>' (an error page that is not OpenAI JSON); 'BAD: ...' (a hang,
    anything else)."""
    t0 = time.monotonic()
    if i % 2:
        result = stream(base, MAX_TOKENS, timeout=REQUEST_TIMEOUT_S)
        what, err = outcome(result, MAX_TOKENS), result.get("exception", "")
        if what.startswith("BAD") and "timed out" in err:
            what = f"BAD: hung {err}"
        elif what.startswith("BAD") and err:
            what = ("refused" if "Connection refused" in err
                    else "cut" if result["opened"] else "dropped")
        elif what.startswith("BAD: no [DONE]"):  # the connection closed between events
            what = "cut"
        elif what.startswith("BAD") and "status" in result and result["body"] is None:
            what = f"plain:{result['status']}"
        return what, t0, time.monotonic()
    try:
        code, body, headers = call(base, chat(max_tokens=MAX_TOKENS), timeout=REQUEST_TIMEOUT_S)
    except (urllib.error.URLError, ConnectionError, http.client.HTTPException) as err:
        reason = getattr(err, "reason", err)
        what = "refused" if isinstance(reason, ConnectionRefusedError) else "dropped"
        if isinstance(err, http.client.IncompleteRead):
            what = "cut"  # the answer had begun (status and headers) and ended early
        if what != "refused":
            NOT_ANSWERED.append(f"{what}: {err!r}"[:200])
        if isinstance(reason, TimeoutError):
            what = f"BAD: hung {err!r}"
        return what, t0, time.monotonic()
    except TimeoutError as err:
        return f"BAD: hung {err!r}", t0, time.monotonic()
    err = (body or {}).get("error") or {}
    if code == 200:
        what = "ok"
    elif code == 503 and headers.get("Retry-After") and set(err) == {
            "message", "type", "param", "code"}:
        what = f"error:{err['code']}"
    elif "raw" in (body or {}):
        what = f"plain:{code}"
    else:
        what = f"BAD: {code} {body}"
    return what, t0, time.monotonic()


def serving_pid(cluster: dict, victim: str) -> int:
    """The process to kill: HAProxy (the head's), one engine replica's process, or the Serve
    controller."""
    import psutil

    from launch.cluster.local_cluster import cluster_processes, read_state

    if victim == "replica":
        r = run_cli("status", env=cluster["head_env"], timeout=120)
        return int(re.search(r"pid (\d+)", replica_lines(r.stdout)[0]).group(1))
    head = read_state(Path(cluster["head_env"]["QWEN_VL_RUN_DIR"]))
    want = {"haproxy": "haproxy", "controller": "ray::ServeController"}[victim]
    pids = []
    for p in cluster_processes(head):
        try:
            # The kernel keeps 15 characters of a name; psutil may give the whole one.
            if psutil.Process(p).name().startswith(want[:15]):
                pids.append(p)
        except psutil.NoSuchProcess:
            continue
    assert len(pids) == 1, f"{victim}: {pids}"
    return pids[0]


@pytest.mark.parametrize("victim", ["controller", "haproxy", "replica"])
def test_killing_a_serving_process(cluster, victim):
    import psutil

    base = cluster["base"]
    NOT_ANSWERED.clear()
    wait_until(lambda: two_healthy(base), 600, interval=3, what="two healthy replicas")
    pid = serving_pid(cluster, victim)
    results: list[tuple[str, float, float, str]] = []  # what, start, end, which kind of request
    stop = threading.Event()
    first = [threading.Event() for _ in range(USERS)]

    def user(i):
        while not stop.is_set():
            results.append((*one_request(base, i), "stream" if i % 2 else "whole answer"))
            first[i].set()
            if results[-1][0] == "refused":  # as a client would: not in a tight loop
                time.sleep(0.2)

    threads = [threading.Thread(target=user, args=(i,)) for i in range(USERS)]
    for t in threads:
        t.start()
    health: list[tuple[float, int | str]] = []  # (seconds after the kill, /health's status)
    try:
        assert all(e.wait(300) for e in first), f"the load did not start: {results}"
        psutil.Process(pid).kill()
        killed, killed_at = time.monotonic(), time.time()
        while time.monotonic() - killed < LOAD_AFTER_KILL_S:
            try:
                code = call(base, path="/health", timeout=30)[0]
            except OSError as err:
                code = type(err).__name__
            health.append((round(time.monotonic() - killed, 1), code))
            time.sleep(0.5)
    finally:
        stop.set()
        for t in threads:
            t.join(timeout=REQUEST_TIMEOUT_S + 60)
    assert not any(t.is_alive() for t in threads), "a request hung"
    after = [r for r in results if r[2] >= killed]  # every request that ended after the kill
    seen = {what: sum(1 for r in after if r[0] == what) for what in sorted({r[0] for r in after})}
    # The longest time after the kill in which no request of any user succeeded.
    oks = sorted(r[2] for r in after if r[0] == "ok")
    gaps = [b - a for a, b in zip([killed] + oks, oks)] if oks else [LOAD_AFTER_KILL_S]
    down = [(t, code) for t, code in health if code != 200]
    back = None
    if victim != "controller":  # the others come back on their own: wait for both replicas
        wait_until(lambda: two_healthy(base), 900, interval=3, what=f"recovery from {victim}")
        back = time.monotonic() - killed
    print(f"FAULT {victim}: {json.dumps(seen)}; longest time without a success "
          f"{max(gaps):.1f}s; /health: {len(down)} of {len(health)} answers not 200 "
          f"(first {down[0] if down else '-'}, last {down[-1] if down else '-'}); "
          + (f"two healthy replicas again after {back:.0f}s" if back else "nothing to recover"))
    # Every other outcome, with its kind and its start and end in seconds after the kill.
    odd = [(r[0], r[3], round(r[1] - killed, 2), round(r[2] - killed, 2))
           for r in after if r[0] != "ok"]
    print(f"FAULT {victim}: not ok: {odd[:12]}; whole answers not received: {NOT_ANSWERED[:6]}")
    bad = [r[0] for r in after if r[0].startswith("BAD")]
    assert not bad, bad[:5]
    assert oks, f"nothing succeeded after the kill: {seen}"
    if victim == "controller":
        # Off the request path: every request succeeds and /health answers from the
        # replicas' last view while Ray restarts the controller.
        assert set(seen) == {"ok"}, seen
        assert not down, health
    elif victim == "haproxy":
        # HAProxy holds every client connection: those open are cut (streams) or end without
        # an answer; new ones are refused until the controller has Ray's HAProxy manager
        # started again (server.proxy_check_s), and the new HAProxy answers 503 not_ready (the
        # API's error JSON, launch.proxy.pages) until the controller has sent it the
        # application's routes.
        assert set(seen) <= {"ok", "cut", "dropped", "refused", "error:not_ready"}, seen
        # The HAProxy Ray started again went through qwen-vl-haproxy too: Ray wrote the
        # configuration anew for it (after the kill), and it is rewritten.
        cmd = psutil.Process(serving_pid(cluster, "haproxy")).cmdline()
        config = Path(cmd[cmd.index("-f") + 1])
        assert config.stat().st_mtime > killed_at, (config, config.stat().st_mtime, killed_at)
        assert config.read_text().startswith(MARKER), cmd
    else:
        # The replica process holds its requests: a request that has had no answer yet is
        # retried on the other replica by HAProxy (nothing reached the client), a response
        # that has begun (a stream, or a whole answer being written) is cut. Never an error
        # page, never a hang.
        assert set(seen) <= {"ok", "cut"}, seen
        assert seen.get("ok", 0) > seen.get("cut", 0), seen


def test_sigterm_drains_running_stream_and_refuses_new_requests(two_nodes):
    """SIGTERM to the foreground `serve`: new requests get 503 `draining` with Retry-After, the
    running stream ends with all its tokens, and `serve` says it drained and stopped. It ends
    the cluster; a test after it gets a new one."""
    cluster = two_nodes.take()
    base = cluster["base"]
    # The request is admitted (counted as held) and then waits in the front door for its
    # image, which the test's own server answers only once the drain has refused a new
    # request: it is running when the drain begins, however long `serve` takes to begin it on
    # two cores beside a busy replica. The drain's own count proves it.
    host = MediaServer("127.0.0.2", {"/cat.png": png(64, 64)})
    n = 600
    result = {}
    t = threading.Thread(target=lambda: result.update(
        stream(base, n, image_url=host.url + "/held/cat.png")))
    t.start()
    try:
        assert host.held.wait(120), "the request did not reach the front door's image fetch"
        cluster["serve"].send_signal(signal.SIGTERM)

        def refusal():
            code, body, headers = call(base, chat(max_tokens=4), timeout=30)
            return code == 503 and (body["error"]["code"], headers.get("Retry-After"))

        refused = wait_until(refusal, 180, interval=0.3, what="a refusal while draining")
        host.release.set()  # the drain was seen: the request goes on
        t.join(timeout=600)
        assert refused == ("draining", "3"), refused
        assert outcome(result, n) == "ok", result.get("exception") or result["events"][-3:]
        assert cluster["serve"].wait(timeout=300) == 0
    finally:
        host.release.set()
        t.join(timeout=60)
        host.close()
        stop_cluster(cluster)
    log = (cluster["tmp"] / "serve.log").read_text()
    # The drain reports what it waits for as soon as every replica has answered: this request.
    held = log.find("draining: 1 requests still running")
    assert held >= 0 and "stopped (" in log[held:], log[-2000:]
