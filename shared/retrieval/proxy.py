"""PROXY retrieval: the spanner fetches instances from their holders and passes each on as it arrives.

A `SourceFetch` thread asks each batch's holder for it — C-GET with the instances coming back on the same
association (PS3.4 C.4.3.2), or, for a source without C-GET, C-MOVE to the spanner's own storage AE, the
instances arriving through the Inbox (C.4.2.2) — and spools each instance (bounded: a full spool blocks the
source). For a C-MOVE a `Forwarder` thread sends each spooled instance on ONE C-STORE association to the
destination as soon as it is spooled (cut-through: the first instance reaches the destination while the source is
still sending), deleting its file after the send; for a C-GET the SCP's generator hands each one to its caller.

What a holder did not deliver (unreachable, a failure status, failed sub-operations) is asked of the entity's next
holder; an instance an earlier holder delivered is acknowledged but not spooled twice.
"""

from __future__ import annotations

import logging
import queue
import threading
from collections import Counter
from typing import Callable, Generator, Iterable, Sequence

from pydicom import Dataset

from shared.dicom.levels import UNIQUE_KEYS
from shared.logging import log_event
from shared.retrieval.job import HolderChain, Holders, Job, drain, image_uids, log_holder_failed, logger
from shared.retrieval.locate import Batch, Entity, batch_request, plan_batches
from shared.retrieval.model import SUCCESS, Destination, RetrieveOutcome, RetrieveProgress
from shared.retrieval.ports import InstanceSink, StorePort, StoreSession
from shared.retrieval.spool import Spool
from shared.retrieval.tally import Tally, is_store_warning
from shared.spanning.ports import SourceError

STORE_OUT_OF_RESOURCES = 0xA700  # C-STORE "Refused: Out of Resources" (PS3.4 B.2.3): the instance was not kept
NO_STATUS = -1  # a send that got no status (association lost): a failed sub-operation
# Sends in a row without a status after which the destination counts as lost (a session reconnects by itself once
# per send, so two in a row mean the destination is down, not a dropped association).
LOST_AFTER_NO_STATUS = 2
JOIN_SECONDS = 30.0  # after a cancel, ports answer C-CANCEL (or abort) well within this
FINISH_SECONDS = 2.0  # a thread of a job that ended normally is exiting already


