"""A distributed span's live state in Redis: its plan, each source's progress, answers and outcome, the result.

Keys (all under `prefix`):

    span:<id>:plan               JSON  the plan (shared.distributed.plan.SpanPlanData): request, policy, sources
    span:<id>:src:<source>       hash  attempt, state (running), started_at, retries, count (live progress)
    span:<id>:m:<source>:<n>     list  attempt n's answers as DICOM JSON (a redelivered task starts attempt n+1, so
                                       a killed worker's half-answer is never mixed with the new one)
    span:<id>:outcome:<source>   JSON  the source's final outcome and the attempt it belongs to; written once (NX):
                                       when two attempts race (a redelivery while the first still runs) one wins
    span:<id>:finished           list  sources in the order their outcomes were recorded (FIRST_WINS merges in it)
    span:<id>:released           set   sources whose finish already let the next pending source start
    span:<id>:next               int   how many of the plan's queried sources have been launched
    span:<id>:cancel             str   why outstanding work must stop (caller cancel, finalised); set once
    span:<id>:replanned          flag  the plan message was sent again recently (expires after REPLAN_AFTER)
    span:<id>:result             JSON  the final result (shared.spanning.codec data)
    span:<id>:done               pub/sub channel: the span's status is published there when it is finalised

Lifetime. Under Redis's `volatile-lru` (deploy/redis/redis.conf) only keys with a TTL can be evicted, so a live
span's keys have NO TTL: memory pressure evicts finished results (kept in PostgreSQL) and cache entries, never the
state of a span that is still running. `close` gives every key of the span `ttl_seconds` when it is finalised;
`expire_leftovers` (run by the coordinators' sweep) gives it to whatever escaped that: a write that raced the close
(a worker still flushing answers), a span whose result was written but whose plan was not (and the reverse), state
abandoned past its deadline. Only the short-lived `replanned` flag expires on its own.

Everything here is plain data; the rules live in shared.distributed.spans.
"""

from __future__ import annotations

import json
import time
from typing import Any, Iterable

import redis

QUERY_ID_LENGTH = 32


def _dumps(value: Any) -> str:
    return json.dumps(value, ensure_ascii=False, separators=(",", ":"))


