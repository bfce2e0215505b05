"""DistributedSpanClient: the SpanClient interface (shared.span_client) over the distributed mode.

A span is accepted through the coordinator's own functions (shared.distributed.intake: a query log row, a PLAN_SPAN
message), run by the Celery workers, and waited for here: woken by the finaliser's announcement on the span's done
channel (shared.distributed.store), with a look at `is_finished` every RECHECK_SECONDS in case it was missed (every
`poll_seconds` when the channel cannot be subscribed). Callers (the spanning SCP, the CLI) do not change:
`run`/`stream`/`close` take the same arguments as InProcessSpanClient and give the same events.

What differs from the in-process client, and why:

* `sources` and `policy` are the config's: the distributed plan reloads both from the database by `config_id`
  (required). Here `policy` only sets the streaming (FIRST_WINS) and the hard cap on the wait:
  `query_timeout_seconds + grace_seconds`. Past it (the workers' deadline task and every coordinator's sweep
  missing) the client finalises the span itself (shared.distributed.spans.finalize_span, as the sweep would).
* `cache_ttl_seconds` is ignored: the distributed plan has its own result cache (the config's cache_ttl_seconds,
  shared through Redis; shared.distributed.spans).
* The query id is the coordinator's (intake chooses it; it is what the query log, the coordinator API and the
  SpanResult carry), not `request.query_id`; both are logged together (`distributed_span_accepted`).
* intake derives the information model from the level (shared.dicom.levels.default_model) and validates the keys
  again (shared.dicom.query_keys.identifier_from_mapping: no sequence keys; default return keys are added when the
  identifier has none); the caller's AE title goes into the query log through intake.Requester.
* FIRST_WINS streams from the live view (intake.describe_span, polled every `poll_seconds`): matches are yielded
  the first time the caller sees their dedup key. While two sources that both hold a key are still running, the
  live merge's winner for it may differ from the final one (the distributed merge orders sources by when they
  finish), so a streamed dataset can be another holder's version than the SpanResult's; the key is never sent
  twice. Each poll re-reads the whole merge so far (fine for C-FIND sized answers).
* Refusals (unknown or disabled config, invalid keys, broker down, database down) are a FAILED SpanResult naming
  the problem, never an exception, so a DIMSE caller can answer with a failure status.
"""

from __future__ import annotations

import logging
import time
from typing import Any, Callable, Iterator, Sequence


from shared.config import Settings
from shared.db.repo.query_logs import get_query_result
from shared.dicom.dicom_json import dataset_from_json, dataset_to_json
from shared.distributed.intake import (
    LOCATE_QUERY_TYPES,
    Requester,
    SpanRequestError,
    accept_span,
    cancel_span,
    describe_span,
    is_finished,
)
from shared.distributed.runtime import SpanRuntime, build_runtime
from shared.distributed.spans import finalize_span
from shared.logging import log_event
from shared.messaging.celery_app import create_celery_app, publish
from shared.span_client import InProcessSpanClient
from shared.spanning.codec import result_from_dict
from shared.spanning.merge import RETRIEVE_AE_TITLE, dedup_key, ranking_form
from shared.spanning.model import DedupStrategy, Match, SourceSpec, SpanPolicy, SpanRequest, SpanResult, SpanStatus
from shared.spanning.ports import CancelToken

logger = logging.getLogger(__name__)
RECHECK_SECONDS = 1.0  # a missed done announcement is noticed within this
LIVE_LIMIT = 10**9  # the live view is read whole: FIRST_WINS order changes as sources finish


