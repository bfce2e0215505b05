"""The Cache port on the machine's real Redis: TTLs, namespacing, and span clients sharing results and health."""

from __future__ import annotations

import time
import uuid

import pytest
import redis
from pydicom import Dataset

from shared.adapters.query_ports import QueryPorts
from shared.adapters.redis_cache import RedisCache
from shared.dicom.levels import QueryLevel
from shared.span_client import InProcessSpanClient
from shared.spanning.health import BreakerPolicy
from shared.spanning.model import SourceSpec, SourceStatus, SpanPolicy, SpanRequest
from tests.fakes.ports import Script, ScriptedPort, study
from tests.peers import free_port, require

pytestmark = pytest.mark.integration
REDIS_URL = "redis://127.0.0.1:6379/0"


@pytest.fixture()
def cache():
    client = redis.Redis.from_url(REDIS_URL, socket_connect_timeout=1)
    try:
        client.ping()
    except redis.RedisError as exc:
        require(False, f"Redis is not reachable at {REDIS_URL}: {exc}")
    store = RedisCache(client, prefix=f"axiom-test:{uuid.uuid4().hex}:")
    yield store
    store.clear()


def request() -> SpanRequest:
    identifier = Dataset()
    identifier.StudyInstanceUID = ""
    return SpanRequest(level=QueryLevel.STUDY, identifier=identifier)


def test_values_round_trip_expire_and_stay_in_their_namespace(cache):
    other = RedisCache(cache._redis, prefix=f"axiom-test:{uuid.uuid4().hex}:")  # a sibling namespace
    cache.set("a", {"x": [1, "ü"]}, ttl_seconds=0.3)
    other.set("a", "theirs")
    assert cache.get("a") == {"x": [1, "ü"]} and cache.get("missing", "d") == "d"
    time.sleep(0.45)
    assert cache.get("a") is None
    cache.set("b", 1)
    assert cache.delete("b") and not cache.delete("b")
    cache.set("c", 1)
    cache.clear()
    assert cache.get("c") is None and other.get("a") == "theirs"
    other.clear()


def test_two_span_clients_share_results_and_source_health(cache):
    port = ScriptedPort({"UP": Script(matches=[study("1.2.3")]), "DOWN": Script(query_failure="0xC000")})
    def make() -> InProcessSpanClient:
        return InProcessSpanClient(ports_factory=lambda: QueryPorts({"fake": lambda: port}), cache=cache,
                                   breaker=BreakerPolicy(failure_threshold=1, cooldown_seconds=60))

    first, second = make(), make()
    up = [SourceSpec("UP", "fake")]
    first.run(request(), up, SpanPolicy(), cache_ttl_seconds=60)
    hit = second.run(request(), up, SpanPolicy(), cache_ttl_seconds=60)
    assert len(port.calls_for("UP")) == 1 and hit.duration_ms == 0 and hit.matches[0].key == ("1.2.3",)
    down = [SourceSpec("DOWN", "fake")]
    assert first.run(request(), down, SpanPolicy()).outcomes[0].status is SourceStatus.FAILED
    assert second.run(request(), down, SpanPolicy()).outcomes[0].status is SourceStatus.SKIPPED
    first.close(), second.close()


def test_spans_go_on_when_redis_is_down():
    dead = RedisCache.from_url(f"redis://127.0.0.1:{free_port()}/0")
    port = ScriptedPort({"UP": Script(matches=[study("1.2.3")])})
    client = InProcessSpanClient(ports_factory=lambda: QueryPorts({"fake": lambda: port}), cache=dead)
    result = client.run(request(), [SourceSpec("UP", "fake")], SpanPolicy(), cache_ttl_seconds=60)
    assert result.outcomes[0].status is SourceStatus.OK and len(result.matches) == 1
    calls = []
    dead.get = lambda *args, **kwargs: calls.append(args)  # within the retry pause the cache is not asked again
    client.run(request(), [SourceSpec("UP", "fake")], SpanPolicy(), cache_ttl_seconds=60)
    assert calls == []
    client.close()