class SpanStore:
    """The span keys on one redis.Redis client (decode_responses=True)."""

    def __init__(self, client: redis.Redis, *, prefix: str = "axiom:", ttl_seconds: float = 3600.0) -> None:
        self.redis, self._prefix, self._ttl_ms = client, prefix, max(1000, int(ttl_seconds * 1000))

    def _key(self, query_id: str, *parts: str) -> str:
        return ":".join([f"{self._prefix}span", query_id, *parts])

    # plan and result -------------------------------------------------------------------------------------------
    def put_plan(self, query_id: str, plan: dict[str, Any]) -> bool:
        """Store the plan unless one exists; True when this call stored it."""
        return bool(self.redis.set(self._key(query_id, "plan"), _dumps(plan), nx=True))

    def plan(self, query_id: str) -> dict[str, Any] | None:
        raw = self.redis.get(self._key(query_id, "plan"))
        return None if raw is None else json.loads(raw)

    def close(self, query_id: str, result: dict[str, Any], stop_reason: str, sources: Iterable[str] = ()) -> None:
        """Finalise the span's live state: store the final result, tell outstanding work to stop (`stop_reason`,
        unless a reason is already set), give every key of the span (`sources`: the plan's) its TTL, and announce
        the end on `done_channel` (long-polling coordinators wake up). A key written after this by a late worker is
        expired by `expire_leftovers`."""
        names = list(sources)
        pipe = self.redis.pipeline(transaction=False)
        for name in names:
            pipe.hget(self._key(query_id, "src", name), "attempt")
        attempts = pipe.execute() if names else []
        keys = [self._key(query_id, part) for part in ("plan", "next", "released", "finished", "cancel")]
        for name, attempt in zip(names, attempts):
            keys += [self._key(query_id, "src", name), self._key(query_id, "outcome", name)]
            keys += [self._key(query_id, "m", name, str(n)) for n in range(1, int(attempt or 0) + 1)]
        pipe = self.redis.pipeline()
        pipe.set(self._key(query_id, "result"), _dumps(result), px=self._ttl_ms)
        pipe.set(self._key(query_id, "cancel"), stop_reason, nx=True)
        for key in keys:
            pipe.pexpire(key, self._ttl_ms)
        pipe.publish(self.done_channel(query_id), result.get("status", "done"))
        pipe.execute()

    def done_channel(self, query_id: str) -> str:
        """The pub/sub channel a span's end is announced on."""
        return self._key(query_id, "done")

    def result(self, query_id: str) -> dict[str, Any] | None:
        raw = self.redis.get(self._key(query_id, "result"))
        return None if raw is None else json.loads(raw)

    def has_result(self, query_id: str) -> bool:
        return bool(self.redis.exists(self._key(query_id, "result")))

    # cancellation ----------------------------------------------------------------------------------------------
    def request_stop(self, query_id: str, reason: str) -> None:
        """Tell every worker of this span to stop (the first reason given is kept; `close` sets one too)."""
        self.redis.set(self._key(query_id, "cancel"), reason, nx=True)

    def stop_reason(self, query_id: str) -> str | None:
        return self.redis.get(self._key(query_id, "cancel"))

    def claim_replan(self, query_id: str, seconds: float) -> bool:
        """True at most once per `seconds` for a query (coordinators re-sending a lost plan message do not flood
        the queue while no worker takes it)."""
        return bool(self.redis.set(self._key(query_id, "replanned"), "1", px=max(1, int(seconds * 1000)), nx=True))

    # launching -------------------------------------------------------------------------------------------------
    def claim_launches(self, query_id: str, count: int) -> int:
        """Reserve `count` more launches; returns the new total (the caller launches indices total-count..total-1)."""
        return int(self.redis.incrby(self._key(query_id, "next"), count))

    def launched(self, query_id: str) -> int:
        return int(self.redis.get(self._key(query_id, "next")) or 0)

    def release_once(self, query_id: str, source: str) -> bool:
        """True the first time `source`'s finish is counted (a redelivered message must not launch twice)."""
        return bool(self.redis.sadd(self._key(query_id, "released"), source))

    # one source's attempts -------------------------------------------------------------------------------------
    def start_attempt(self, query_id: str, source: str, now: float) -> int:
        """Begin a new attempt at `source` (number 1, 2, ...): progress resets, earlier answers are left behind."""
        key = self._key(query_id, "src", source)
        pipe = self.redis.pipeline()
        pipe.hincrby(key, "attempt", 1)
        pipe.hset(key, mapping={"state": "running", "started_at": repr(now), "count": 0, "retries": 0})
        return int(pipe.execute()[0])

    def add_answers(self, query_id: str, source: str, attempt: int, answers: list[dict[str, Any]]) -> None:
        """Append answers (DICOM JSON) to the attempt's list and count them in its progress."""
        if not answers:
            return
        key, progress = self._key(query_id, "m", source, str(attempt)), self._key(query_id, "src", source)
        pipe = self.redis.pipeline()
        pipe.rpush(key, *[_dumps(answer) for answer in answers])
        pipe.hincrby(progress, "count", len(answers))
        pipe.execute()

    def set_retries(self, query_id: str, source: str, retries: int) -> None:
        self.redis.hset(self._key(query_id, "src", source), "retries", retries)

    def progress(self, query_id: str, sources: Iterable[str]) -> dict[str, dict[str, str]]:
        """Each source's progress hash (empty for a source not started)."""
        names = list(sources)
        pipe = self.redis.pipeline()
        for name in names:
            pipe.hgetall(self._key(query_id, "src", name))
        return dict(zip(names, pipe.execute()))

    def answers(self, query_id: str, source: str, attempt: int) -> list[dict[str, Any]]:
        return [json.loads(raw) for raw in self.redis.lrange(self._key(query_id, "m", source, str(attempt)), 0, -1)]

    def record_outcome(self, query_id: str, source: str, outcome: dict[str, Any], attempt: int) -> bool:
        """Record `source`'s final outcome for `attempt` unless one is recorded; True when this call did."""
        key = self._key(query_id, "outcome", source)
        stored = self.redis.set(key, _dumps({**outcome, "attempt": attempt, "at": time.time()}), nx=True)
        if stored:
            self.redis.rpush(self._key(query_id, "finished"), source)
        return bool(stored)

    def outcomes(self, query_id: str, sources: Iterable[str]) -> dict[str, dict[str, Any]]:
        """The recorded outcomes of these sources (absent: not finished)."""
        names = list(sources)
        if not names:
            return {}
        raws = self.redis.mget([self._key(query_id, "outcome", name) for name in names])
        return {name: json.loads(raw) for name, raw in zip(names, raws) if raw is not None}

    def has_outcome(self, query_id: str, source: str) -> bool:
        return bool(self.redis.exists(self._key(query_id, "outcome", source)))

    def finish_order(self, query_id: str) -> list[str]:
        return list(self.redis.lrange(self._key(query_id, "finished"), 0, -1))

    # lifetime --------------------------------------------------------------------------------------------------
    def expire_leftovers(self, now: float, *, grace_seconds: float = 300.0, batch: int = 500) -> int:
        """Give the TTL to span keys that have none although their span is no longer live (module doc, Lifetime):
        the span has a result (a write that raced `close`), has no plan (never planned, or its plan already
        expired), or its plan's deadline passed more than `grace_seconds` ago (the coordinators finalise open spans
        at their deadline, so live state that old belongs to nobody). One SCAN over the span keys, in batches;
        returns how many keys got a TTL."""
        start = len(self._prefix) + len("span:")
        live: dict[str, bool] = {}
        expired = 0
        keys = self.redis.scan_iter(match=f"{self._prefix}span:*", count=1000)
        while chunk := [key for _, key in zip(range(batch), keys)]:
            pipe = self.redis.pipeline(transaction=False)
            for key in chunk:
                pipe.pttl(key)
            lasting = [key for key, ttl in zip(chunk, pipe.execute()) if ttl == -1]
            unknown = sorted({key[start:].split(":", 1)[0] for key in lasting} - live.keys())
            live.update(zip(unknown, self._live(unknown, now, grace_seconds)))
            stale = [key for key in lasting if not live[key[start:].split(":", 1)[0]]]
            if stale:
                pipe = self.redis.pipeline(transaction=False)
                for key in stale:
                    pipe.pexpire(key, self._ttl_ms)
                expired += sum(1 for done in pipe.execute() if done)
        return expired

    def _live(self, query_ids: list[str], now: float, grace_seconds: float) -> list[bool]:
        """Whether each span is still live: planned, no result, deadline not long past."""
        if not query_ids:
            return []
        pipe = self.redis.pipeline(transaction=False)
        for query_id in query_ids:
            pipe.exists(self._key(query_id, "result"))
            pipe.get(self._key(query_id, "plan"))
        replies = pipe.execute()
        return [not has_result and raw is not None and float(json.loads(raw).get("deadline", 0)) + grace_seconds > now
                for has_result, raw in zip(replies[0::2], replies[1::2])]