class SourceFetch:
    """Thread body: fetches entities from their holders into `spool`. `lost` holds the source-side failures (what
    no holder delivered); read it after the thread ended."""

    def __init__(self, job: Job, holders: Holders, entities: Sequence[Entity], spool: Spool,
                 excluded: Iterable[str] = ()) -> None:
        self._job, self._holders, self._entities, self._spool = job, holders, list(entities), spool
        self._chain = HolderChain(holders.can_proxy, excluded)
        self._lock = threading.Lock()
        self._seen: set[str] = set()
        self._delivered: Counter[tuple[str, ...]] = Counter()
        self.lost = Tally()

    def run(self) -> None:
        pending = self._entities
        while pending and not self._job.token.cancelled:
            batches, orphans = plan_batches(pending, self._chain.next_for)
            self._lose(orphans, None)
            pending = []
            for batch in batches:
                if self._job.token.cancelled:
                    break
                outcome, error = self._attempt(batch)
                self._chain.tried(batch)
                if self._job.token.cancelled or _clean(outcome):
                    continue
                reason = error or (f"status 0x{outcome.status:04X}" if outcome else "no outcome")
                log_holder_failed(self._job, batch, reason, mode="proxy")
                retry, gone = self._chain.split(entity for entity in batch.entities if not self._complete(entity))
                self._lose(gone, outcome)
                pending += retry

    def _attempt(self, batch: Batch) -> tuple[RetrieveOutcome | None, str | None]:
        """C-GET the batch from its holder, or C-MOVE it to the spanner's own AE when the holder has no C-GET."""
        source = self._holders.sources[batch.holder]
        request, sink, port = batch_request(batch, self._job.request), self._sink(batch), self._holders.retrieve_port
        try:
            if getattr(source.connection, "supports_cget", True) is not False:
                return drain(port.get(source, request, sink, self._job.token)), None
            with self._holders.inbox.expect(batch.level, [entity.uid for entity in batch.entities], sink):
                return drain(port.move(source, request, self._holders.self_ae_title, self._job.token)), None
        except Exception as exc:  # a holder's failure must not end the job: the next holder may have the entities
            if not isinstance(exc, SourceError):
                logger.exception("retrieve port raised", extra={"event": "retrieve_port_error", **self._job.fields()})
            return None, f"{type(exc).__name__}: {exc}"

    def _sink(self, batch: Batch) -> InstanceSink:
        """Spools what the holder sends (blocking while the spool is full); an instance already delivered by an
        earlier holder is acknowledged and dropped. Returns the C-STORE status for the holder."""
        by_uid = {entity.uid: entity for entity in batch.entities}
        level_key = UNIQUE_KEYS[batch.level]

        def sink(dataset: Dataset) -> int:
            sop_uid = str(dataset.get("SOPInstanceUID", "")).strip()
            with self._lock:
                if sop_uid in self._seen:
                    return SUCCESS
                if sop_uid:
                    self._seen.add(sop_uid)
            if not self._spool_one(dataset):
                with self._lock:
                    self._seen.discard(sop_uid)
                return STORE_OUT_OF_RESOURCES
            entity = by_uid.get(str(dataset.get(level_key, "")).strip())
            with self._lock:
                self._delivered[entity.key if entity else ()] += 1
            return SUCCESS

        return sink

    def _spool_one(self, dataset: Dataset) -> bool:
        try:
            return not self._job.token.cancelled and self._spool.put(dataset)
        except Exception as exc:  # a full disk or an instance pydicom cannot write: this instance fails
            log_event(logger, "retrieve_spool_failed", logging.ERROR, **self._job.fields(error=str(exc)))
            return False

    def _complete(self, entity: Entity) -> bool:
        with self._lock:
            return entity.expected is not None and self._delivered[entity.key] >= entity.expected

    def _lose(self, entities: Sequence[Entity], outcome: RetrieveOutcome | None) -> None:
        """Entities no holder (fully) delivered: their undelivered instances failed — by the expected counts, or,
        sizes unknown, one per entity nothing arrived for (or the last holder's failed count when higher)."""
        if not entities:
            return
        with self._lock:
            got = {entity.key: self._delivered[entity.key] for entity in entities}
            seen = set(self._seen)
        if all(entity.expected is not None for entity in entities):
            failed = sum(max(entity.expected - got[entity.key], 0) for entity in entities)
        else:
            failed = max(sum(1 for entity in entities if not got[entity.key]), outcome.failed if outcome else 0)
        uids = [uid for uid in image_uids(entities) if uid not in seen]
        uids += [uid for uid in (outcome.failed_uids if outcome else ()) if uid not in seen]
        self.lost.add(failed=failed, failed_uids=tuple(uids))
        self._job.note("no holder left for some entities")


def _clean(outcome: RetrieveOutcome | None) -> bool:
    """The holder sent all it was asked for: success, or a warning without failed sub-operations."""
    if outcome is None or outcome.failed:
        return False
    return outcome.status == SUCCESS or is_store_warning(outcome.status)


class Forwarder:
    """Thread body: sends each spooled instance to the destination on one C-STORE session as it arrives, deletes
    it, and `report`s (SOP Instance UID, status). An unreachable destination (the session cannot be opened, or
    LOST_AFTER_NO_STATUS sends in a row get no status) cancels the job's source side: what was not sent fails."""

    def __init__(self, job: Job, store_port: StorePort, destination: Destination, spool: Spool,
                 report: Callable[[str, int], None]) -> None:
        self._job, self._store_port, self._destination, self._spool = job, store_port, destination, spool
        self._report = report
        self._session: StoreSession | None = None
        self._no_status = 0

    def run(self) -> None:
        try:
            while (entry := self._spool.take()) is not None:
                try:
                    status = self._forward(entry)
                finally:
                    self._spool.release(entry)
                self._report(entry.sop_instance_uid, status)
        finally:
            if self._session is not None:
                try:
                    self._session.close()
                except Exception as exc:
                    log_event(logger, "retrieve_store_close_failed", logging.WARNING,
                              **self._job.fields(error=str(exc)))

    def _forward(self, entry) -> int:
        if self._job.destination_lost:
            return NO_STATUS
        if self._session is None:
            try:
                self._session = self._store_port.open(self._destination, self._job.token)
            except Exception as exc:
                self._lose_destination(exc)
                return NO_STATUS
        try:
            status = self._session.send(self._spool.load(entry))
        except Exception as exc:
            log_event(logger, "retrieve_forward_failed", logging.WARNING,
                      **self._job.fields(sop_instance_uid=entry.sop_instance_uid, error=f"{type(exc).__name__}: {exc}"))
            status = NO_STATUS
        self._no_status = self._no_status + 1 if status < 0 else 0
        if self._no_status >= LOST_AFTER_NO_STATUS:
            self._lose_destination(RuntimeError(f"{self._no_status} sends in a row got no status"))
        return status

    def _lose_destination(self, exc: Exception) -> None:
        self._job.destination_lost = True
        self._job.note(f"destination {self._destination.ae_title} unreachable")
        log_event(logger, "retrieve_destination_failed", logging.WARNING,
                  **self._job.fields(error=f"{type(exc).__name__}: {exc}"))
        self._job.token.cancel()  # stop fetching what cannot be delivered


