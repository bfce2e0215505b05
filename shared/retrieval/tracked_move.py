"""Tracked C-MOVE jobs: a bounded pool of threads runs each job through RetrievalService.move (the one C-MOVE
implementation, shared.retrieval.service) and records it in `move_jobs` (shared.db.repo.move_jobs).

* A job is `queued` until a worker takes it, then `running`; its sub-operation counts (PS3.4 C.4.2.1.4) are written
  at most every `progress_interval` seconds (the first pending response, which carries the located total, at once),
  the final status and counts (C.4.2.1.5) when it ends: 0x0000 `completed`, 0xB000 `completed_with_failures`,
  0xFE00 `cancelled`, any other status `failed`.
* `cancel(job_id)` cancels the job's CancelToken (the service then sends C-CANCEL to the holders, PS3.4 C.4.2.3.2);
  a job still queued is finished `cancelled` at once.
* `shutdown()` cancels every job and records it `interrupted` (not `cancelled`: no caller asked); what does not end
  within the grace period, and every job still queued, is marked `interrupted` directly.
* `recover()` (at start) marks `interrupted` the jobs this instance (AXIOM_INSTANCE_ID) left open in a previous
  process: a move cut off by a crash or restart is reported, not silently lost. One API process per instance id.

Events: move_job_started, move_job_completed (job_id, query_id, study_uid, destination, strategy, counts).
"""

from __future__ import annotations

import logging
import threading
import time
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import dataclass, field
from typing import Callable

from sqlalchemy.exc import SQLAlchemyError

from shared.db.models import MoveJobStatus
from shared.db.repo.move_jobs import (
    finish_move_job, interrupt_move_jobs, mark_move_job_running, record_move_progress,
)
from shared.logging import log_event
from shared.retrieval.locate import key_text
from shared.retrieval.model import (
    CANCEL, SUB_OPERATIONS_WITH_FAILURES, SUCCESS, UNABLE_TO_PROCESS, CmoveStrategy, Destination, RetrieveOutcome,
    RetrieveProgress, RetrieveRequest,
)
from shared.retrieval.service import RetrievalService
from shared.retrieval.tally import clip_comment
from shared.spanning.ports import CancelToken

logger = logging.getLogger(__name__)
PREVIOUS_PROCESS = "interrupted: the API process running it stopped before it finished"
SHUTDOWN = "interrupted: the API is shutting down"
_FINAL = {SUCCESS: MoveJobStatus.COMPLETED, SUB_OPERATIONS_WITH_FAILURES: MoveJobStatus.COMPLETED_WITH_FAILURES,
          CANCEL: MoveJobStatus.CANCELLED}


def job_status(outcome: RetrieveOutcome) -> MoveJobStatus:
    """A job's final status from the C-MOVE's final DIMSE status (PS3.4 C.4.2.1.5): Success, Warning 0xB000
    (some sub-operations failed) and Cancel map to their own states; every Failure or Refused status is `failed`."""
    return _FINAL.get(outcome.status, MoveJobStatus.FAILED)


def final_remaining(outcome: RetrieveOutcome, last: RetrieveProgress | None) -> int | None:
    """Number of Remaining Sub-operations at the end (PS3.4 C.4.2.1.5: meaningful for Cancel): the located total
    minus what was done; 0 after a (partly) successful move; None when the total was never known."""
    if job_status(outcome) in (MoveJobStatus.COMPLETED, MoveJobStatus.COMPLETED_WITH_FAILURES):
        return 0
    if last is None or last.remaining is None:
        return None
    total = last.remaining + last.completed + last.failed + last.warning
    return max(total - (outcome.completed + outcome.failed + outcome.warning), 0)


@dataclass(frozen=True)
class MoveOrder:
    """One job to run: its id, the config's retrieval service, the request (query_id: the job id), the strategy
    and the Move Destination."""

    job_id: str
    service: RetrievalService
    request: RetrieveRequest
    strategy: CmoveStrategy
    destination: Destination


