"""The replica's own Ray metrics: counters gathered per request and handed to Ray once per
watch round, and gauges. Ray's metrics agent exports them with a ``ray_`` prefix (counters with a
``_total`` suffix); ``launch.api.usage`` and ``launch.api.rejections`` name them."""

from __future__ import annotations

from typing import Any


_counters: dict[str, Any] = {}
# Counts gathered since the last flush, by counter and tags: a request adds to a dict, and
# Ray's metrics (a tag check and a record per call) see one call per counter and tag set per
# flush, not several per request.
_pending: dict[tuple[str, tuple[tuple[str, str], ...]], float] = {}
_described: dict[str, tuple[str, tuple[str, ...]]] = {}


def inc_counter(name: str, description: str, tags: dict[str, str], value: float = 1) -> None:
    """Add ``value`` to one of our Ray counters; Ray sees it at the next ``flush_counters``."""
    if value <= 0:
        return
    if name not in _described:
        _described[name] = (description, tuple(tags))
    key = (name, tuple(tags.items()))
    _pending[key] = _pending.get(key, 0) + value


def flush_counters() -> None:
    """Hand what ``inc_counter`` gathered to Ray's counters, made on first use (the replica's
    watch loop calls this every ``launch.drain.POLL_S``, well inside Ray's export interval); a
    no-op outside a Ray worker (metrics must never break request handling)."""
    pending = dict(_pending)
    _pending.clear()
    for (name, tags), value in pending.items():
        try:
            counter = _counters.get(name)
            if counter is None:
                from ray.serve.metrics import Counter

                description, keys = _described[name]
                counter = _counters[name] = Counter(name, description=description, tag_keys=keys)
            counter.inc(value, tags=dict(tags))
        except Exception:  # metrics must never break request handling
            pass


def set_gauge(name: str, description: str, value: float) -> None:
    """Set one of the replica's own gauges (Ray labels it with the replica)."""
    try:
        gauge = _counters.get(name)
        if gauge is None:
            from ray.serve.metrics import Gauge

            gauge = _counters[name] = Gauge(name, description=description)
        gauge.set(value)
    except Exception:  # metrics must never break request handling
        pass
