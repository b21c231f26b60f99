"""What a replica that does not start is waiting for, read from Ray's placement groups.

Ray Serve reserves each replica's resources as a placement group named
``SERVE_REPLICA::<app>#<deployment>#<replica>``. Ray's scheduler marks a group it cannot place
``INFEASIBLE`` (no node could ever hold one of its bundles: a GPU on a CPU-only cluster, more
CPUs or memory than any node has) or ``NO_RESOURCES`` (the nodes are big enough, but busy).
An infeasible group waits for a node that only an autoscaler can add; without one it waits
forever, so ``serve`` refuses it at once with the demand, the nodes and what to do.
"""

from __future__ import annotations

import json
from dataclasses import dataclass

REPLICA_GROUP_PREFIX = "SERVE_REPLICA::"
WAITING_STATES = ("INFEASIBLE", "NO_RESOURCES")
# Ray's read-only autoscaler (every head started by `ray start` runs one, which adds nothing)
# names each node type "node_<node id>"; a real autoscaler's types are its configured groups.
READONLY_NODE_TYPE_PREFIX = "node_"


@dataclass(frozen=True)
class WaitingReplica:
    deployment: str
    bundles: tuple[dict[str, float], ...]
    infeasible: bool  # no node could ever hold it (else: the nodes are busy)

    def demand(self) -> str:
        return " + ".join(format_resources(b) for b in self.bundles)


def format_resources(res: dict[str, float]) -> str:
    """``{GPU: 1, CPU: 1}``: Ray's resource names, memory in GiB."""
    parts = []
    for key in sorted(res, key=lambda k: (k not in ("GPU", "CPU", "memory"), k)):
        value = res[key]
        if key.startswith(("node:", "object_store_memory")) or "_group_" in key \
                or not isinstance(value, (int, float)):
            continue
        parts.append(f"{key}: {value / (1 << 30):.1f} GiB" if key == "memory"
                     else f"{key}: {value:g}")
    return "{" + ", ".join(parts) + "}"


def waiting_replicas(app_name: str) -> list[WaitingReplica]:
    """The app's replicas whose resources Ray cannot place now (connected to Ray)."""
    from ray.util.placement_group import placement_group_table

    prefix = f"{REPLICA_GROUP_PREFIX}{app_name}#"
    out = []
    for group in placement_group_table().values():
        state = (group.get("stats") or {}).get("scheduling_state")
        if not (group.get("name") or "").startswith(prefix) or group.get("state") != "PENDING" \
                or state not in WAITING_STATES:
            continue
        deployment = group["name"][len(prefix):].rsplit("#", 1)[0]
        bundles = tuple(dict(b) for _, b in sorted(group["bundles"].items()))
        out.append(WaitingReplica(deployment, bundles, state == "INFEASIBLE"))
    return out


def alive_nodes() -> list[dict[str, float]]:
    """Each alive node's resources, with its address under "ip" (connected to Ray)."""
    import ray

    return [{"CPU": 0.0, "GPU": 0.0, **(n.get("Resources") or {}),
             "ip": n.get("NodeManagerAddress")} for n in ray.nodes() if n.get("Alive")]


def unmet(waiting: list[WaitingReplica], nodes: list[dict]) -> list[str]:
    """The resources a waiting bundle asks for beyond the largest node's."""
    keys = []
    for w in waiting:
        for bundle in w.bundles:
            for key, value in bundle.items():
                if value > max((n.get(key, 0) for n in nodes), default=0) and key not in keys:
                    keys.append(key)
    return keys


def nodes_summary(nodes: list[dict]) -> str:
    if not nodes:
        return "the cluster has no alive node"
    each = "; ".join(f"{n['ip']} {format_resources(n)}" for n in nodes)
    return f"the cluster's {len(nodes)} node(s) have {each}"


def autoscaler_present() -> bool:
    """Whether something can add nodes to the connected cluster (KubeRay's autoscaler, v1 or
    v2); a head started by ``ray start`` alone reports only its read-only one."""
    from launch.ray_compat import autoscaler_report, autoscaler_v2

    try:
        if autoscaler_v2():
            return True
    except Exception:  # an older cluster without the flag: v1 below
        pass
    raw = autoscaler_report()
    if not raw:
        return False
    report = json.loads(raw).get("autoscaler_report") or {}
    types = set(report.get("active_nodes") or {}) | set(report.get("pending_launches") or {})
    types |= set((report.get("node_type_mapping") or {}).values())
    return any(not t.startswith(READONLY_NODE_TYPE_PREFIX) for t in types)


def describe(waiting: list[WaitingReplica]) -> str:
    """One line: what each waiting deployment's replica needs."""
    seen: dict[str, WaitingReplica] = {}
    for w in waiting:
        seen.setdefault(w.deployment, w)
    return "; ".join(f"{w.deployment}: each replica needs {w.demand()}"
                     + ("" if w.infeasible else " (waiting for busy nodes)")
                     for w in seen.values())


def advice(keys: list[str], address: str) -> str:
    """What to do about replicas that ask for more of ``keys`` than any node has."""
    if "GPU" in keys:
        return ("serve on CPU (deployment.device: cpu, e.g. configs/default.yaml; 8-bit GPTQ has "
                "no CPU kernel: use the GPTQ-Int4 or AWQ variant), or add a GPU node: "
                f"qwen-vl join --address {address} --num-gpus N")
    if "CPU" in keys:
        return ("lower deployment.cpus_per_replica (or raise server.ray_num_cpus), or add a "
                f"larger node: qwen-vl join --address {address} --num-cpus N")
    return f"add a node that has them: qwen-vl join --address {address}"


def infeasible_message(waiting: list[WaitingReplica], nodes: list[dict], address: str) -> str:
    """One line for replicas no node can hold: the demand, the nodes, what to do."""
    keys = unmet(waiting, nodes)
    return (f"{describe(waiting)}; {nodes_summary(nodes)}; no node has enough "
            f"{', '.join(keys) or 'resources'} and no autoscaler can add one. "
            f"What to do: {advice(keys, address)}")
