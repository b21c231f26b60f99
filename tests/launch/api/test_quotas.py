"""The quota ledger's arithmetic (``launch.api.quotas.QuotaWindow``) on a clock the test moves, and
the config rules for key names and quotas. The live stack's quotas: test_monitoring_e2e."""

from __future__ import annotations

import asyncio
import os
from pathlib import Path

import pytest

from engine.config import AccessSettings, ConfigError, parse_config
from launch.api.quotas import NAMESPACE, STALE_LEASE_S, Quotas, QuotaWindow
from launch.api.rejections import RequestRejected
from tests.utils import wait_until


class Clock:
    def __init__(self):
        self.now = 1000.0

    def __call__(self):
        return self.now


@pytest.fixture
def clock():
    return Clock()


def test_requests_per_minute_is_a_sliding_window(clock):
    w = QuotaWindow(clock)
    quota = {"requests_per_minute": 3}
    for step in (0, 10, 20):
        clock.now += step and 10
        assert "lease" in w.acquire("a", quota, 1)
    refused = w.acquire("a", quota, 1)
    assert refused["limit"] == "requests_per_minute" and refused["value"] == 3
    # the first request was admitted at 1000; it leaves the window at 1060 (now 1020)
    assert refused["retry_after"] == 40
    clock.now = 1060.0
    assert "lease" in w.acquire("a", quota, 1)
    assert "lease" in w.acquire("b", quota, 1)  # another key has its own window


def test_tokens_per_minute_reserves_then_settles_to_the_actual_usage(clock):
    w = QuotaWindow(clock)
    quota = {"tokens_per_minute": 1000}
    first = w.acquire("a", quota, 600)["lease"]
    refused = w.acquire("a", quota, 600)
    assert refused["limit"] == "tokens_per_minute" and "used 600" in refused["message"]
    assert refused["retry_after"] == 60
    w.settle(first, 150)  # it used less than it reserved: the room comes back at once
    assert "lease" in w.acquire("a", quota, 600)
    clock.now += 30
    refused = w.acquire("a", quota, 600)  # 750 used: the first request's 150 go at 1060
    assert refused["retry_after"] == 30


def test_settling_without_usage_keeps_the_reservation(clock):
    w = QuotaWindow(clock)
    quota = {"tokens_per_minute": 100}
    w.settle(w.acquire("a", quota, 80)["lease"], None)
    assert w.acquire("a", quota, 30)["limit"] == "tokens_per_minute"


def test_a_refunded_request_counts_for_nothing(clock):
    w = QuotaWindow(clock)
    quota = {"requests_per_minute": 1, "tokens_per_minute": 100}
    w.settle(w.acquire("a", quota, 80)["lease"], None, refund=True)  # 503 after admission
    assert "lease" in w.acquire("a", quota, 90)
    assert w.acquire("a", quota, 1)["limit"] == "requests_per_minute"


def test_concurrency_counts_leases_until_they_end(clock):
    w = QuotaWindow(clock)
    quota = {"concurrent_requests": 2}
    leases = [w.acquire("a", quota, 1)["lease"] for _ in range(2)]
    refused = w.acquire("a", quota, 1)
    assert refused["limit"] == "concurrent_requests" and refused["retry_after"] == 1
    w.settle(leases[0], 1)
    assert "lease" in w.acquire("a", quota, 1)


def test_a_lease_never_settled_stops_counting_after_the_stale_limit(clock):
    w = QuotaWindow(clock)
    quota = {"concurrent_requests": 1}
    w.acquire("a", quota, 1)  # its ingress replica died: never settled
    assert "limit" in w.acquire("a", quota, 1)
    clock.now += STALE_LEASE_S
    assert "lease" in w.acquire("a", quota, 1)


def test_every_limit_at_once_reports_the_first_that_refuses(clock):
    w = QuotaWindow(clock)
    quota = {"requests_per_minute": 10, "tokens_per_minute": 50, "concurrent_requests": 5}
    assert "lease" in w.acquire("a", quota, 40)
    assert w.acquire("a", quota, 40)["limit"] == "tokens_per_minute"


def test_key_names_and_quota_names_are_checked():
    ok = AccessSettings(keys={"team-a": {"env": "TEAM_A_KEY"}, "team.b_2": {"file": "/k"}},
                        quotas={"team-a": {"requests_per_minute": 5}, "default": {},
                                "anonymous": {"concurrent_requests": 1}})
    assert set(ok.quotas) == {"team-a", "default", "anonymous"}
    with pytest.raises(ValueError, match="name no key"):
        AccessSettings(quotas={"team-z": {"requests_per_minute": 5}})
    for bad in ("Team", "default", "anonymous", "-x", "a" * 64, "a b"):
        with pytest.raises(ValueError, match="not a usable key name"):
            AccessSettings(keys={bad: {"env": "X"}})
    with pytest.raises(ValueError, match="exactly one of env and file"):
        AccessSettings(keys={"a": {"env": "X", "file": "/k"}})
    with pytest.raises(ValueError, match="exactly one of env and file"):
        AccessSettings(keys={"a": {}})