class DistributedSpanClient:
    """Runs spans on the distributed workers (module doc). Thread-safe: one client serves many concurrent spans."""

    def __init__(self, runtime: SpanRuntime, *, poll_seconds: float = 0.2, grace_seconds: float = 10.0,
                 closers: Sequence[Callable[[], None]] = ()) -> None:
        """`closers` run on close() (the factory passes the runtime's and the Celery app's)."""
        self.rt, self._poll, self._grace, self._closers = runtime, min(poll_seconds, 0.2), grace_seconds, closers

    def run(self, request: SpanRequest, sources: Sequence[SourceSpec], policy: SpanPolicy, *,
            cancel: CancelToken | None = None, config_id: int | None = None, requester: dict | None = None,
            cache_ttl_seconds: float = 0) -> SpanResult:
        """Run one span to its end and return its SpanResult (the last event of `stream`). `cache_ttl_seconds` is
        ignored: the distributed plan caches by the config's own TTL."""
        result = None
        for event in self.stream(request, sources, policy, cancel=cancel, config_id=config_id, requester=requester):
            result = event
        assert isinstance(result, SpanResult)
        return result

    def stream(self, request: SpanRequest, sources: Sequence[SourceSpec], policy: SpanPolicy, *,
               cancel: CancelToken | None = None, config_id: int | None = None,
               requester: dict | None = None) -> Iterator[Match | object]:
        """Yield Matches (FIRST_WINS: as the live view shows new keys; otherwise at the end), then every source's
        SourceOutcome and the SpanResult, as InProcessSpanClient.stream does. ValueError without `config_id` (the
        workers load the sources and policy by it). Closing the iterator early cancels the span."""
        if config_id is None:
            raise ValueError("the distributed mode needs config_id: the workers load the sources and policy by it")
        return self._events(request, sources, policy, cancel or CancelToken(), config_id, requester or {})

    def close(self) -> None:
        """Release what the client was given to close (Redis, database pool, broker connections)."""
        for closer in self._closers:
            closer()

    # the span ----------------------------------------------------------------------------------------------------
    def _events(self, request: SpanRequest, sources: Sequence[SourceSpec], policy: SpanPolicy,
                cancel: CancelToken, config_id: int, requester: dict) -> Iterator[Match | object]:
        started = time.monotonic()
        query_id = self._accept(request, config_id, requester)
        if isinstance(query_id, SpanResult):
            yield query_id
            return
        seen: set[tuple] = set()
        live = _LiveMatches(self.rt, query_id, request, sources) \
            if policy.dedup_strategy is DedupStrategy.FIRST_WINS else None
        give_up = started + policy.query_timeout_seconds + self._grace
        settled = False
        try:
            for match in self._wait(query_id, cancel, give_up, live):
                if _identity(match) not in seen:
                    seen.add(_identity(match))
                    yield match
            result = self._stored_result(query_id)
            settled = True
        finally:
            if not settled:  # the caller closed the stream early (or waiting broke): stop the workers
                self._cancel(query_id)
        yield from result.outcomes
        yield from (match for match in result.matches if _identity(match) not in seen)
        yield result

    def _accept(self, request: SpanRequest, config_id: int, requester: dict) -> str | SpanResult:
        """intake.accept_span for this request; the query id, or a FAILED SpanResult naming why it was refused."""
        started = time.monotonic()
        try:
            accepted = accept_span(
                self.rt, config_id=config_id, config_name=None, query_type=request.query_type,
                query_level=request.level.value, keys=dataset_to_json(request.identifier),
                requester=Requester(user=requester.get("user"), address=requester.get("address"),
                                    ae_title=requester.get("ae_title")), query_types=LOCATE_QUERY_TYPES)
        except Exception as exc:  # SpanRequestError (4xx/503) and anything else: a failure status, not a crash
            error = str(exc) if isinstance(exc, SpanRequestError) else \
                f"could not accept the query: {type(exc).__name__}: {exc}"
            log_event(logger, "distributed_span_refused", logging.WARNING, request_query_id=request.query_id,
                      spanner_config_id=config_id, error=error)
            return SpanResult(query_id=request.query_id, status=SpanStatus.FAILED, matches=(), outcomes=(),
                              raw_count=0, duration_ms=(time.monotonic() - started) * 1000.0, error=error)
        query_id = accepted["query_id"]
        log_event(logger, "distributed_span_accepted", query_id=query_id, request_query_id=request.query_id,
                  spanner_config_id=config_id, requester_ae_title=requester.get("ae_title"))
        return query_id

    def _wait(self, query_id: str, cancel: CancelToken, give_up: float,
              live: _LiveMatches | None) -> Iterator[Match]:
        """Until the span is finished (its result stored), yielding live matches (FIRST_WINS); cancels the span on
        `cancel`, finalises it at `give_up`. Transient Redis/database errors are logged and waited out."""
        with _DoneSignal(self.rt, query_id) as done:
            recheck_every = RECHECK_SECONDS if done.subscribed else self._poll
            next_check = 0.0
            while True:
                if cancel.cancelled:
                    self._cancel(query_id)
                    return
                now = time.monotonic()
                if now >= give_up:
                    self._finalize_overdue(query_id)
                    return
                try:
                    if now >= next_check:
                        next_check = now + recheck_every
                        if is_finished(self.rt, query_id):
                            return
                    if live is not None:
                        yield from live.poll()
                except Exception as exc:
                    log_event(logger, "distributed_span_wait_failed", logging.WARNING, query_id=query_id,
                              error=f"{type(exc).__name__}: {exc}")
                if done.wait(min(self._poll, max(0.0, give_up - now)), cancel):
                    return

    def _cancel(self, query_id: str) -> None:
        """intake.cancel_span; a span that already finished (409) keeps its result."""
        try:
            cancel_span(self.rt, query_id)
        except SpanRequestError:
            pass
        except Exception as exc:
            log_event(logger, "distributed_span_cancel_failed", logging.WARNING, query_id=query_id, error=str(exc))

    def _finalize_overdue(self, query_id: str) -> None:
        """Past the hard cap nobody finalised the span (lost deadline task, no coordinator sweep): do it here."""
        log_event(logger, "distributed_span_overdue", logging.WARNING, query_id=query_id)
        try:
            finalize_span(self.rt, query_id)
        except Exception as exc:
            log_event(logger, "distributed_span_finalize_failed", logging.ERROR, query_id=query_id, error=str(exc))

    def _stored_result(self, query_id: str) -> SpanResult:
        """The final result as stored (Redis, else PostgreSQL), through shared.spanning.codec."""
        try:
            data = self.rt.store.result(query_id)
            if data is None:
                with self.rt.session_factory() as session:
                    data = get_query_result(session, query_id=query_id)
            error = None if data is not None else "the span ended without a stored result"
        except Exception as exc:
            data, error = None, f"could not read the span's result: {type(exc).__name__}: {exc}"
        if data is not None:
            return result_from_dict(data)
        log_event(logger, "distributed_span_result_missing", logging.ERROR, query_id=query_id, error=error)
        return SpanResult(query_id=query_id, status=SpanStatus.FAILED, matches=(), outcomes=(), raw_count=0,
                          duration_ms=0.0, error=error)


