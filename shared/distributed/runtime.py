"""What the distributed span functions work with: Redis (live state, cache, health), PostgreSQL and a publisher.

Built once per process by `build_runtime(settings, publish)`; tests build one with their own settings.
"""

from __future__ import annotations

import time
from dataclasses import dataclass, field
from datetime import timedelta
from typing import Any, Callable, Sequence

import redis
from sqlalchemy.orm import sessionmaker

from shared.adapters.cache import Cache, MemoryCache
from shared.adapters.redis_cache import RedisCache
from shared.config import Settings
from shared.db.session import make_engine, make_sessionmaker
from shared.distributed.store import SpanStore
from shared.spanning.health import BreakerPolicy

SPEC_MEMORY_SECONDS = 5.0
Publish = Callable[[str, Sequence[Any], "float | None"], None]  # (task name, args, countdown seconds)


@dataclass
class SpanRuntime:
    """The dependencies of shared.distributed.spans (one per process, shared by its threads)."""

    store: SpanStore
    cache: Cache  # query-result cache and source health (shared.span_client keys), on Redis
    session_factory: sessionmaker
    publish: Publish
    retention: timedelta = timedelta(days=7)
    breaker: BreakerPolicy = field(default_factory=BreakerPolicy)
    # This process's short-lived memory of configured sources (a source task needs its connection, loaded from the
    # database): a configuration change reaches running workers within SPEC_MEMORY_SECONDS.
    specs: MemoryCache = field(default_factory=lambda: MemoryCache(max_entries=4096,
                                                                   default_ttl_seconds=SPEC_MEMORY_SECONDS))
    clock: Callable[[], float] = time.time  # wall clock: deadlines are compared across hosts

    def close(self) -> None:
        self.store.redis.close()
        engine = self.session_factory.kw.get("bind")
        if engine is not None:
            engine.dispose()


def redis_client(url: str) -> redis.Redis:
    """A Redis client for the span state (str responses, short timeouts, retried once on a dropped connection)."""
    return redis.Redis.from_url(url, decode_responses=True, socket_timeout=5.0, socket_connect_timeout=3.0,
                                health_check_interval=30, retry_on_timeout=True)


def build_runtime(settings: Settings, publish: Publish) -> SpanRuntime:
    """The runtime of the distributed mode from the environment (DATABASE_URL, REDIS_URL); ValueError naming what
    is missing."""
    settings.distributed.require()
    if settings.db.embedded:
        raise ValueError("the distributed mode needs DATABASE_URL (PostgreSQL), e.g. "
                         "postgresql://axiom:secret@postgres:5432/axiom")
    dist = settings.distributed
    client = redis_client(dist.redis_url)
    cache = RedisCache(redis.Redis.from_url(dist.redis_url, socket_timeout=5.0, socket_connect_timeout=3.0),
                       prefix=f"{dist.redis_prefix}cache:")
    engine = make_engine(settings.db.url, pool_size=10, max_overflow=20)
    return SpanRuntime(store=SpanStore(client, prefix=dist.redis_prefix, ttl_seconds=dist.live_ttl_seconds),
                       cache=cache, session_factory=make_sessionmaker(engine), publish=publish,
                       retention=timedelta(days=dist.result_retention_days))
