"""The image-affinity policy on replicas described as Ray's router sees them (their ids and
routing stats): which replica each request goes to, and why. The live stack's routing is in
``tests/launch/test_routing_e2e.py``."""

import asyncio
from types import SimpleNamespace

import pytest

from launch.router.affinity import INFLIGHT_STAT, ImageAffinityRouter
from launch.router.media_keys import media_keys
from tests.utils import chat_body, image_part, with_text


def replica(name: str, inflight: int | None = 0):
    return SimpleNamespace(replica_id=name,
                           routing_stats={} if inflight is None else {INFLIGHT_STAT: inflight})


def make(**kw) -> ImageAffinityRouter:
    router = ImageAffinityRouter.__new__(ImageAffinityRouter)  # the policy, without Ray's wiring
    router.initialize_state(**kw)
    # Its clock moves one second per request, so what it sent is forgotten after a report
    # period of under a second and kept for a longer one, whatever the machine's speed.
    ticks = iter(range(1, 10_000))
    router._clock = lambda: float(next(ticks))
    router.outcomes = []
    router._count = router.outcomes.append
    return router


def route(router, replicas, *urls: str) -> str:
    body = chat_body(with_text(*(image_part(u) for u in urls)))
    pending = SimpleNamespace(args=[SimpleNamespace(**body)])
    ranks = asyncio.run(router.choose_replicas(replicas, pending))
    assert [r.replica_id for rank in ranks for r in rank] and len(ranks[0]) == 1
    assert sorted(r.replica_id for rank in ranks for r in rank) == sorted(
        r.replica_id for r in replicas)  # every replica ranked once, the chosen one first
    return ranks[0][0].replica_id


def test_a_repeated_image_goes_where_it_went_first():
    router = make(load_report_s=0.5)  # what it sent is forgotten by the next request
    replicas = [replica("a"), replica("b")]
    first = route(router, replicas, "https://e.com/cat.png")
    for _ in range(5):
        assert route(router, replicas, "https://e.com/cat.png") == first
    assert router.outcomes == ["new"] + ["hit"] * 5


def test_text_only_and_new_images_go_to_the_least_loaded():
    router = make(load_report_s=0.5)
    replicas = [replica("a", 3), replica("b", 1)]
    assert route(router, replicas) == "b"
    assert route(router, replicas, "https://e.com/new.png") == "b"
    assert router.outcomes == ["new"]  # text-only requests are not counted


def test_a_busy_preferred_replica_is_passed_over_beyond_the_gap():
    router = make(max_load_gap=2, load_report_s=0.5)
    assert route(router, [replica("a", 0), replica("b", 0)], "https://e.com/x.png") in "ab"
    owner = router._owners[next(iter(router._owners))]
    other = "b" if owner == "a" else "a"
    at_gap = [replica(owner, 2), replica(other, 0)]
    assert route(router, at_gap, "https://e.com/x.png") == owner  # 2 more: still preferred
    over = [replica(owner, 3), replica(other, 0)]
    assert route(router, over, "https://e.com/x.png") == other  # 3 more: the least loaded
    assert router.outcomes == ["new", "hit", "busy"]
    # The item now maps to the replica that took it.
    assert route(router, [replica(owner, 0), replica(other, 0)], "https://e.com/x.png") == other


def test_what_this_router_sent_counts_until_the_next_report():
    router = make(max_load_gap=1, load_report_s=60)
    replicas = [replica("a", None), replica("b", None)]  # no reports yet
    first = route(router, replicas, "https://e.com/x.png")
    assert route(router, replicas, "https://e.com/x.png") == first  # 1 sent vs 0: within the gap
    # 2 sent vs 0: busy. Text-only requests then fill the other replica first.
    second = route(router, replicas, "https://e.com/x.png")
    assert second != first and router.outcomes == ["new", "hit", "busy"]


def test_a_report_and_what_was_sent_are_not_added_up():
    """Most of what was sent within a report period is in the report already: the larger of
    the two counts, not their sum."""
    router = make(max_load_gap=2, load_report_s=60)
    owner = route(router, [replica("a", None), replica("b", None)], "https://e.com/x.png")
    other = "b" if owner == "a" else "a"
    # 1 sent, 2 reported: load 2, within the gap of the other's 0
    assert route(router, [replica(owner, 2), replica(other, 0)], "https://e.com/x.png") == owner
    # 2 sent, 2 reported: still 2 (a sum would be 4, past the gap)
    assert route(router, [replica(owner, 2), replica(other, 0)], "https://e.com/x.png") == owner
    assert router.outcomes == ["new", "hit", "hit"]


def test_a_replica_that_is_gone_loses_its_items():
    router = make(load_report_s=0.5)
    owner = route(router, [replica("a"), replica("b")], "https://e.com/x.png")
    assert route(router, [replica("c")], "https://e.com/x.png") == "c"
    assert router.outcomes == ["new", "gone"]
    assert set(router._sent) == {"c"}  # the send times of replicas that left are dropped
    assert route(router, [replica("c"), replica(owner)], "https://e.com/x.png") == "c"


def test_the_replica_holding_most_of_a_requests_items_is_preferred():
    router = make(load_report_s=0.5)
    one, two, three = (media_keys(chat_body(with_text(image_part(f"https://e.com/{i}.png"))))[0]
                       for i in (1, 2, 3))
    router._owners.update({one: "a", two: "b", three: "b"})
    replicas = [replica("a"), replica("b")]
    assert route(router, replicas, "https://e.com/1.png", "https://e.com/2.png",
                 "https://e.com/3.png") == "b"
    assert route(router, replicas, "https://e.com/1.png") == "b"  # every item now maps to b
    assert router.outcomes == ["hit", "hit"]


def test_the_map_is_bounded():
    router = make(entries=3, load_report_s=0.5)
    replicas = [replica("a"), replica("b")]
    for i in range(10):
        route(router, replicas, f"https://e.com/{i}.png")
    assert len(router._owners) == 3
    route(router, replicas, "https://e.com/0.png")  # dropped long ago: new again
    assert router.outcomes[-1] == "new"


@pytest.mark.parametrize("pending", [None, SimpleNamespace(args=[]),
                                     SimpleNamespace(args=[SimpleNamespace(prompt="x")])])
def test_requests_without_a_body_to_read_go_to_the_least_loaded(pending):
    router = make()
    ranks = asyncio.run(router.choose_replicas([replica("a", 5), replica("b", 2)], pending))
    assert ranks[0][0].replica_id == "b" and router.outcomes == []


def test_no_replicas_no_choice():
    assert asyncio.run(make().choose_replicas([], None)) == []
