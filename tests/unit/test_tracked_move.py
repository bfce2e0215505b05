"""shared.retrieval.tracked_move (the move-job runner) and shared.db.repo.move_jobs on SQLite, with scripted
retrieval services in place of the real one: status mapping, throttled progress, cancel, shutdown, recovery."""

from __future__ import annotations

import threading
import time

import pytest
from pydicom import Dataset

from shared.db.models import MoveJobStatus
from shared.db.repo import move_jobs as repo
from shared.db.repo.spanner_configs import upsert_spanner_config
from shared.dicom.levels import QueryLevel
from shared.retrieval import tracked_move
from shared.retrieval.model import (
    CANCEL, OUT_OF_RESOURCES_MATCHES, SUB_OPERATIONS_WITH_FAILURES, SUCCESS, CmoveStrategy, Destination,
    RetrieveOutcome, RetrieveProgress, RetrieveRequest,
)
from shared.retrieval.tracked_move import MoveOrder, TrackedMoves, final_remaining, job_status


class Scripted:
    """A retrieval service whose move yields `progress` then returns `outcome`; with `gate`, it first waits for
    the gate or the job's cancel (then answers 0xFE00, as the real service does)."""

    def __init__(self, progress=(), outcome=RetrieveOutcome(SUCCESS), gate: threading.Event | None = None,
                 crash: bool = False) -> None:
        self.progress, self.outcome, self.gate, self.crash = list(progress), outcome, gate, crash
        self.started = threading.Event()

    def move(self, request, strategy, destination, cancel):
        self.started.set()
        if self.crash:
            raise RuntimeError("boom")
        if self.gate is not None:
            while not self.gate.wait(0.01):
                if cancel.cancelled:
                    return RetrieveOutcome(CANCEL, completed=1)
        yield from self.progress
        return self.outcome


class Clock:
    def __init__(self) -> None:
        self.now = 0.0

    def __call__(self) -> float:
        self.now += 0.2  # every reading is 0.2 s later
        return self.now


@pytest.fixture()
def config_row(factory):
    with factory.begin() as session:
        return upsert_spanner_config(session, name="moves").row


def new_job(factory, config_row, service, instance: str = "here") -> MoveOrder:
    with factory.begin() as session:
        job = repo.create_move_job(session, config=config_row, study_uid="1.2.3", destination_ae="DEST",
                                   strategy=CmoveStrategy.DIRECT, instance_id=instance, requested_by="root")
    identifier = Dataset()
    identifier.StudyInstanceUID = "1.2.3"
    return MoveOrder(job.id, service, RetrieveRequest(QueryLevel.STUDY, identifier, query_id=job.id),
                     CmoveStrategy.DIRECT, Destination("DEST", "127.0.0.1", 104))


def idle(runner: TrackedMoves) -> None:
    deadline = time.monotonic() + 5
    while runner.running():
        assert time.monotonic() < deadline, runner.running()
        time.sleep(0.01)


def job(factory, order: MoveOrder):
    with factory() as session:
        return repo.get_move_job(session, job_id=order.job_id)


def test_final_status_and_remaining_follow_the_c_move_status():
    assert job_status(RetrieveOutcome(SUCCESS)) is MoveJobStatus.COMPLETED
    assert job_status(RetrieveOutcome(SUB_OPERATIONS_WITH_FAILURES)) is MoveJobStatus.COMPLETED_WITH_FAILURES
    assert job_status(RetrieveOutcome(CANCEL)) is MoveJobStatus.CANCELLED
    assert job_status(RetrieveOutcome(OUT_OF_RESOURCES_MATCHES)) is MoveJobStatus.FAILED
    assert final_remaining(RetrieveOutcome(CANCEL, completed=2), RetrieveProgress(4, 1)) == 3
    assert final_remaining(RetrieveOutcome(CANCEL), None) is None
    assert final_remaining(RetrieveOutcome(SUB_OPERATIONS_WITH_FAILURES, 1, 1), RetrieveProgress(1, 1)) == 0


