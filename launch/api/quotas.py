"""Per-key quotas (``access.quotas``), counted in one place every replica shares.

The counts live in one Ray actor, ``QuotaLedger``, named per application and pinned to the head
node: every replica on every node asks it before a request reaches an engine, so a quota
holds however many replicas and nodes serve the API. A Ray actor needs nothing the
cluster does not already run (no Redis to deploy, secure and monitor); it costs one actor call
per request, and its state is a few numbers per key.

Each limit counts over the last 60 seconds (a sliding window: in any 60 seconds at most the
quota), or, for concurrency, at the moment. A request reserves tokens when admitted (an upper
bound of its prompt plus max_tokens x n, ``launch.api.usage.token_reservation``) and its reservation
becomes its actual usage when it ends. When the ledger does not answer within
``access.quota_store_timeout_s`` (its node lost, the head restarting) the request is admitted
uncounted or refused with 503, as ``access.quota_store_unavailable`` says. The ledger restarts
with empty windows: for a minute after that, a key can use up to one extra minute's quota.
"""

from __future__ import annotations

import asyncio
import itertools
import logging
import math
import time
from collections import deque
from typing import Any

from ray.exceptions import ActorUnavailableError, GetTimeoutError, RayActorError

from engine.config import AccessSettings

from .rejections import RequestRejected

WINDOW_S = 60.0
# A lease whose request never reported its end (its replica died) stops counting toward
# concurrency after this long: longer than any request the API lets run.
STALE_LEASE_S = 3600.0
NAMESPACE = "qwen_vl_serving"

log = logging.getLogger("ray.serve")
# The ledger did not answer: it is being restarted, its node is gone, or it is too slow.
UNAVAILABLE = (asyncio.TimeoutError, RayActorError, ActorUnavailableError, GetTimeoutError)


class QuotaWindow:
    """The ledger's arithmetic (no Ray): per key, admitted requests with their tokens, and the
    leases still in flight."""

    def __init__(self, clock=time.monotonic):
        self.clock = clock
        # name -> [[admitted_at, tokens, requests (1, or 0 once refunded)], ...]
        self.events: dict[str, deque[list[float]]] = {}
        self.leases: dict[int, tuple[str, float, list[float]]] = {}
        self._ids = itertools.count(1)

    def acquire(self, name: str, quota: dict[str, int | None], tokens: int) -> dict[str, Any]:
        """Admit a request of ``tokens`` reserved tokens for key ``name``, or say which limit
        refuses it and when to retry: ``{"lease": id}`` or ``{"limit", "value", "retry_after",
        "message"}``."""
        now = self.clock()
        events = self.events.setdefault(name, deque())
        while events and events[0][0] <= now - WINDOW_S:
            events.popleft()
        for lease, (key, started, _) in list(self.leases.items()):
            if started <= now - STALE_LEASE_S:
                del self.leases[lease]
        limit = quota.get("concurrent_requests")
        if limit is not None:
            running = sum(1 for key, _, _ in self.leases.values() if key == name)
            if running >= limit:
                return _refused("concurrent_requests", limit, 1,
                                f"{running} requests of this key are in flight; its quota is "
                                f"{limit} at once")
        limit = quota.get("requests_per_minute")
        admitted = [e for e in events if e[2]]
        if limit is not None and len(admitted) >= limit:
            wait = admitted[len(admitted) - limit][0] + WINDOW_S - now
            return _refused("requests_per_minute", limit, wait,
                            f"{len(admitted)} requests of this key in the last 60 s; its "
                            f"quota is {limit} requests per minute")
        limit = quota.get("tokens_per_minute")
        if limit is not None:
            used = sum(e[1] for e in events)
            if used + tokens > limit:
                freed, wait = 0.0, WINDOW_S
                for at, spent, _ in events:
                    freed += spent
                    if used - freed + tokens <= limit:
                        wait = at + WINDOW_S - now
                        break
                return _refused("tokens_per_minute", limit, wait,
                                f"this request may use {tokens} tokens (its prompt's upper "
                                f"bound plus max_tokens x n) and the key has used {used:.0f} "
                                f"in the last 60 s; its quota is {limit} tokens per minute")
        event = [now, float(tokens), 1]
        events.append(event)
        lease = next(self._ids)
        self.leases[lease] = (name, now, event)
        return {"lease": lease}

    def settle(self, lease: int, tokens: int | None, refund: bool = False) -> None:
        """The request ended: its reservation becomes ``tokens`` (None: keep the reservation,
        the usage is not known), and it stops counting as in flight. ``refund``: it was
        refused after admission (no engine capacity, engine lost): it counts for nothing."""
        held = self.leases.pop(lease, None)
        if held is None:
            return
        if refund:
            held[2][1], held[2][2] = 0.0, 0
        elif tokens is not None:
            held[2][1] = float(tokens)


