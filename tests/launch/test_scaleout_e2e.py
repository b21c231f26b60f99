"""Scale-out on a real two-node Ray cluster (one machine, two Ray nodes; ``two_nodes`` in
``conftest.py``): one engine replica per node. Requests spread over both; overload gets clean
503s; a killed engine is reported and replaced while nothing hangs; a redeploy lets running
streams finish while new requests are served or refused cleanly. Each test leaves the cluster
as it found it (two healthy replicas). Killed serving processes and SIGTERM:
``test_scaleout_faults_e2e.py``, which runs next on the same cluster.
"""

from __future__ import annotations

import json
import re
import threading
import time
from pathlib import Path

import pytest

from tests import utils
from tests.utils import (ENGINE, call, chat, engine_rows, health, outcome, replica_lines, run_cli,
                         stream, two_healthy, wait_until)

pytestmark = pytest.mark.slow


def test_two_replicas_one_per_node(cluster):
    # /health answers from a view of the replicas that each replica refreshes in the
    # background (launch.replicas.ReplicaView): right after `serve` says ready, the replica
    # that answers may not have seen the other one running yet.
    from launch.replicas import ReplicaView

    def both_healthy():
        code, rows = engine_rows(cluster["base"])
        return rows if code == 200 and len(rows) == 2 and all(
            r["health"] == "healthy" for r in rows) else None

    rows = wait_until(both_healthy, 10 * ReplicaView.REFRESH_S, what="both replicas healthy")
    assert len({r["node_id"] for r in rows}) == 2, "both replicas on one node"
    r = run_cli("status", env=cluster["head_env"], timeout=120)
    assert r.returncode == 0, r.stdout + r.stderr
    assert "nodes:   2 alive" in r.stdout
    assert re.search(r"head\s+alive", r.stdout) and re.search(r"worker\s+alive", r.stdout)
    lines = replica_lines(r.stdout)
    assert len(lines) == 2 and all(ln.rstrip().endswith("healthy") for ln in lines), r.stdout
    nodes = {re.search(r"\((\w{12})\)", ln).group(1) for ln in lines}
    assert len(nodes) == 2, r.stdout


def chats_served(metrics_ports) -> dict[str, float]:
    """Chat completions each engine replica answered, from the stack's own per-request counter
    (``qwen_vl_requests``, one count per API request by route and status, labelled by Ray with
    the replica): health probes and Serve's own calls are not in it."""
    counts: dict[str, float] = {}
    pat = re.compile(r'^ray_qwen_vl_requests_total\{([^}]*)\}\s+([0-9.e+]+)', re.M)
    for port in metrics_ports:
        try:
            text = utils.request(f"http://127.0.0.1:{port}/metrics", timeout=10)[1]["raw"]
        except OSError:
            continue
        for labels, value in pat.findall(text):
            tags = dict(re.findall(r'(\w+)="([^"]*)"', labels))
            if tags.get("route") == "/v1/chat/completions" and tags.get("deployment") == ENGINE:
                counts[tags["replica"]] = counts.get(tags["replica"], 0) + float(value)
    return counts


def test_requests_spread_over_both_replicas(cluster):
    before = chats_served(cluster["metrics"])
    n = 24
    results = []

    def worker(i):
        results.append(call(cluster["base"], chat(max_tokens=4, image=i % 2 == 0))[0])

    threads = [threading.Thread(target=worker, args=(i,)) for i in range(n)]
    for i in range(0, n, 6):  # six at a time: more than one replica's max_ongoing_requests
        batch = threads[i:i + 6]  # (and within the queue: requests being routed count too)
        for t in batch:
            t.start()
        for t in batch:
            t.join(timeout=300)
    assert results.count(200) == n, results
    served: dict[str, float] = {}

    def all_counted():  # Ray exports its counters every few seconds
        after = chats_served(cluster["metrics"])
        served.clear()
        served.update({k: after.get(k, 0) - before.get(k, 0) for k in after})
        return sum(served.values()) >= n

    wait_until(all_counted, 90, interval=3, what=f"{n} chats counted on the replicas")
    assert sum(served.values()) == n, served  # each request answered by exactly one replica
    assert len([k for k, v in served.items() if v > 0]) == 2, f"one replica took all: {served}"