def test_progress_is_written_at_most_every_interval_and_the_outcome_at_the_end(factory, config_row, monkeypatch):
    written = []
    real = tracked_move.record_move_progress
    monkeypatch.setattr(tracked_move, "record_move_progress",
                        lambda session, **counts: written.append(counts["completed"]) or real(session, **counts))
    outcome = RetrieveOutcome(SUB_OPERATIONS_WITH_FAILURES, 4, 1, 0, ("1.2.3.9",), "B failed")
    progress = [RetrieveProgress(5)] + [RetrieveProgress(5 - n, n) for n in range(1, 5)]
    order = new_job(factory, config_row, Scripted(progress, outcome))
    runner = TrackedMoves(session_factory=factory, workers=1, instance_id="here", progress_interval=0.5,
                          clock=Clock())
    runner.submit(order)
    idle(runner)
    runner.shutdown(5)
    assert written == [0, 3]  # readings 0.2 s apart: the first at once, then once 0.5 s have passed
    row = job(factory, order)
    assert (row.status, row.dimse_status, row.completed, row.failed, row.remaining) == \
        (MoveJobStatus.COMPLETED_WITH_FAILURES, 0xB000, 4, 1, 0)
    assert (row.failed_uids, row.error_comment) == (["1.2.3.9"], "B failed")
    assert row.started_at <= row.finished_at


def test_cancel_of_a_running_and_of_a_queued_job(factory, config_row):
    gate = threading.Event()
    busy = Scripted(gate=gate)
    running, queued = new_job(factory, config_row, busy), new_job(factory, config_row, Scripted())
    runner = TrackedMoves(session_factory=factory, workers=1, instance_id="here")
    runner.submit(running)
    runner.submit(queued)
    assert busy.started.wait(5)
    assert runner.cancel(queued.job_id).is_set()  # never started: closed at once
    assert runner.cancel(running.job_id).wait(5)
    assert (job(factory, queued).status, job(factory, queued).error_comment) == \
        (MoveJobStatus.CANCELLED, "cancelled before it started")
    assert (job(factory, running).status, job(factory, running).dimse_status) == (MoveJobStatus.CANCELLED, CANCEL)
    assert runner.cancel(running.job_id) is None and runner.running() == []
    runner.shutdown(1)
    with pytest.raises(RuntimeError, match="shutting down"):
        runner.submit(new_job(factory, config_row, Scripted()))


def test_shutdown_interrupts_running_and_queued_jobs_and_a_crash_is_a_failure(factory, config_row):
    crashed = new_job(factory, config_row, Scripted(crash=True))
    busy = Scripted(gate=threading.Event())
    running, queued = new_job(factory, config_row, busy), new_job(factory, config_row, Scripted())
    runner = TrackedMoves(session_factory=factory, workers=1, instance_id="here")
    for order in (crashed, running, queued):
        runner.submit(order)
    assert busy.started.wait(5)
    runner.shutdown(5)
    row = job(factory, crashed)
    assert (row.status, row.dimse_status, row.error_comment) == (MoveJobStatus.FAILED, 0xC000,
                                                                 "internal error: RuntimeError")
    for order in (running, queued):
        row = job(factory, order)
        assert row.status is MoveJobStatus.INTERRUPTED and "shutting down" in row.error_comment
    assert job(factory, running).completed == 1  # what the cancelled move had done


def test_recover_marks_only_this_instances_open_jobs(factory, config_row):
    mine, other = new_job(factory, config_row, None, "restart"), new_job(factory, config_row, None, "other")
    done = new_job(factory, config_row, None, "restart")
    with factory.begin() as session:
        repo.mark_move_job_running(session, job_id=mine.job_id)
        repo.finish_move_job(session, job_id=done.job_id, status=MoveJobStatus.COMPLETED, dimse_status=0,
                             remaining=0, completed=0, failed=0, warning=0)
        with pytest.raises(ValueError, match="not a final"):
            repo.finish_move_job(session, job_id=done.job_id, status=MoveJobStatus.RUNNING, dimse_status=0,
                                 remaining=0, completed=0, failed=0, warning=0)
    runner = TrackedMoves(session_factory=factory, workers=1, instance_id="restart")
    assert runner.recover() == [mine.job_id]
    runner.shutdown(1)
    assert [job(factory, o).status for o in (mine, other, done)] == [
        MoveJobStatus.INTERRUPTED, MoveJobStatus.QUEUED, MoveJobStatus.COMPLETED]
    with factory() as session:
        queued = [j.id for j in repo.list_move_jobs(session, status=MoveJobStatus.QUEUED)]
    assert other.job_id in queued and mine.job_id not in queued
