"""The image-affinity request router (``deployment.routing.image_affinity``), on Ray Serve's
public ``RequestRouter`` API.

HAProxy asks Ray Serve LLM's router replica (``LLMRouter``, ``launch.ray_compat``) for each
request's engine replica, with the request body; the router hands the body to this policy. A
request whose images or videos (``media_keys``) a replica handled recently goes to that replica,
whose vLLM processor, encoder and prefix caches already hold them; other requests, and any
whose preferred replica holds more than ``max_load_gap`` requests beyond the least-loaded one,
go to the least-loaded replica. What each replica holds is what it reports (its API's requests
in flight, every ``load_report_s``), or what this router sent it within that period if more.

The map from media key to replica is this router's own, bounded (least recently used dropped):
a second router replica, or a restarted one, starts without it and only loses hits.
"""

from __future__ import annotations

import random
import time
from collections import Counter, OrderedDict, deque
from typing import Any

from ray.serve.request_router import PendingRequest, ReplicaID, RequestRouter, RunningReplica

from .media_keys import media_keys

# The router's one metric, exported by Ray's metrics agent as
# ray_qwen_vl_router_affinity_total{outcome}, for requests with media: "hit" (sent to the
# replica that handled an item of it), "new" (no item seen before), "busy" (that replica held
# too many more requests than the least-loaded one), "gone" (that replica has left the
# deployment).
OUTCOMES = ("hit", "new", "busy", "gone")
# What a replica reports in its routing stats (``launch.api.server``): the requests it holds.
INFLIGHT_STAT = "inflight"


class ImageAffinityRouter(RequestRouter):
    def initialize_state(self, entries: int = 10000, max_load_gap: int = 4,
                         load_report_s: float = 1.0, **_: Any) -> None:
        self._owners: OrderedDict[str, ReplicaID] = OrderedDict()
        self._entries = entries
        self._max_load_gap = max_load_gap
        self._window_s = load_report_s
        self._sent: dict[ReplicaID, deque[float]] = {}  # when this router sent each request
        self._counter: Any = None
        self._clock = time.monotonic

    async def choose_replicas(self, candidate_replicas: list[RunningReplica],
                              pending_request: PendingRequest | None = None
                              ) -> list[list[RunningReplica]]:
        if not candidate_replicas:
            return []
        now = self._clock()
        load = {r.replica_id: self._load(r, now) for r in candidate_replicas}
        if not self._sent.keys() <= load.keys():  # replicas that have left keep no send times
            self._sent = {rid: sent for rid, sent in self._sent.items() if rid in load}
        low = min(load.values())
        chosen = random.choice([r for r in candidate_replicas if load[r.replica_id] == low])
        args = pending_request.args if pending_request is not None else None
        keys = media_keys(args[0]) if args else []
        if keys:
            outcome, chosen = self._preferred(keys, candidate_replicas, load, chosen)
            self._count(outcome)
            for key in keys:
                self._owners[key] = chosen.replica_id
                self._owners.move_to_end(key)
            while len(self._owners) > self._entries:
                self._owners.popitem(last=False)
        self._sent.setdefault(chosen.replica_id, deque()).append(now)
        return [[chosen], [r for r in candidate_replicas if r is not chosen]]

    def _preferred(self, keys: list[str], candidates: list[RunningReplica],
                   load: dict[ReplicaID, int], least: RunningReplica
                   ) -> tuple[str, RunningReplica]:
        """(outcome, replica) for a request with media: the replica that handled most of its
        items, unless it is gone or too busy."""
        owners = [o for o in (self._owners.get(k) for k in keys) if o is not None]
        if not owners:
            return "new", least
        by_id = {r.replica_id: r for r in candidates}
        serving = Counter(o for o in owners if o in by_id)
        if not serving:
            return "gone", least
        best = serving.most_common(1)[0][0]
        if load[best] - load[least.replica_id] > self._max_load_gap:
            return "busy", least
        return "hit", by_id[best]

    def _load(self, replica: RunningReplica, now: float) -> int:
        """The requests a replica holds: as it last reported, or as many as this router sent it
        within one report period if that is more (a burst the report does not show yet). Not
        their sum: most of what was sent within the period is in the report already."""
        sent = self._sent.get(replica.replica_id)
        while sent and now - sent[0] > self._window_s:
            sent.popleft()
        reported = (replica.routing_stats or {}).get(INFLIGHT_STAT, 0)
        return max(reported if isinstance(reported, int) else 0, len(sent) if sent else 0)

    def _count(self, outcome: str) -> None:
        try:
            if self._counter is None:
                from ray.serve.metrics import Counter as RayCounter

                self._counter = RayCounter(
                    "qwen_vl_router_affinity", description="Requests with images or videos "
                    "by the image-affinity router's choice: hit, new, busy, gone.",
                    tag_keys=("outcome",))
            self._counter.inc(1, tags={"outcome": outcome})
        except Exception:  # metrics must never break routing
            pass