class _DoneSignal:
    """A subscription to the span's done channel (shared.distributed.store); without one (Redis refused it),
    `wait` only sleeps and the caller polls."""

    def __init__(self, rt: SpanRuntime, query_id: str) -> None:
        self._pubsub: Any = None
        try:
            self._pubsub = rt.store.redis.pubsub(ignore_subscribe_messages=True)
            self._pubsub.subscribe(rt.store.done_channel(query_id))
        except Exception as exc:
            log_event(logger, "done_channel_unavailable", logging.WARNING, query_id=query_id, error=str(exc))
            self._close()

    @property
    def subscribed(self) -> bool:
        return self._pubsub is not None

    def wait(self, seconds: float, cancel: CancelToken) -> bool:
        """Up to `seconds`; True when the span's end was announced."""
        if self._pubsub is not None:
            try:
                return self._pubsub.get_message(timeout=seconds) is not None
            except Exception:
                self._close()  # from now on the caller's poll is all there is
        cancel.wait(seconds)
        return False

    def _close(self) -> None:
        pubsub, self._pubsub = self._pubsub, None
        if pubsub is not None:
            try:
                pubsub.close()
            except Exception:
                pass

    def __enter__(self) -> _DoneSignal:
        return self

    def __exit__(self, *exc: object) -> None:
        self._close()


class _LiveMatches:
    """FIRST_WINS: the live view's merge so far (intake.describe_span) as Matches, with the holders' source
    names recovered from RetrieveAETitle (the merger writes each holder's retrieve AE title there)."""

    def __init__(self, rt: SpanRuntime, query_id: str, request: SpanRequest, sources: Sequence[SourceSpec]) -> None:
        self._rt, self._query_id, self._level = rt, query_id, request.level
        self._names: dict[str, str] = {}
        for spec in sources:
            self._names.setdefault(spec.ae_title_for_retrieve, spec.name)

    def poll(self) -> list[Match]:
        view = describe_span(self._rt, self._query_id, offset=0, limit=LIVE_LIMIT)
        return [self._match(dataset_from_json(data)) for data in view["results"]]

    def _match(self, dataset) -> Match:
        element = dataset.get(RETRIEVE_AE_TITLE)
        titles = [] if element is None or not element.value else \
            ([element.value] if isinstance(element.value, str) else list(element.value))
        return Match(dataset=dataset, key=dedup_key(dataset, self._level) or (),
                     sources=tuple(self._names.get(str(title), str(title)) for title in titles))


def _identity(match: Match) -> tuple:
    """What makes two Matches the same answer: the dedup key, or for an unkeyed match its ranking form
    (shared.spanning.merge)."""
    return match.key if match.key else ("\0unkeyed", ranking_form(match.dataset))


def span_client_for(settings: Settings, session_factory: Callable | None = None,
                    ) -> InProcessSpanClient | DistributedSpanClient:
    """The SpanClient the environment asks for: distributed when RABBITMQ_URL and REDIS_URL are both set
    (DATABASE_URL must then be PostgreSQL; the runtime opens its own pool on it), in-process otherwise (spans
    logged through `session_factory`). ValueError naming a missing setting of the distributed mode."""
    dist = settings.distributed
    if not (dist.rabbitmq_url and dist.redis_url):
        return InProcessSpanClient(session_factory=session_factory)
    celery_app = create_celery_app(settings)
    runtime = build_runtime(settings, lambda name, args, countdown: publish(celery_app, name, args,
                                                                           countdown=countdown))
    return DistributedSpanClient(runtime, closers=(runtime.close, celery_app.close))
