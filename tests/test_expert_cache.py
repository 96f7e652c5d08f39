"""ExpertCache's LRU and counters (a unit test of the cache logic with a stand-in loader)."""

from __future__ import annotations

import pytest

from remoe.errors import ExpertBudgetError
from remoe.experts.cache import ExpertCache


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
