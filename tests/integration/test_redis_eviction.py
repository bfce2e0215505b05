"""Redis as deployed (deploy/redis/redis.conf, `volatile-lru`) never evicts a live span's state.

Each test starts a throwaway redis-server on a unix socket (no TCP port) with the deploy config; skipped without the
binary (failed under AXIOM_REQUIRE_SERVICES=1). The rule under test (shared/distributed/store.py, "Lifetime"): a
running span's keys have no TTL, so `volatile-lru` cannot evict them; `close` gives every key of the span a TTL;
`expire_leftovers` catches what escaped it.
"""

from __future__ import annotations

import shutil
import subprocess
import time
from pathlib import Path
from typing import Iterator

import pytest
import redis

from shared.adapters.redis_cache import RedisCache
from shared.distributed.store import SpanStore
from tests.peers import require

pytestmark = pytest.mark.integration
CONF = Path(__file__).resolve().parents[2] / "deploy" / "redis" / "redis.conf"
TTL = 600.0


@pytest.fixture
def client(tmp_path: Path) -> Iterator[redis.Redis]:
    binary = shutil.which("redis-server")
    require(binary is not None, "redis-server is not installed (apt-get install redis-server)")
    sock = tmp_path / "redis.sock"
    proc = subprocess.Popen([binary, str(CONF), "--port", "0", "--unixsocket", str(sock), "--dir", str(tmp_path)],
                            stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
    try:
        deadline = time.monotonic() + 10
        while not sock.exists():
            assert proc.poll() is None, f"redis-server refused deploy/redis/redis.conf: {proc.stderr.read()!r}"
            assert time.monotonic() < deadline, "redis-server did not start"
            time.sleep(0.02)
        connection = redis.Redis(unix_socket_path=str(sock), decode_responses=True)
        yield connection
        connection.close()
    finally:
        proc.terminate()
        proc.wait(timeout=10)


def answer(uid: str, size: int = 1000) -> dict:
    return {"0020000D": {"vr": "UI", "Value": [uid]}, "00081030": {"vr": "LO", "Value": ["x" * size]}}


def running_span(store: SpanStore, query_id: str, *, answers: int, deadline: float, sources=("A", "B")) -> None:
    """A span as workers leave it mid-flight: planned, launched, every source answering, none finished."""
    store.put_plan(query_id, {"sources": list(sources), "deadline": deadline})
    store.claim_launches(query_id, len(sources))
    for source in sources:
        attempt = store.start_attempt(query_id, source, time.time())
        store.add_answers(query_id, source, attempt, [answer(f"1.2.{source}.{n}") for n in range(answers)])
        store.set_retries(query_id, source, 0)


def finished_span(store: SpanStore, query_id: str, *, answers: int) -> None:
    running_span(store, query_id, answers=answers, deadline=time.time() + 60)
    for source in ("A", "B"):
        store.record_outcome(query_id, source, {"status": "ok"}, 1)
        store.release_once(query_id, source)
    store.close(query_id, {"status": "completed"}, "span completed", ["A", "B"])


def span_keys(client: redis.Redis, query_id: str) -> dict[str, int]:
    """Each key of the span with its PTTL (-1: none)."""
    return {key: client.pttl(key) for key in client.scan_iter(f"axiom:span:{query_id}:*")}


def test_the_deploy_config_is_what_redis_runs(client):
    assert client.config_get("maxmemory-policy") == {"maxmemory-policy": "volatile-lru"}
    assert client.config_get("save") == {"save": ""}


def test_a_running_span_has_no_ttl_and_close_gives_every_key_one(client):
    store, query_id = SpanStore(client, ttl_seconds=TTL), "q" * 32
    running_span(store, query_id, answers=3, deadline=time.time() + 60)
    store.record_outcome(query_id, "A", {"status": "ok"}, 1)
    store.release_once(query_id, "A")
    store.request_stop(query_id, "cancelled by the caller")
    assert store.claim_replan(query_id, 5)
    live = span_keys(client, query_id)
    replanned = f"axiom:span:{query_id}:replanned"
    assert 0 < live.pop(replanned) <= 5000  # a throttle flag, not state: it expires on its own
    assert len(live) == 10 and set(live.values()) == {-1}, live  # plan next src×2 m×2 outcome finished released cancel

    store.close(query_id, {"status": "partial"}, "span partial", ["A", "B"])
    closed = span_keys(client, query_id)
    closed.pop(replanned, None)
    assert set(closed) == set(live) | {f"axiom:span:{query_id}:result"}
    assert all(0 < ttl <= TTL * 1000 for ttl in closed.values()), closed
    assert store.stop_reason(query_id) == "cancelled by the caller"  # the first reason is kept
    assert store.result(query_id) == {"status": "partial"}


def test_close_tells_outstanding_work_to_stop(client):
    store, query_id = SpanStore(client, ttl_seconds=TTL), "s" * 32
    running_span(store, query_id, answers=1, deadline=time.time() + 60)
    store.close(query_id, {"status": "completed"}, "span completed", ["A", "B"])
    assert store.stop_reason(query_id) == "span completed"


def test_memory_pressure_evicts_finished_spans_and_cache_never_a_running_span(client):
    """The running span is written first and not touched again while finished spans and cache entries fill Redis
    far past maxmemory: it is the least recently used data, so any TTL on it would make it the first to go."""
    store, cache = SpanStore(client, ttl_seconds=TTL), RedisCache(client, prefix="axiom:cache:")
    live = "l" * 32
    running_span(store, live, answers=200, deadline=time.time() + 60)
    before = span_keys(client, live)
    client.config_set("maxmemory", int(client.info("memory")["used_memory"]) + 3 * 1024 * 1024)

    for n in range(400):  # ~14 MB written against a 3 MB allowance
        finished_span(store, f"{n:032d}", answers=12)
        cache.set(f"result:{n}", {"matches": [answer(str(n))] * 8}, 3600)
    assert int(client.info("stats")["evicted_keys"]) > 500

    assert span_keys(client, live) == before
    for source in ("A", "B"):
        answers = store.answers(live, source, 1)
        assert len(answers) == 200 and answers[199] == answer(f"1.2.{source}.199")
    store.add_answers(live, "A", 1, [answer("1.2.A.200")])  # the span goes on: its writes are not refused
    store.record_outcome(live, "A", {"status": "ok"}, 1)
    assert len(store.answers(live, "A", 1)) == 201 and store.has_outcome(live, "A")


def test_the_sweep_expires_what_escaped_close_and_leaves_running_spans_alone(client):
    store, now = SpanStore(client, ttl_seconds=TTL), time.time()
    finished, late_attempt = "f" * 32, "g" * 32
    finished_span(store, finished, answers=2)
    store.add_answers(finished, "A", 2, [answer("1.2.late")])  # a redelivered attempt's batch, flushed after close
    store.start_attempt(late_attempt, "A", now)  # a redelivered task that started after its span's result expired
    abandoned = "a" * 32
    running_span(store, abandoned, answers=1, deadline=now - 301)  # nobody finalised it (coordinators all down)
    recent = "r" * 32
    running_span(store, recent, answers=1, deadline=now - 5)  # overdue by seconds: the deadline sweep's job
    live = "l" * 32
    running_span(store, live, answers=1, deadline=now + 60)
    client.hset("axiom:metrics:spans", "counter", 1)  # not span state: counters stay

    leftovers = {key for query_id in (late_attempt, abandoned) for key in span_keys(client, query_id)}
    assert store.expire_leftovers(now, batch=3) == len(leftovers) + 1  # + the finished span's late answer list
    assert all(ttl > 0 for query_id in (finished, late_attempt, abandoned)
               for ttl in span_keys(client, query_id).values())
    assert set(span_keys(client, live).values()) == {-1} and set(span_keys(client, recent).values()) == {-1}
    assert client.pttl("axiom:metrics:spans") == -1
    assert store.expire_leftovers(now) == 0