def _refused(limit: str, value: int, wait: float, message: str) -> dict[str, Any]:
    return {"limit": limit, "value": value, "retry_after": max(1, math.ceil(wait)),
            "message": message}


def _ledger_class():
    import ray

    @ray.remote(num_cpus=0, max_restarts=-1, max_concurrency=1)
    class QuotaLedger(QuotaWindow):
        """One per application; its methods run one at a time (no locks needed)."""

        def ready(self) -> bool:
            return True

    return QuotaLedger


class Quotas:
    """The API's side: ask the ledger, map its answer to a 429, settle when done."""

    def __init__(self, access: AccessSettings, app_name: str):
        self.quotas = {name: q.model_dump() for name, q in access.quotas.items()}
        self.timeout_s = access.quota_store_timeout_s
        self.fail_closed = access.quota_store_unavailable == "closed"
        self.name = f"quotas-{app_name}"
        self._ledger = None

    def applies_to(self, key: str) -> bool:
        return key in self.quotas

    def _handle(self):
        if self._ledger is None:
            from ray.util.scheduling_strategies import PlacementGroupSchedulingStrategy

            self._ledger = _ledger_class().options(
                name=self.name, namespace=NAMESPACE, get_if_exists=True, lifetime="detached",
                # on the head node: it outlives any worker node
                resources={"node:__internal_head__": 0.001},
                # not in the placement group of the engine replica that asks first, which
                # would otherwise capture it (and has no head-node resource to give)
                scheduling_strategy=PlacementGroupSchedulingStrategy(placement_group=None)
            ).remote()
        return self._ledger

    async def acquire(self, key: str, tokens: int, retry_after_s: int) -> int | None:
        """A lease for one request of key ``key`` (None: no quota applies, or the ledger is
        unavailable and the config says admit). Raises ``RequestRejected`` (429) over a quota."""
        quota = self.quotas.get(key)
        if quota is None:
            return None
        tpm = quota.get("tokens_per_minute")
        if tpm is not None and tokens > tpm:
            raise RequestRejected(
                400, f"this request may use {tokens} tokens (its prompt's upper bound plus "
                f"max_tokens x n); key {key!r} has a quota of tokens_per_minute = {tpm}, so it "
                "can never be admitted: set a lower max_tokens", param="max_tokens",
                reason="quota_tokens_per_minute")
        try:
            answer = await asyncio.wait_for(
                self._handle().acquire.remote(key, quota, tokens), self.timeout_s)
        except UNAVAILABLE as err:  # the configured failure mode (a bug in the ledger raises)
            self._ledger = None
            log.warning("quota ledger unavailable (%s): request %s", type(err).__name__,
                        "refused" if self.fail_closed else "admitted uncounted")
            if self.fail_closed:
                raise RequestRejected(503, "quota accounting is unavailable; retry later",
                                      code="quota_unavailable", reason="quota_unavailable",
                                      retry_after=retry_after_s) from None
            return None
        if "lease" in answer:
            return answer["lease"]
        raise RequestRejected(
            429, f"key {key!r} is over its quota {answer['limit']} = {answer['value']}: "
            f"{answer['message']}; retry after {answer['retry_after']} s",
            code="rate_limit_exceeded", reason=f"quota_{answer['limit']}",
            retry_after=answer["retry_after"])

    def settle(self, lease: int | None, tokens: int | None, refund: bool = False) -> None:
        if lease is None or self._ledger is None:
            return
        try:
            self._ledger.settle.remote(lease, tokens, refund)  # fire and forget
        except Exception:  # the ledger is gone: its leases went with it
            self._ledger = None
