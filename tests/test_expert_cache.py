"""ExpertCache's LRU and counters (a unit test of the cache logic with a stand-in loader)."""

from __future__ import annotations

import threading
import time

import pytest

from remoe.errors import ExpertBudgetError
from remoe.experts.cache import ExpertCache, release_idle_guests_every


def make_cache(budget, sizes=None):
    calls = []

    def load(expert):
        calls.append(expert)
        return f"weights{expert}", (sizes or {}).get(expert, 10)

    return ExpertCache(load, budget), calls


def test_hits_do_not_reload_and_are_counted():
    cache, calls = make_cache(None)
    assert cache.get((0, 1)) == "weights(0, 1)"
    assert cache.get((0, 1)) == "weights(0, 1)"
    assert calls == [(0, 1)]
    assert (cache.stats.hits, cache.stats.loads, cache.stats.bytes_loaded) == (1, 1, 10)


def test_least_recently_used_is_evicted_first():
    cache, calls = make_cache(30)
    for e in (1, 2, 3):
        cache.get((0, e))
    cache.get((0, 1))  # 1 becomes most recent; 2 is now the oldest
    cache.get((0, 4))
    assert cache.resident() == [(0, 3), (0, 1), (0, 4)]
    assert cache.stats.evictions == 1
    cache.get((0, 2))  # reloaded after eviction
    assert calls.count((0, 2)) == 2
    assert cache.resident_bytes <= 30


def test_large_expert_evicts_as_many_as_needed():
    cache, _ = make_cache(30, sizes={(1, 0): 25})
    cache.get((0, 1))
    cache.get((0, 2))
    cache.get((1, 0))
    assert cache.resident() == [(1, 0)]
    assert cache.stats.evictions == 2


def test_expert_larger_than_budget_is_a_clear_error():
    cache, _ = make_cache(5)
    with pytest.raises(ExpertBudgetError, match=r"expert \(0, 0\) needs 10 bytes.*budget of 5"):
        cache.get((0, 0))
    assert cache.resident_bytes == 0


def test_non_positive_budget_rejected():
    with pytest.raises(ValueError, match="budget_bytes"):
        ExpertCache(lambda e: (None, 1), 0)


def test_a_guest_expert_is_released_once_unused_and_an_own_use_keeps_it():
    cache, calls = make_cache(None)
    cache.get((0, 1), guest=True)  # for another destination's batch
    cache.get((0, 2), guest=True)
    cache.get((0, 3))  # the holder's own
    start = time.monotonic()
    cache.get((0, 2))  # now used as own too: kept for good
    assert cache.guest_bytes == 10
    assert cache.release_idle_guests(start + cache.guest_idle_s / 2) == 0  # used recently
    assert cache.release_idle_guests(start + cache.guest_idle_s + 1) == 1
    assert cache.resident() == [(0, 3), (0, 2)] and cache.resident_bytes == 20
    assert (cache.stats.guests_released, cache.stats.evictions) == (1, 1)
    cache.get((0, 1), guest=True)  # back as a guest: loaded again
    assert calls.count((0, 1)) == 2


def test_each_guest_use_restarts_its_idle_time():
    cache = ExpertCache(lambda e: ("w", 10), None, guest_idle_s=0.2)
    cache.get((0, 1), guest=True)
    time.sleep(0.15)
    cache.get((0, 1), guest=True)  # a use: its idle time counts from now
    time.sleep(0.1)  # 0.25 s after the load, 0.1 s after the last use
    assert cache.release_idle_guests() == 0
    assert cache.release_idle_guests(time.monotonic() + 0.2) == 1


def test_an_idle_service_releases_its_guests_on_a_timer():
    cache = ExpertCache(lambda e: ("w", 10), None, guest_idle_s=0.05)
    cache.get((0, 1), guest=True)
    stop = threading.Event()
    thread = release_idle_guests_every(cache, 0.02, stop)
    try:
        deadline = time.monotonic() + 5
        while cache.resident() and time.monotonic() < deadline:
            time.sleep(0.01)
        assert cache.resident() == [] and cache.resident_bytes == 0
    finally:
        stop.set()
        thread.join(1)
    assert not thread.is_alive()


def test_a_non_positive_guest_idle_time_is_refused():
    with pytest.raises(ValueError, match="guest_idle_s"):
        ExpertCache(lambda e: (None, 1), None, guest_idle_s=0)
