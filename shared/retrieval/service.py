"""The retrieval service: the ONE implementation behind the spanning SCP's C-MOVE/C-GET and the API's tracked move
jobs. Pure orchestration over ports (stdlib, pydicom and shared.* only).

A retrieval first locates its entities with a spanning C-FIND (PS3.4 C.4.2.2, shared.retrieval.locate), then
retrieves each batch of entities from its best holder:

* DIRECT (shared.retrieval.direct) — the holder C-MOVEs to the caller's Move Destination; pending counts relayed.
* PROXY (shared.retrieval.proxy) — the spanner fetches (C-GET, or C-MOVE to its own storage AE through the Inbox)
  into a bounded spool and forwards each instance as it arrives on one C-STORE association.
* HYBRID — DIRECT first; what it could not deliver (0xA801, failures) through PROXY.

A holder that fails hands its entities to their next holder (Match.sources order). The final status follows
PS3.4 C.4.2.1.5 / C.4.3.1.4 (shared.retrieval.tally). Events: retrieve_started, retrieve_located,
retrieve_holder_failed, retrieve_completed, with query_id, study_uid, source and destination; retrieve_located
also names `locate_query_id`, the locate's own span (its query log row, written with the request's Origin: who
asked and the operation served — PS3.4 C.4.2.2 makes the locate part of the retrieval).
"""

from __future__ import annotations

import functools
import logging
import re
import time
import uuid
from collections import Counter
from pathlib import Path
from typing import Callable, Generator, Sequence

from pydicom import Dataset

from shared.dicom.levels import QueryLevel
from shared.logging import log_event
from shared.retrieval.direct import run_direct, run_hybrid_direct
from shared.retrieval.inbox import Inbox
from shared.retrieval.job import Holders, Job, logger
from shared.retrieval.locate import (
    Batch,
    Entity,
    LocateCache,
    expected_total,
    instances_request,
    locate_request,
    located_entities,
)
from shared.retrieval.model import (
    CANCEL,
    OUT_OF_RESOURCES_MATCHES,
    UNABLE_TO_PROCESS,
    CmoveStrategy,
    Destination,
    Origin,
    RetrieveOutcome,
    RetrieveProgress,
    RetrieveRequest,
)
from shared.retrieval.ports import RetrievePort, StorePort
from shared.retrieval.proxy import fetch_instances, forward_instances
from shared.retrieval.spool import Spool, SpoolBudget
from shared.retrieval.tally import clip_comment
from shared.spanning.model import SourceSpec, SpanRequest, SpanResult, SpanStatus
from shared.spanning.ports import CancelToken

Locate = Callable[[SpanRequest], SpanResult]  # a spanning C-FIND already bound to its caller (requester, config)
# The service's locate: a spanning C-FIND over the config's sources, logged with the retrieval's origin (who asked;
# None: an internal retrieval). The query type travels in the SpanRequest (locate_request).
RetrievalLocate = Callable[[SpanRequest, Origin | None], SpanResult]


