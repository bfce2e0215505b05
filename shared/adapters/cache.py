"""Result cache behind a small Protocol: an in-memory TTL + LRU cache here, Redis in shared/adapters/redis_cache.py.

Keys are strings; values must be plain JSON-able data (the memory cache keeps references, Redis stores JSON), so
the same caller works with either.
"""

from __future__ import annotations

import threading
import time
from collections import OrderedDict
from typing import Any, Callable, Protocol

_MISSING = object()


class Cache(Protocol):
    """A key-value cache with per-entry time-to-live."""

    def get(self, key: str, default: Any = None) -> Any:
        """The value stored under `key`, or `default` when absent or expired."""
        ...

    def set(self, key: str, value: Any, ttl_seconds: float | None = None) -> None:
        """Store `value`; it expires after `ttl_seconds` (None: the cache's default TTL)."""
        ...

    def delete(self, key: str) -> bool:
        """Remove `key`; True when it was present (and not expired)."""
        ...

    def clear(self) -> None:
        """Remove everything."""
        ...


class MemoryCache:
    """Thread-safe in-process cache: entries expire after their TTL, and beyond `max_entries` the least recently
    used entry is evicted. `clock` is injectable for tests (default time.monotonic)."""

    def __init__(self, *, max_entries: int = 1024, default_ttl_seconds: float = 300.0,
                 clock: Callable[[], float] = time.monotonic) -> None:
        if max_entries < 1:
            raise ValueError("max_entries must be at least 1")
        if default_ttl_seconds <= 0:
            raise ValueError("default_ttl_seconds must be positive")
        self._max = max_entries
        self._default_ttl = default_ttl_seconds
        self._clock = clock
        self._entries: OrderedDict[str, tuple[float, Any]] = OrderedDict()
        self._lock = threading.Lock()

    def get(self, key: str, default: Any = None) -> Any:
        """The value under `key` (marking it most recently used), or `default` when absent or expired."""
        with self._lock:
            value = self._live(key)
            if value is _MISSING:
                return default
            self._entries.move_to_end(key)
            return value

    def set(self, key: str, value: Any, ttl_seconds: float | None = None) -> None:
        """Store `value` for `ttl_seconds` (default TTL when None); evicts the LRU entry when full."""
        ttl = self._default_ttl if ttl_seconds is None else ttl_seconds
        if ttl <= 0:
            raise ValueError("ttl_seconds must be positive")
        with self._lock:
            self._entries[key] = (self._clock() + ttl, value)
            self._entries.move_to_end(key)
            while len(self._entries) > self._max:
                self._entries.popitem(last=False)

    def delete(self, key: str) -> bool:
        """Remove `key`; True when a live entry was removed."""
        with self._lock:
            present = self._live(key) is not _MISSING
            self._entries.pop(key, None)
            return present

    def clear(self) -> None:
        """Remove every entry."""
        with self._lock:
            self._entries.clear()

    def __len__(self) -> int:
        """Live entries (expired ones are purged first)."""
        with self._lock:
            now = self._clock()
            for key in [k for k, (expires, _) in self._entries.items() if expires <= now]:
                del self._entries[key]
            return len(self._entries)

    def _live(self, key: str) -> Any:
        entry = self._entries.get(key)
        if entry is None:
            return _MISSING
        expires, value = entry
        if expires <= self._clock():
            del self._entries[key]
            return _MISSING
        return value