def forward_instances(job: Job, holders: Holders, store_port: StorePort, destination: Destination,
                      entities: Sequence[Entity], spool: Spool,
                      excluded: Iterable[str] = ()) -> Generator[RetrieveProgress, None, None]:
    """PROXY C-MOVE (PS3.4 C.4.2.2): fetch into the spool and forward to `destination` concurrently; a pending
    progress per forwarded instance, counted by the destination's C-STORE statuses (C.4.2.1.4). The source-side
    failures join the job's counts at the end."""
    events: queue.SimpleQueue = queue.SimpleQueue()
    fetch = SourceFetch(job, holders, entities, spool, excluded)
    forwarder = Forwarder(job, store_port, destination, spool, lambda uid, status: events.put((uid, status)))
    unhook = job.token.on_cancel(spool.abort)
    threads = [_start("retrieve-fetch", fetch.run, spool.finish),
               _start("retrieve-forward", forwarder.run, lambda: events.put(None))]
    ended = False
    try:
        while (event := events.get()) is not None:
            job.tally.count_store(event[1], event[0])
            yield job.tally.progress(job.expected)
        ended = True
    finally:
        _stop(job, spool, threads, ended)
        unhook()
    job.tally.merge(fetch.lost)


def fetch_instances(job: Job, holders: Holders, entities: Sequence[Entity],
                    spool: Spool) -> Generator[Dataset, None, None]:
    """C-GET SCP side (PS3.4 C.4.3.2): fetch into the spool and yield each instance (with its file_meta) as it
    arrives, for the caller to C-STORE on its own association. The job's tally counts instances handed over as
    completed and the source-side failures."""
    fetch = SourceFetch(job, holders, entities, spool)
    unhook = job.token.on_cancel(spool.abort)
    threads = [_start("retrieve-fetch", fetch.run, spool.finish)]
    ended = False
    try:
        while (entry := spool.take()) is not None:
            try:
                dataset = spool.load(entry)
            except Exception as exc:
                log_event(logger, "retrieve_spool_failed", logging.ERROR, **job.fields(error=str(exc)))
                job.tally.count_store(NO_STATUS, entry.sop_instance_uid)
                continue
            finally:
                spool.release(entry)
            job.tally.completed += 1
            yield dataset
        ended = True
    finally:
        _stop(job, spool, threads, ended)
        unhook()
    job.tally.merge(fetch.lost)


def _start(name: str, body: Callable[[], None], then: Callable[[], None]) -> threading.Thread:
    def run() -> None:
        try:
            body()
        except Exception:
            logger.exception("retrieval thread failed", extra={"event": "retrieve_thread_failed", "worker": name})
        finally:
            then()

    thread = threading.Thread(target=run, name=name, daemon=True)
    thread.start()
    return thread


def _stop(job: Job, spool: Spool, threads: list[threading.Thread], ended: bool) -> None:
    """Wait for the job's threads. When the job did not end normally (abandoned, an error) — or a thread does not
    end by itself (the forwarder died while the source still sends) — cancel them first."""
    if ended:
        for thread in threads:
            thread.join(FINISH_SECONDS)
    if not ended or any(thread.is_alive() for thread in threads):
        job.token.cancel()
        spool.abort()
    for thread in threads:
        thread.join(JOIN_SECONDS)
        if thread.is_alive():
            log_event(logger, "retrieve_thread_stuck", logging.WARNING, **job.fields(worker=thread.name))
