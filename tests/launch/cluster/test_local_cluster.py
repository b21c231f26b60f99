"""The local Ray head ``qwen-vl serve`` starts (``launch.cluster.local_cluster``)."""

import json
import os
import subprocess
import sys

import pytest

from tests.utils import ROOT

# In a fresh process with HOME = an empty folder: start a head the way `qwen-vl serve` does
# (RAY_AUTH_MODE=token), connect a driver to it, then stop every process of it.
START_CONNECT_STOP = r"""
import json, ray
from launch.cluster.local_cluster import (ClusterState, free_port, start_head, stop_processes,
                                  cluster_processes, write_state)
from launch.cluster.start import node_ray_env
from launch.cluster.stop import cluster_ended
address, temp_dir = start_head(num_cpus=1, metrics_port=free_port(),
                               env={"RAY_SERVE_THROUGHPUT_OPTIMIZED": "1"})
state = ClusterState(address=address, temp_dir=temp_dir, started_by_us=True, metrics_port=0,
                     http_host="", http_port=0, app_name="")
write_state(state)
try:
    ray.init(address=address, log_to_driver=False)
    cpus = ray.cluster_resources().get("CPU")
    ray.shutdown()
    flags = node_ray_env(state)
    running = cluster_ended(state)
finally:
    stop_processes(state)
# Its processes ended without a `qwen-vl stop`: what a foreground `serve` sees when it dies.
died = cluster_ended(state)
print(json.dumps({"cpus": cpus, "left": cluster_processes(state), "flags": flags,
                  "running": running, "died": died}))
"""


@pytest.mark.slow
def test_head_starts_on_a_machine_without_a_ray_token(tmp_path):
    """`ray start --head` with token auth refuses to start without a token and never creates
    one; on a fresh machine (no ~/.ray) the head must still start, with a token it created."""
    home = tmp_path / "home"
    home.mkdir()
    env = {k: v for k, v in os.environ.items()
           if k not in ("RAY_AUTH_TOKEN", "RAY_AUTH_TOKEN_PATH", "RAY_ADDRESS")}
    env.update(HOME=str(home), RAY_AUTH_MODE="token", QWEN_VL_RUN_DIR=str(tmp_path / "run"))
    r = subprocess.run([sys.executable, "-c", START_CONNECT_STOP], cwd=ROOT, env=env,
                       capture_output=True, text=True, timeout=300)
    assert r.returncode == 0, r.stderr[-3000:]
    result = json.loads(r.stdout.strip().splitlines()[-1])
    # The node's flags as its raylet started with them (what a redeploy compares with).
    died = result.pop("died")
    assert result == {"cpus": 1.0, "left": [], "running": None,
                      "flags": {"RAY_SERVE_THROUGHPUT_OPTIMIZED": "1"}}
    assert died[0] == 1 and died[1].startswith("the Ray head died (its GCS server is gone)"), died
    token_file = home / ".ray" / "auth_token"
    token = token_file.read_text().strip()
    assert len(token) >= 16
    assert token_file.stat().st_mode & 0o077 == 0  # a secret: the owner's only
    assert token not in r.stdout + r.stderr  # the secret is never printed


def test_free_ports_avoid_the_ephemeral_and_worker_ranges_and_each_other():
    """Ports handed to servers that bind them later lie outside the kernel's ephemeral range
    (outbound connections take their source ports from it) and above the local nodes' worker
    ports, are bindable on every address, and are not handed out twice while unbound."""
    import socket

    from launch.cluster.local_cluster import WORKER_NODE_WORKER_PORTS, ephemeral_range, free_port

    low, high = ephemeral_range()
    ports = [free_port() for _ in range(300)]
    assert len(set(ports)) == len(ports)
    assert all(p > WORKER_NODE_WORKER_PORTS[1] and not low <= p <= high for p in ports)
    with socket.socket() as s:
        s.bind(("0.0.0.0", ports[-1]))


def test_free_port_skips_a_port_in_use(monkeypatch):
    import socket

    from launch.cluster import local_cluster

    with socket.socket() as held:
        held.bind(("127.0.0.1", 0))
        busy = held.getsockname()[1]
        held.listen()
        with socket.socket() as probe:
            probe.bind(("127.0.0.1", 0))
            idle = probe.getsockname()[1]
        picks = iter([busy, idle])
        monkeypatch.setattr(local_cluster._random, "choice", lambda candidates: next(picks))
        assert local_cluster.free_port() == idle