def test_overload_gets_503_with_retry_after_then_recovers(cluster):
    base = cluster["base"]
    assert call(base, chat(max_tokens=16))[0] == 200
    stop = time.monotonic() + 30
    outcomes: list = []
    lock = threading.Lock()

    def client():
        while time.monotonic() < stop:
            code, body, headers = call(base, chat(max_tokens=16), timeout=300)
            with lock:
                outcomes.append((code, (body.get("error") or {}).get("code") if code != 200 else None,
                                 headers.get("Retry-After")))

    # Capacity: 2 replicas x 4 in flight + 8 queued = 16; 64 clients is 4 times that.
    threads = [threading.Thread(target=client) for _ in range(64)]
    before = stack_rss(cluster)
    peak = before
    for t in threads:
        t.start()
    while any(t.is_alive() for t in threads) and time.monotonic() < stop + 600:
        peak = max(peak, stack_rss(cluster))
        time.sleep(2)
    for t in threads:
        t.join(timeout=600)
    # Bounded: the queue holds at most max_queued_requests per deployment, so the overload
    # costs no memory to speak of (the engines' KV cache is allocated up front).
    print(f"stack resident memory: {before / 2**30:.2f} GiB before, peak {peak / 2**30:.2f} GiB")
    assert peak <= before * 1.10, f"memory grew under overload: {before} -> {peak} bytes"
    ok = [o for o in outcomes if o[0] == 200]
    refused = [o for o in outcomes if o[0] == 503]
    assert len(ok) + len(refused) == len(outcomes), [o for o in outcomes if o[0] not in (200, 503)]
    assert ok and refused, f"{len(ok)} ok, {len(refused)} refused"
    assert all(o[1] == "overloaded" and o[2] == "3" for o in refused), refused[:3]
    # Recovered: with the burst over, the queue is empty again, so as many requests sent at
    # once as the replicas hold in flight (2 x 4; one replica alone holds them with its queue)
    # are all served, none refused.
    after: list = []
    burst = [threading.Thread(target=lambda: after.append(call(base, chat(max_tokens=4))[0]))
             for _ in range(8)]
    for t in burst:
        t.start()
    for t in burst:
        t.join(timeout=300)
    assert after == [200] * 8, after


def stack_rss(cluster) -> int:
    """Resident memory of every process of both nodes (Ray, HAProxy, engine replicas), summed."""
    from launch.cluster.local_cluster import cluster_processes, read_state
    from loadtest.memory import rss_bytes

    pids = set()
    for env in (cluster["head_env"], cluster["worker_env"]):
        pids.update(cluster_processes(read_state(Path(env["QWEN_VL_RUN_DIR"]))))
    return rss_bytes(sorted(pids))


def engine_core_pid(replica_pid: int) -> int:
    import psutil

    for child in psutil.Process(replica_pid).children(recursive=True):
        try:
            if "EngineCore" in child.name() or "EngineCore" in " ".join(child.cmdline()):
                return child.pid
        except psutil.NoSuchProcess:
            continue
    raise AssertionError(f"no EngineCore process under replica pid {replica_pid}")


def test_killed_engine_is_reported_replaced_and_nothing_hangs(cluster):
    import psutil

    base = cluster["base"]
    r = run_cli("status", env=cluster["head_env"], timeout=120)
    victim = replica_lines(r.stdout)[0]
    replica_id = victim.split()[1]
    core = engine_core_pid(int(re.search(r"pid (\d+)", victim).group(1)))
    stop = threading.Event()
    results: list[str] = []

    def one_request(i) -> str:
        if i % 2:
            return outcome(stream(base, 32, timeout=180), 32)
        try:
            code, body, headers = call(base, chat(max_tokens=32), timeout=180)
        except Exception as err:  # a dropped connection or a timeout: never acceptable
            return f"BAD: {err!r}"
        err = (body or {}).get("error") or {}
        if code == 200:
            return "ok"
        if code == 503 and headers.get("Retry-After") and set(err) == {
                "message", "type", "param", "code"}:
            return f"error:{err.get('code')}"
        return f"BAD: {code} {body}"

    def client(i):
        while not stop.is_set():
            results.append(one_request(i))

    threads = [threading.Thread(target=client, args=(i,)) for i in range(6)]
    for t in threads:
        t.start()
    try:
        # Traffic flows before the kill: every client has had an answer and sent its next.
        wait_until(lambda: len(results) >= 6, 300, what="an answer for every client")
        psutil.Process(core).kill()
        killed = time.monotonic()
        reported = None
        code, body = None, None
        seen = []  # every /health answer until the report: (seconds after the kill, what)
        while time.monotonic() - killed < 60:
            try:
                code, body = health(base)
            except OSError as err:  # recorded; /health answers within its own bounds
                seen.append((round(time.monotonic() - killed, 1), repr(err)))
                continue
            seen.append((round(time.monotonic() - killed, 1), code,
                         (body.get("error") or {}).get("message"),
                         [(r["replica_id"], r["state"], r["health"])
                          for r in body.get("replicas", [])]))
            # A 503 naming the dead replica unhealthy: the replica itself says so at once (it
            # asks its own engine), any other replica at its view's next refresh (it asks each
            # replica directly, the controller busy or not).
            if code == 503 and any(r["replica_id"] == replica_id and
                                   r["health"].startswith("unhealthy")
                                   for r in body.get("replicas", [])):
                reported = time.monotonic() - killed
                break
            time.sleep(0.5)
        # The slowest path: a view refresh (REFRESH_S) whose probe of the dead replica takes
        # its whole timeout (HEALTH_TIMEOUT_S), plus this loop's own step.
        from launch.api.routes import HEALTH_TIMEOUT_S
        from launch.replicas import ReplicaView

        bound = ReplicaView.REFRESH_S + HEALTH_TIMEOUT_S + 1
        assert reported is not None and reported < bound, f"not reported: {seen[-15:]}"
        assert set(body["error"]) == {"message", "type", "param", "code"}
        time.sleep(10)  # the load goes on a while with one replica down
    finally:
        stop.set()
        for t in threads:
            t.join(timeout=300)
    assert not any(t.is_alive() for t in threads), "a request hung"
    # The replacement is timed once the load stops: on 2 cores, a new engine's start-up beside
    # a saturated one waits on the busy engine's OpenMP threads for many minutes, which would
    # measure the machine, not the stack.
    calm = time.monotonic()

    def replacement():
        code, rows = engine_rows(base)
        return code == 200 and len(rows) == 2 and \
            replica_id not in {r["replica_id"] for r in rows} and rows

    rows = wait_until(replacement, 600, interval=3, what="the killed replica replaced")
    replaced = time.monotonic() - calm
    assert all(r["health"] == "healthy" for r in rows), rows
    bad = [r for r in results if r.startswith("BAD")]
    assert not bad, bad[:5]
    # replica_failed: a 503 with Retry-After, or a stream's closing error event; never a 500.
    assert set(results) <= {"ok", "error:replica_failed"}, set(results)
    assert results.count("ok") > 0 and results.count("error:replica_failed") > 0, results
    print(f"reported after {reported:.1f}s, replaced {replaced:.0f}s after the load stopped; "
          f"{len(results)} requests: "
          f"{results.count('ok')} ok, {results.count('error:replica_failed')} replica_failed")