def test_a_quota_typo_names_the_key():
    base = {"model": {"source": "embedded:qwen2-vl-tiny", "served_name": "m"}}
    with pytest.raises(ConfigError, match="requests_per_minut"):
        parse_config({**base, "access": {"keys": {"a": {"env": "A"}},
                                         "quotas": {"a": {"requests_per_minut": 5}}}}, "t")
    with pytest.raises(ConfigError, match="greater than or equal to 1"):
        parse_config({**base, "access": {"keys": {"a": {"env": "A"}},
                                         "quotas": {"a": {"tokens_per_minute": 0}}}}, "t")


class _SilentLedger:
    """A ledger that never answers (its node is gone): every call waits forever."""

    class _Method:
        def remote(self, *args):
            return asyncio.get_running_loop().create_future()

    acquire = settle = _Method()


@pytest.mark.parametrize("mode", ["open", "closed"])
def test_an_unreachable_ledger_admits_or_refuses_as_configured(mode):
    quotas = Quotas(AccessSettings(keys={"a": {"env": "A"}}, quotas={
        "a": {"requests_per_minute": 1}}, quota_store_timeout_s=0.05,
        quota_store_unavailable=mode), "app")

    async def ask():
        quotas._ledger = _SilentLedger()
        return await quotas.acquire("a", 10, retry_after_s=7)

    if mode == "open":
        assert asyncio.run(ask()) is None  # admitted, uncounted
    else:
        with pytest.raises(RequestRejected) as err:
            asyncio.run(ask())
        assert (err.value.status, err.value.retry_after, err.value.code) == \
            (503, 7, "quota_unavailable")
    assert asyncio.run(_no_quota(quotas)) is None


async def _no_quota(quotas):
    return await quotas.acquire("someone-else", 10, retry_after_s=7)  # no quota: no call


def test_a_request_larger_than_the_token_quota_is_a_400_naming_max_tokens():
    quotas = Quotas(AccessSettings(keys={"a": {"env": "A"}}, quotas={
        "a": {"tokens_per_minute": 100}}), "app")
    with pytest.raises(RequestRejected) as err:
        asyncio.run(quotas.acquire("a", 101, retry_after_s=5))
    assert err.value.status == 400 and err.value.param == "max_tokens"
    assert "tokens_per_minute = 100" in err.value.message and "101" in err.value.message


class _IngressReplica:
    """Stands in for an ingress replica: its own process, its own ``Quotas`` client."""

    def __init__(self, access: dict):
        self.quotas = Quotas(AccessSettings.model_validate(access), "shared-app")

    async def acquire(self, key: str) -> str:
        try:
            lease = await self.quotas.acquire(key, 1, retry_after_s=5)
        except RequestRejected as err:
            return f"{err.status} {err.reason}"
        return "admitted" if lease is not None else "uncounted"

    def kill_ledger(self) -> None:
        import ray

        ray.kill(self.quotas._handle(), no_restart=False)


@pytest.mark.slow
def test_ingress_replicas_in_other_processes_share_one_ledger_which_restarts_empty():
    """Two processes, one quota: the ledger actor counts for both. Killed, Ray restarts it
    (max_restarts=-1) with empty windows, as docs/operations.md says."""
    import ray

    root = str(Path(__file__).resolve().parents[3])
    ray.init(num_cpus=2, include_dashboard=False, runtime_env={"env_vars": {"PYTHONPATH": root}})
    try:
        access = {"keys": {"a": {"env": "A"}}, "quotas": {"a": {"requests_per_minute": 3}}}
        replica = ray.remote(num_cpus=0)(_IngressReplica)
        one, two = replica.remote(access), replica.remote(access)
        answers = [ray.get(r.acquire.remote("a")) for r in (one, two, one, two, one)]
        assert answers == ["admitted"] * 3 + ["429 quota_requests_per_minute"] * 2
        ledger = ray.get_actor("quotas-shared-app", namespace=NAMESPACE)

        def ledger_pid():
            return ray.get(ledger.__ray_call__.remote(lambda self: os.getpid()), timeout=10)

        before = ledger_pid()
        ray.get(one.kill_ledger.remote())

        def restarted():  # ray.kill returns before the actor dies: a call may still reach it
            try:
                return ledger_pid() != before or None
            except ray.exceptions.RayError:  # dead, not restarted yet
                return None

        assert wait_until(restarted, 60, interval=0.5, what="the ledger's restart")

        def after_restart():
            answer = ray.get(two.acquire.remote("a"))
            return answer if answer != "uncounted" else None  # restarting: admitted open

        assert wait_until(after_restart, 60, interval=0.5) == "admitted"
    finally:
        ray.shutdown()
