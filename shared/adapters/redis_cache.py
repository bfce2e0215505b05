"""The Cache port on Redis: what the distributed mode shares between processes (span results, source health).

Values are stored as JSON under `prefix` + key with a millisecond TTL, so they must be plain data (the span client
stores results through shared.spanning.codec). Redis errors propagate: the caller decides whether a cache outage
may fail its request (the span client treats the cache as an optimisation and carries on without it).
"""

from __future__ import annotations

import json
from typing import Any

import redis


class RedisCache:
    """Cache on a redis.Redis client (decode_responses not required). `prefix` namespaces every key."""

    def __init__(self, client: redis.Redis, *, prefix: str = "axiom:cache:",
                 default_ttl_seconds: float = 300.0) -> None:
        if default_ttl_seconds <= 0:
            raise ValueError("default_ttl_seconds must be positive")
        self._redis, self._prefix, self._default_ttl = client, prefix, default_ttl_seconds

    @classmethod
    def from_url(cls, url: str, **kwargs: Any) -> "RedisCache":
        """A cache on the Redis at `url` (e.g. REDIS_URL=redis://redis:6379/0)."""
        return cls(redis.Redis.from_url(url, socket_timeout=2.0, socket_connect_timeout=2.0), **kwargs)

    def get(self, key: str, default: Any = None) -> Any:
        raw = self._redis.get(self._prefix + key)
        return default if raw is None else json.loads(raw)

    def set(self, key: str, value: Any, ttl_seconds: float | None = None) -> None:
        ttl = self._default_ttl if ttl_seconds is None else ttl_seconds
        payload = json.dumps(value, ensure_ascii=False, separators=(",", ":"))
        self._redis.set(self._prefix + key, payload, px=max(1, int(ttl * 1000)))

    def delete(self, key: str) -> bool:
        return bool(self._redis.delete(self._prefix + key))

    def clear(self) -> None:
        """Remove every key under this cache's prefix (SCAN, so Redis is never blocked by KEYS)."""
        batch = []
        for key in self._redis.scan_iter(match=self._escaped_prefix() + "*", count=500):
            batch.append(key)
            if len(batch) >= 500:
                self._redis.delete(*batch)
                batch.clear()
        if batch:
            self._redis.delete(*batch)

    def _escaped_prefix(self) -> str:
        return "".join("\\" + c if c in "*?[]\\" else c for c in self._prefix)