def test_redeploy_lets_running_streams_finish(cluster):
    """`qwen-vl serve` with a changed config onto the running cluster: Ray Serve replaces the
    replicas a few at a time; the streams running on the old ones end with all their tokens,
    new requests meanwhile are served or refused cleanly (503 + Retry-After), and the
    cluster's own `serve` keeps it."""
    import yaml

    base = cluster["base"]
    # The test before may have just replaced a replica: every replica's view converges first.
    rows = wait_until(lambda: two_healthy(base), 600, interval=3, what="two healthy replicas")
    old_ids = {r["replica_id"] for r in rows}
    data = json.loads(json.dumps(cluster["data"]))
    data["engine"]["max_num_seqs"] = data["engine"].get("max_num_seqs", 16) // 2  # a new version
    cfg_path = cluster["tmp"] / "redeploy.yaml"
    cfg_path.write_text(yaml.safe_dump(data))

    n = 600
    results: dict[int, dict] = {}
    started = [threading.Event(), threading.Event()]
    streams = [threading.Thread(target=lambda i=i: results.update({i: stream(base, n, started[i])}))
               for i in range(2)]  # two: one per replica, most likely
    for t in streams:
        t.start()
    stop = threading.Event()
    meanwhile: list[str] = []

    def prober():
        while not stop.is_set():
            try:
                code, body, headers = call(base, chat(max_tokens=4), timeout=180)
            except Exception as err:
                meanwhile.append(f"BAD: {err!r}")
                continue
            err = (body or {}).get("error") or {}
            meanwhile.append("ok" if code == 200 else f"error:{err.get('code')}"
                             if code == 503 and headers.get("Retry-After") else f"BAD: {code} {body}")
            time.sleep(1)

    probe = threading.Thread(target=prober)
    try:
        assert all(e.wait(120) for e in started), "the streams did not start"
        probe.start()
        r = run_cli("serve", "--config", str(cfg_path), "--detach", env=cluster["head_env"],
                    timeout=1500)
    finally:
        stop.set()
        if probe.is_alive():
            probe.join(timeout=300)
        for t in streams:
            t.join(timeout=600)
    assert r.returncode == 0, r.stdout[-3000:] + r.stderr[-3000:]
    assert "redeploying onto the running cluster" in r.stdout and "redeployed:" in r.stdout
    assert [outcome(results[i], n) for i in range(2)] == ["ok", "ok"], \
        [results[i].get("exception") or results[i]["events"][-3:] for i in range(2)]
    assert meanwhile and not [m for m in meanwhile if m.startswith("BAD")], meanwhile
    code, rows = engine_rows(base)
    assert code == 200 and len(rows) == 2 and all(r["health"] == "healthy" for r in rows), rows
    assert not old_ids & {r["replica_id"] for r in rows}, "a replica was not replaced"
    assert cluster["serve"].poll() is None, "the cluster's own serve ended"
    print(f"redeploy: {len(meanwhile)} requests meanwhile: {meanwhile.count('ok')} ok, "
          f"{len(meanwhile) - meanwhile.count('ok')} refused with Retry-After")