@dataclass
class _Entry:
    order: MoveOrder
    token: CancelToken = field(default_factory=CancelToken)
    done: threading.Event = field(default_factory=threading.Event)
    reason: str | None = None  # None: cancelled by a caller (or not cancelled); SHUTDOWN: the pool is stopping
    future: Future | None = None


class TrackedMoves:
    """The move-job runner of one API process (thread-safe)."""

    def __init__(self, *, session_factory: Callable, workers: int, instance_id: str,
                 progress_interval: float = 0.5, clock: Callable[[], float] = time.monotonic) -> None:
        self._sessions, self.instance_id = session_factory, instance_id
        self._interval, self._clock = progress_interval, clock
        self._pool = ThreadPoolExecutor(max_workers=workers, thread_name_prefix="move-job")
        self._lock = threading.Lock()
        self._entries: dict[str, _Entry] = {}
        self._closing = False

    def recover(self) -> list[str]:
        """Mark `interrupted` the jobs of this instance a previous process left queued or running; their ids."""
        with self._sessions.begin() as session:
            ids = interrupt_move_jobs(session, instance_id=self.instance_id, comment=PREVIOUS_PROCESS)
        if ids:
            log_event(logger, "move_jobs_interrupted", logging.WARNING, instance_id=self.instance_id, jobs=ids,
                      reason="left open by a previous process")
        return ids

    def submit(self, order: MoveOrder) -> None:
        """Queue `order` (its job row exists, `queued`). RuntimeError once shutdown began."""
        entry = _Entry(order)
        with self._lock:
            if self._closing:
                raise RuntimeError("the move job runner is shutting down")
            self._entries[order.job_id] = entry
            entry.future = self._pool.submit(self._run, entry)

    def cancel(self, job_id: str) -> threading.Event | None:
        """Cancel a job of this process; an Event set when it has ended (at once for a job still queued). None when
        this process does not run the job (finished, or another instance's)."""
        with self._lock:
            entry = self._entries.get(job_id)
        if entry is None:
            return None
        entry.token.cancel()
        if entry.future is not None and entry.future.cancel():  # never started: finish it here
            self._close_unstarted(entry, MoveJobStatus.CANCELLED, "cancelled before it started")
        return entry.done

    def running(self) -> list[str]:
        """Ids of the jobs this process has queued or running."""
        with self._lock:
            return list(self._entries)

    def shutdown(self, grace_seconds: float = 5.0) -> None:
        """Cancel every job; wait up to `grace_seconds` for them to record `interrupted`; mark the rest directly."""
        with self._lock:
            self._closing = True
            entries = list(self._entries.values())
        for entry in entries:
            entry.reason = SHUTDOWN
            entry.token.cancel()
        self._pool.shutdown(wait=False, cancel_futures=True)
        for entry in entries:
            if entry.future is not None and entry.future.cancelled() and not entry.done.is_set():
                try:  # still queued: it never ran
                    self._close_unstarted(entry, MoveJobStatus.INTERRUPTED, SHUTDOWN)
                except SQLAlchemyError:
                    logger.exception("could not close a queued move job", extra={"event": "move_job_write_failed"})
        deadline = self._clock() + grace_seconds
        for entry in entries:
            entry.done.wait(max(deadline - self._clock(), 0))
        leftover = [entry.order.job_id for entry in entries if not entry.done.is_set()]
        if leftover:
            try:
                with self._sessions.begin() as session:
                    interrupt_move_jobs(session, instance_id=self.instance_id, comment=SHUTDOWN, job_ids=leftover)
            except SQLAlchemyError:
                logger.exception("could not mark move jobs interrupted", extra={"event": "move_job_write_failed"})
            log_event(logger, "move_jobs_interrupted", logging.WARNING, instance_id=self.instance_id,
                      jobs=leftover, reason="shutdown")

    # -- one job ------------------------------------------------------------------------------------------------

    def _run(self, entry: _Entry) -> None:
        order = entry.order
        try:
            if entry.token.cancelled:
                self._close_unstarted(entry, MoveJobStatus.INTERRUPTED if entry.reason else
                                      MoveJobStatus.CANCELLED, entry.reason or "cancelled before it started")
                return
            with self._sessions.begin() as session:
                if not mark_move_job_running(session, job_id=order.job_id):
                    return  # finished meanwhile (interrupted, or cancelled by another path)
            log_event(logger, "move_job_started", **_fields(order))
            started = self._clock()
            outcome, last = self._drive(entry)
            self._finish(entry, outcome, last, started)
        except Exception as exc:  # a bug or a lost database: the job must not stay `running`
            logger.exception("move job failed", extra={"event": "move_job_failed", **_fields(order)})
            try:
                self._finish(entry, RetrieveOutcome(UNABLE_TO_PROCESS, error_comment=clip_comment(
                    f"internal error: {type(exc).__name__}")), None, None)
            except SQLAlchemyError:  # the next start of this instance marks it `interrupted`
                logger.exception("could not record a move job's end", extra={"event": "move_job_write_failed"})
        finally:
            self._forget(entry)

    def _drive(self, entry: _Entry) -> tuple[RetrieveOutcome, RetrieveProgress | None]:
        """Run the service's move to its end, writing progress at most every `progress_interval` seconds."""
        order = entry.order
        stream = order.service.move(order.request, order.strategy, order.destination, entry.token)
        last, written_at = None, None
        while True:
            try:
                progress = next(stream)
            except StopIteration as stop:
                return stop.value, last
            last = progress
            now = self._clock()
            if written_at is None or now - written_at >= self._interval:
                self._write_progress(order.job_id, progress)
                written_at = now

    def _write_progress(self, job_id: str, progress: RetrieveProgress) -> None:
        try:
            with self._sessions.begin() as session:
                record_move_progress(session, job_id=job_id, remaining=progress.remaining,
                                     completed=progress.completed, failed=progress.failed, warning=progress.warning)
        except SQLAlchemyError as exc:  # progress is informative: the move goes on, the final write tells
            log_event(logger, "move_job_write_failed", logging.WARNING, job_id=job_id, error=str(exc)[:200])

    def _finish(self, entry: _Entry, outcome: RetrieveOutcome, last: RetrieveProgress | None,
                started: float | None) -> None:
        order = entry.order
        status = job_status(outcome)
        comment = outcome.error_comment
        if entry.reason is not None and status in (MoveJobStatus.CANCELLED, MoveJobStatus.FAILED):
            status, comment = MoveJobStatus.INTERRUPTED, "; ".join(filter(None, [entry.reason, comment]))
        with self._sessions.begin() as session:
            finish_move_job(session, job_id=order.job_id, status=status, dimse_status=outcome.status,
                            remaining=final_remaining(outcome, last), completed=outcome.completed,
                            failed=outcome.failed, warning=outcome.warning, failed_uids=outcome.failed_uids,
                            error_comment=comment)
        duration = None if started is None else round((self._clock() - started) * 1000, 1)
        log_event(logger, "move_job_completed", logging.INFO if outcome.ok else logging.WARNING,
                  **_fields(order, status=status.value, dimse_status=f"0x{outcome.status:04X}",
                            completed=outcome.completed, failed=outcome.failed, warning=outcome.warning,
                            error_comment=comment, duration_ms=duration))

    def _close_unstarted(self, entry: _Entry, status: MoveJobStatus, comment: str) -> None:
        with self._sessions.begin() as session:
            finish_move_job(session, job_id=entry.order.job_id, status=status, dimse_status=None, remaining=None,
                            completed=0, failed=0, warning=0, error_comment=comment)
        log_event(logger, "move_job_completed", **_fields(entry.order, status=status.value, error_comment=comment))
        self._forget(entry)

    def _forget(self, entry: _Entry) -> None:
        with self._lock:
            if self._entries.get(entry.order.job_id) is entry:
                del self._entries[entry.order.job_id]
        entry.done.set()


def _fields(order: MoveOrder, **more: object) -> dict[str, object]:
    """Correlation fields of a job's log events (query_id: the job's retrieve request, i.e. the job id)."""
    study = key_text(order.request.identifier.get("StudyInstanceUID")) or None
    return {"job_id": order.job_id, "query_id": order.request.query_id, "study_uid": study,
            "destination": order.destination.ae_title, "strategy": order.strategy.value, **more}