def test_free_port_skips_the_haproxy_ports_a_parent_picked(monkeypatch):
    """A parent (a load scenario) picks HAProxy's metrics and stats ports and passes them in
    the environment; the Ray ports this process picks never take them, though both are free
    until HAProxy starts."""
    from launch.cluster import local_cluster

    metrics, stats, idle = (local_cluster.free_port() for _ in range(3))
    monkeypatch.setenv("RAY_SERVE_HAPROXY_METRICS_PORT", str(metrics))
    monkeypatch.setenv("RAY_SERVE_HAPROXY_STATS_PORT", str(stats))
    picks = iter([metrics, stats, idle])
    monkeypatch.setattr(local_cluster._random, "choice", lambda candidates: next(picks))
    local_cluster._handed_out.difference_update({metrics, stats, idle})
    assert local_cluster.free_port() == idle


def test_a_stop_elsewhere_ends_a_foreground_serve(tmp_path, monkeypatch):
    """What a foreground `serve` reads every few seconds: the state file gone, another
    cluster's, or marked stopping means `qwen-vl stop` ran elsewhere: exit 0, saying so."""
    from launch.cluster.stop import cluster_ended
    from launch.cluster.local_cluster import ClusterState, clear_state, read_state, write_state

    monkeypatch.setenv("QWEN_VL_RUN_DIR", str(tmp_path / "run"))
    state = ClusterState(address="127.0.0.1:1", temp_dir=str(tmp_path / "ray"),
                         started_by_us=True, metrics_port=0, http_host="", http_port=0,
                         app_name="a")
    write_state(state)
    assert read_state() == state and list((tmp_path / "run").iterdir()) == [
        tmp_path / "run" / "cluster.json"]  # written whole, no temporary file left
    state.stopping = True
    write_state(state)
    stopped = (0, "stopped by `qwen-vl stop` elsewhere; this `serve` ends with it")
    assert cluster_ended(ClusterState(**{**state.__dict__, "stopping": False})) == stopped
    clear_state()
    assert cluster_ended(state) == stopped
    write_state(ClusterState(**{**state.__dict__, "address": "127.0.0.1:2", "stopping": False}))
    assert cluster_ended(state) == stopped
    # Recorded, not stopping, but no process of it runs: died, exit 1.
    write_state(ClusterState(**{**state.__dict__, "stopping": False}))
    code, why = cluster_ended(ClusterState(**{**state.__dict__, "stopping": False}))
    assert code == 1 and "the Ray head died" in why and str(tmp_path / "ray") in why, why


def test_stop_ends_a_haproxy_started_by_a_reload_after_the_listing(tmp_path):
    """HAProxy outlives its manager: a reload's new process (-sf <old>) started after stop's
    listing, or one whose manager died first (the head gone). Either holds the node's ports
    for every later stack; stop finds the first by the config directory it shares with the
    cluster's HAProxy, the second by the cluster's API port in its config."""
    import psutil

    from launch.cluster.local_cluster import ClusterState, cluster_processes, stop_processes

    fake = tmp_path / "bin" / "haproxy"  # a process the kernel names "haproxy"
    fake.parent.mkdir()
    fake.write_text("#!/bin/sh\nwhile :; do sleep 1; done\n")
    fake.chmod(0o755)
    conf = tmp_path / "haproxy-serve" / "node1"
    conf.mkdir(parents=True)
    state = ClusterState(address="127.0.0.1:1", temp_dir=str(tmp_path / "ray-temp"),
                         started_by_us=True, metrics_port=0, http_host="", http_port=0,
                         app_name="a")
    ours = subprocess.Popen([str(fake), "-db", "-f", str(conf / "haproxy.cfg"), state.temp_dir],
                            start_new_session=True)
    stray = subprocess.Popen([str(fake), "-db", "-f", str(conf / "haproxy.cfg"), "-sf",
                              str(ours.pid)], start_new_session=True)
    other = subprocess.Popen([str(fake), "-db", "-f", str(tmp_path / "other" / "haproxy.cfg")],
                             start_new_session=True)
    # One whose manager died before the stop: not a child of the cluster, but it binds the API port.
    orphan_conf = tmp_path / "haproxy-serve" / "node2"
    orphan_conf.mkdir()
    (orphan_conf / "haproxy.cfg").write_text("frontend http_frontend\n    bind 127.0.0.1:8123\n")
    orphan = subprocess.Popen([str(fake), "-db", "-f", str(orphan_conf / "haproxy.cfg")],
                              start_new_session=True)
    state.http_port = 8123
    try:
        assert psutil.Process(stray.pid).name() == "haproxy"
        listed = cluster_processes(state)
        assert ours.pid in listed and stray.pid not in listed  # the listing misses the stray
        stop_processes(state, grace_s=2)
        for p in (ours, stray, orphan):
            assert p.wait(timeout=10) is not None
        assert other.poll() is None  # another cluster's HAProxy is left alone
    finally:
        for p in (ours, stray, other, orphan):
            if p.poll() is None:
                p.kill()
                p.wait()
