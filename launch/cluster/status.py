"""``qwen-vl status``: nodes, the application, its replicas, what they wait for, health."""

from __future__ import annotations

import asyncio

from launch.replicas import status_name
from .connect import base_url, connect, http_get, node_rows
from .deploy import replica_counts
from .local_cluster import ClusterState


def status_report(state: ClusterState) -> tuple[list[str], int]:
    """``qwen-vl status``'s lines for a recorded cluster, and its exit code (0: healthy)."""
    from ray import serve

    from launch.replicas import replica_report
    from .scheduling import alive_nodes, describe, nodes_summary, waiting_replicas

    out: list[str] = []
    line = out.append

    connect(state.address)
    line(f"cluster: {state.address} (started by qwen-vl: {state.started_by_us}"
         + (", this machine is a worker node)" if state.role == "worker" else ")"))
    nodes = node_rows()
    line(f"nodes:   {sum(n['alive'] for n in nodes)} alive")
    for n in nodes:
        line(f"  {n['node_id'][:12]}  {n['ip']:<15} {'head  ' if n['head'] else 'worker'} "
             f"{'alive' if n['alive'] else 'DEAD '}  CPU {n['cpus']:g}, GPU {n['gpus']:g}")
    if state.role == "worker":
        return out, 0
    status = serve.status().applications.get(state.app_name)
    url = base_url(state.http_host, state.http_port)
    code, body = http_get(url + "/health", timeout=15)
    line(f"api:     {url}/v1")
    if state.temp_dir:
        line(f"logs:    {state.temp_dir}/session_latest/logs")
    if status is None:
        line("application: not deployed")
        return out, 1
    line(f"application {state.app_name}: {status_name(status.status)}")
    for name, dep in status.deployments.items():
        line(f"  {name}: {status_name(dep.status)} ({replica_counts(dep) or 'no replicas'})")
    waiting = waiting_replicas(state.app_name)
    if waiting:
        line(f"waiting: {describe(waiting)}; {nodes_summary(alive_nodes())}")
    line("replicas:")
    for r in asyncio.run(replica_report(state.app_name)):
        if r["replica_id"] is None:  # the deployment itself is marked unhealthy by Serve
            line(f"  {r['deployment']:<28} {r['health']}")
            continue
        line(f"  {r['deployment']:<28} {r['replica_id']:<10} {r['state']:<9} "
             f"node {r['node_ip']} ({(r['node_id'] or '')[:12]})  pid {r['pid']}  {r['health']}")
    health = (body or {}).get("status") or ((body or {}).get("error") or {}).get("message")
    line(f"health:  {'ok' if code == 200 else f'HTTP {code}'} ({health})")
    return out, 0 if code == 200 else 1
