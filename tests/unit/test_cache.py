"""MemoryCache: TTL expiry, LRU eviction, thread safety."""

from __future__ import annotations

import threading

import pytest

from shared.adapters.cache import Cache, MemoryCache
from tests.fakes.clock import FakeClock


def test_set_get_delete_clear() -> None:
    cache = MemoryCache()
    cache.set("a", {"x": 1}, ttl_seconds=10)
    assert cache.get("a") == {"x": 1}
    assert cache.get("missing", "dflt") == "dflt"
    assert cache.delete("a") is True
    assert cache.delete("a") is False
    cache.set("b", 2)
    cache.clear()
    assert cache.get("b") is None and len(cache) == 0


def test_entries_expire_after_their_ttl() -> None:
    clock = FakeClock()
    cache = MemoryCache(default_ttl_seconds=60, clock=clock)
    cache.set("short", 1, ttl_seconds=5)
    cache.set("default", 2)
    clock.now += 5
    assert cache.get("short") is None
    assert cache.get("default") == 2
    clock.now += 55
    assert cache.get("default") is None
    assert len(cache) == 0


def test_least_recently_used_is_evicted() -> None:
    cache = MemoryCache(max_entries=2)
    cache.set("a", 1)
    cache.set("b", 2)
    assert cache.get("a") == 1  # a is now more recent than b
    cache.set("c", 3)
    assert cache.get("b") is None
    assert (cache.get("a"), cache.get("c")) == (1, 3)


def test_overwrite_refreshes_value_and_ttl() -> None:
    clock = FakeClock()
    cache = MemoryCache(clock=clock)
    cache.set("k", 1, ttl_seconds=5)
    clock.now += 4
    cache.set("k", 2, ttl_seconds=5)
    clock.now += 4
    assert cache.get("k") == 2


def test_invalid_arguments() -> None:
    with pytest.raises(ValueError):
        MemoryCache(max_entries=0)
    with pytest.raises(ValueError):
        MemoryCache().set("k", 1, ttl_seconds=0)


def test_concurrent_use_keeps_the_bound() -> None:
    cache = MemoryCache(max_entries=50)

    def hammer(worker: int) -> None:
        for i in range(500):
            cache.set(f"{worker}-{i}", i)
            cache.get(f"{worker}-{i - 1}")
            cache.delete(f"{worker}-{i - 2}")

    threads = [threading.Thread(target=hammer, args=(w,)) for w in range(8)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert len(cache) <= 50


def test_memory_cache_satisfies_the_protocol() -> None:
    cache: Cache = MemoryCache()
    cache.set("k", "v")
    assert cache.get("k") == "v"