class RetrievalService:
    """Serves C-MOVE and C-GET over one spanner config's sources. Thread-safe: one service serves many concurrent
    retrievals; they share the locate cache and the spool budget (`spool_max_bytes` over all jobs)."""

    def __init__(
        self,
        *,
        locate: RetrievalLocate,
        sources: Sequence[SourceSpec],
        retrieve_port: RetrievePort,
        store_port: StorePort,
        spool_dir: Path,
        spool_max_bytes: int,
        clock: Callable[[], float] = time.monotonic,
        locate_cache_ttl_seconds: float = 0.0,
        self_ae_title: str | None = None,
        inbox: Inbox | None = None,
    ) -> None:
        """`locate` runs a spanning C-FIND over the config's sources (bound by the caller to a span client and
        config), written to the query log with the request's Origin as requester; `self_ae_title` and `inbox` are
        the spanner's own storage AE, the C-MOVE destination for sources without C-GET (without them such sources
        cannot be proxied); `clock` times the locate cache."""
        self._locate = locate
        self._holders = Holders(retrieve_port, {source.name: source for source in sources}, self_ae_title, inbox)
        self._store_port = store_port
        self._spool_dir = Path(spool_dir)
        self.spool_budget = SpoolBudget(spool_max_bytes)
        self._cache = LocateCache(locate_cache_ttl_seconds, clock)

    def move(self, request: RetrieveRequest, strategy: CmoveStrategy, destination: Destination,
             cancel: CancelToken | None = None) -> Generator[RetrieveProgress, None, RetrieveOutcome]:
        """Serve a C-MOVE (PS3.4 C.4.2.2) to `destination` with `strategy`. Yields pending progress (C.4.2.1.4): the
        first right after locate, with the expected total in `remaining` (None when unknown); returns the final
        outcome (C.4.2.1.5): 0x0000, 0xB000 with the Failed SOP Instance UID List, 0xA702 when every
        sub-operation failed, 0xFE00 when `cancel` was cancelled, 0xA701 / 0xC000 when locate failed. Zero matches
        is Success with zero counts. Never 0xA801: the caller checks the destination before."""
        job = self._open(request, "C-MOVE", cancel, destination.ae_title, strategy=strategy.value)
        try:
            entities = self._find_entities(job)
            if entities:
                yield job.tally.progress(job.expected)
                yield from self._run(job, strategy, entities, destination)
            return self._close(job)
        except Exception as exc:
            return self._crashed(job, exc)
        finally:
            self._release(job)

    def get(self, request: RetrieveRequest,
            cancel: CancelToken | None = None) -> Generator[int | Dataset, None, RetrieveOutcome]:
        """Serve a C-GET (PS3.4 C.4.3.2): first yields the number of sub-operations (from locate: the holders'
        NumberOf*RelatedInstances; an entity of unknown size counts 1, so the number is an estimate then), then
        each instance (a Dataset with file_meta) as a holder delivers it, for the caller to C-STORE on its own
        association. Returns the source side's outcome: instances handed over as completed, what no holder
        delivered as failed. A first yield of 0 means there is nothing to send: the outcome then says whether
        that is success (no matches) or a failure (locate failed)."""
        job = self._open(request, "C-GET", cancel, None)
        announced: int | None = None
        try:
            entities = self._find_entities(job)
            announced = job.expected if job.expected is not None else sum(
                1 if entity.expected is None else entity.expected for entity in entities)
            yield announced
            if announced:
                yield from fetch_instances(job, self._holders, entities, self._new_spool(job))
            return self._close(job)
        except Exception as exc:
            outcome = self._crashed(job, exc)
            if announced is None:
                yield 0  # the caller always gets its number first
            return outcome
        finally:
            self._release(job)

    def locate_entities(self, request: RetrieveRequest,
                        operation: str = "C-MOVE") -> list[Entity] | RetrieveOutcome:
        """The entities `request` names with their holders (PS3.4 C.4.2.2), or the failure outcome of the locate —
        e.g. for an API that shows what a move job will fetch. The locate is part of the retrieval it prepares:
        `operation` (C-MOVE or C-GET; ValueError otherwise) is its query type unless the request's origin says
        (e.g. WADO). Cancel is not offered: a locate alone is one bounded span."""
        if operation not in ("C-MOVE", "C-GET"):
            raise ValueError(f"operation: expected C-MOVE or C-GET, got {operation!r}")
        job = Job(request, operation, CancelToken())
        entities = self._find_entities(job)
        return job.early if job.early is not None else entities

    # -- strategies ---------------------------------------------------------------------------------------------

    def _run(self, job: Job, strategy: CmoveStrategy, entities: list[Entity],
             destination: Destination) -> Generator[RetrieveProgress, None, None]:
        if strategy is CmoveStrategy.DIRECT:
            yield from run_direct(job, self._holders, entities, destination.ae_title)
        elif strategy is CmoveStrategy.PROXY:
            yield from self._proxy(job, entities, destination)
        else:
            finder = functools.partial(self._find_instances, job)
            to_proxy, unreachable = yield from run_hybrid_direct(job, self._holders, entities,
                                                                 destination.ae_title, finder)
            if to_proxy and not job.token.cancelled:
                yield from self._proxy(job, to_proxy, destination, unreachable)

    def _proxy(self, job: Job, entities: list[Entity], destination: Destination,
               excluded: set[str] = frozenset()) -> Generator[RetrieveProgress, None, None]:
        yield from forward_instances(job, self._holders, self._store_port, destination, entities,
                                     self._new_spool(job), excluded)

    def _find_instances(self, job: Job, batch: Batch, sop_uids: Sequence[str]) -> list[Entity] | None:
        """HYBRID: the instances `sop_uids` of a batch's entities, as IMAGE-level entities with their holders
        (an IMAGE-level locate per entity; PATIENT batches are not narrowed). None when they cannot be located."""
        wanted = set(sop_uids)
        if batch.level is QueryLevel.IMAGE:
            return [entity for entity in batch.entities if entity.uid in wanted]
        if batch.level is QueryLevel.PATIENT:
            return None
        found: dict[str, Entity] = {}
        for entity in batch.entities:
            request = instances_request(entity, sorted(wanted), job.request.model, job.request.origin)
            result = self._span(locate_request(request, job.operation), job)
            if isinstance(result, RetrieveOutcome):
                return None
            found.update((instance.uid, instance) for instance in located_entities(request, result)
                         if instance.uid in wanted)
        return list(found.values())

    # -- locate -------------------------------------------------------------------------------------------------

    def _find_entities(self, job: Job) -> list[Entity]:
        """Locate the job's entities (PS3.4 C.4.2.2); on failure, sets the job's early outcome and returns []."""
        result = self._span(locate_request(job.request, job.operation), job)
        if isinstance(result, RetrieveOutcome):
            job.early = result
            return []
        entities = located_entities(job.request, result)
        job.expected = expected_total(entities)
        best = Counter(entity.holders[0] if entity.holders else "" for entity in entities)
        log_event(logger, "retrieve_located", **job.fields(entities=len(entities), expected=job.expected,
                                                            by_best_holder=dict(best), span_status=result.status.value,
                                                            failed_sources=result.failed_sources,
                                                            locate_query_id=result.query_id))
        return entities

    def _span(self, request: SpanRequest, job: Job) -> SpanResult | RetrieveOutcome:
        """A spanning C-FIND, or a recent one's result (LocateCache); a failure as the retrieval's outcome:
        0xA701 (could not calculate the matches, PS3.4 C.4.2.1.5) naming the failed sources, 0xC000 when the
        locate itself broke, 0xFE00 when cancelled."""
        cached = self._cache.get(request)
        if cached is not None:
            return cached
        try:
            result = self._locate(request, job.request.origin)
        except Exception as exc:
            logger.exception("locate failed", extra={"event": "retrieve_locate_failed", **job.fields()})
            return RetrieveOutcome(UNABLE_TO_PROCESS, error_comment=clip_comment(f"locate failed: {exc}"))
        if result.status is SpanStatus.CANCELLED or job.cancelled:
            return RetrieveOutcome(CANCEL)
        if not result.status.succeeded:
            failed = ", ".join(result.failed_sources) or result.error or "no source answered"
            log_event(logger, "retrieve_locate_failed", logging.WARNING, **job.fields(failed_sources=failed))
            return RetrieveOutcome(OUT_OF_RESOURCES_MATCHES, error_comment=clip_comment(f"locate failed: {failed}"))
        self._cache.put(request, result)
        return result

    # -- job lifecycle ------------------------------------------------------------------------------------------

    def _open(self, request: RetrieveRequest, operation: str, cancel: CancelToken | None,
              destination: str | None, **more: object) -> Job:
        job = Job(request, operation, cancel or CancelToken(), destination)
        job.unhook = job.cancel.on_cancel(job.token.cancel)
        log_event(logger, "retrieve_started", **job.fields(**more))
        return job

    def _new_spool(self, job: Job) -> Spool:
        if job.spool is None:
            name = re.sub(r"[^A-Za-z0-9._-]", "_", job.request.query_id)[:64]
            directory = self._spool_dir / f"{name}-{uuid.uuid4().hex[:8]}"
            job.spool = Spool(directory, self.spool_budget)
        return job.spool

    def _close(self, job: Job) -> RetrieveOutcome:
        if job.early is not None:
            outcome = job.early
        else:
            if job.destination_lost and job.expected is not None:
                job.tally.add(failed=max(job.expected - job.tally.done, 0))  # what was never sent
            outcome = job.outcome()
        severity = logging.INFO if outcome.ok else logging.WARNING
        log_event(logger, "retrieve_completed", severity,
                  **job.fields(status=f"0x{outcome.status:04X}", completed=outcome.completed, failed=outcome.failed,
                               warning=outcome.warning, failed_uids=len(outcome.failed_uids),
                               error_comment=outcome.error_comment,
                               duration_ms=round((time.monotonic() - job.started) * 1000, 1)))
        return outcome

    def _crashed(self, job: Job, exc: Exception) -> RetrieveOutcome:
        """A bug, not a source's failure: 0xC000 Unable to process (PS3.4 C.4.2.1.5) with the counts so far."""
        logger.exception("retrieval failed", extra={"event": "retrieve_failed", **job.fields()})
        tally = job.tally
        job.early = RetrieveOutcome(UNABLE_TO_PROCESS, tally.completed, tally.failed, tally.warning,
                                    tuple(tally.failed_uids), clip_comment(f"internal error: {type(exc).__name__}"))
        return self._close(job)

    @staticmethod
    def _release(job: Job) -> None:
        """The job's end, however it ends: unhook from the caller's token, delete the spool directory."""
        job.unhook()
        if job.spool is not None:
            job.spool.remove()
