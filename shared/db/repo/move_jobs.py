"""Queries on `move_jobs` (the API's tracked C-MOVE jobs). Keyword-only; the caller owns the session and commits.

A job goes queued -> running -> one final status. Every transition is a compare-and-set on the status, so a job
is finished exactly once: a worker that ends after the job was already marked (e.g. `interrupted` at shutdown)
changes nothing. Counts are the C-MOVE sub-operation counts of PS3.4 C.4.2.1.4.
"""

from __future__ import annotations

import uuid
from typing import Sequence

from sqlalchemy import select, update
from sqlalchemy.orm import Session

from shared.db.base import utc_now
from shared.db.models import MoveJob, MoveJobStatus, SpannerConfig
from shared.db.models.move_job import OPEN_STATUSES
from shared.retrieval.model import CmoveStrategy

MAX_LIST = 1000


def create_move_job(session: Session, *, config: SpannerConfig, study_uid: str, destination_ae: str,
                    strategy: CmoveStrategy, instance_id: str, requested_by: str | None) -> MoveJob:
    """A new `queued` job (id: a uuid4 hex string) of moving `study_uid` to `destination_ae` over `config`."""
    job = MoveJob(id=uuid.uuid4().hex, spanner_config_id=config.id, spanner_config_name=config.name,
                  study_uid=study_uid, destination_ae=destination_ae, strategy=strategy,
                  status=MoveJobStatus.QUEUED, instance_id=instance_id, requested_by=requested_by,
                  completed=0, failed=0, warning=0, created_at=utc_now())
    session.add(job)
    session.flush()
    return job


def get_move_job(session: Session, *, job_id: str) -> MoveJob | None:
    """The job with this id, or None."""
    return session.get(MoveJob, job_id)


def list_move_jobs(session: Session, *, status: MoveJobStatus | None = None, limit: int = 50) -> list[MoveJob]:
    """The newest jobs first (at most `limit`, capped at MAX_LIST), optionally only those with `status`."""
    query = select(MoveJob).order_by(MoveJob.created_at.desc(), MoveJob.id).limit(max(1, min(limit, MAX_LIST)))
    if status is not None:
        query = query.where(MoveJob.status == status)
    return list(session.scalars(query))


def mark_move_job_running(session: Session, *, job_id: str) -> bool:
    """queued -> running (a worker took it), with started_at; False when it was not queued any more."""
    changed = session.execute(
        update(MoveJob).where(MoveJob.id == job_id, MoveJob.status == MoveJobStatus.QUEUED)
        .values(status=MoveJobStatus.RUNNING, started_at=utc_now()))
    return changed.rowcount == 1


def record_move_progress(session: Session, *, job_id: str, remaining: int | None, completed: int, failed: int,
                         warning: int) -> bool:
    """The counts of a pending C-MOVE response (PS3.4 C.4.2.1.4) on a running job; False when it is not running."""
    changed = session.execute(
        update(MoveJob).where(MoveJob.id == job_id, MoveJob.status == MoveJobStatus.RUNNING)
        .values(remaining=remaining, completed=completed, failed=failed, warning=warning))
    return changed.rowcount == 1


def finish_move_job(session: Session, *, job_id: str, status: MoveJobStatus, dimse_status: int | None,
                    remaining: int | None, completed: int, failed: int, warning: int,
                    failed_uids: Sequence[str] = (), error_comment: str | None = None) -> bool:
    """Close an open (queued/running) job with its final C-MOVE status and counts (PS3.4 C.4.2.1.5) and the Failed
    SOP Instance UID List (C.4.2.1.6); False when it was already finished (nothing is written then)."""
    if status.is_open:
        raise ValueError(f"{status.value!r} is not a final move job status")
    changed = session.execute(
        update(MoveJob).where(MoveJob.id == job_id, MoveJob.status.in_(OPEN_STATUSES))
        .values(status=status, dimse_status=dimse_status, remaining=remaining, completed=completed, failed=failed,
                warning=warning, failed_uids=list(failed_uids) or None, error_comment=error_comment,
                finished_at=utc_now()))
    return changed.rowcount == 1


def interrupt_move_jobs(session: Session, *, instance_id: str, comment: str,
                        job_ids: Sequence[str] | None = None) -> list[str]:
    """Mark `interrupted` the open jobs of `instance_id` (all of them, e.g. at API start for jobs a previous process
    left behind, or only `job_ids`), with `comment` as their error comment; the ids marked."""
    query = select(MoveJob.id).where(MoveJob.instance_id == instance_id, MoveJob.status.in_(OPEN_STATUSES))
    if job_ids is not None:
        query = query.where(MoveJob.id.in_(list(job_ids)))
    ids = list(session.scalars(query))
    if ids:
        session.execute(
            update(MoveJob).where(MoveJob.id.in_(ids), MoveJob.status.in_(OPEN_STATUSES))
            .values(status=MoveJobStatus.INTERRUPTED, error_comment=comment, finished_at=utc_now()))
    return ids
