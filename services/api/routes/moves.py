"""Tracked C-MOVE jobs (admin-only): `POST /api/v1/spanner/services/cmove` starts one, `GET /cmove/{job_id}` shows
its status and sub-operation counts, `GET /cmove` lists jobs, `DELETE /cmove/{job_id}` cancels one.

A job moves one study to a configured destination (`dicom_destinations`) through the spanner config's retrieval
service — the same C-MOVE the spanning SCP serves (locate with a spanning C-FIND, then DIRECT / PROXY / HYBRID with
holder fallback) — run by the app's move-job runner (services.api.move_jobs, a bounded thread pool).

- POST: 422 naming `study_uid` (not a single valid UID), `destination_ae` (not an AE title, or no enabled
  destination with it: the SCP's 0xA801), `move_strategy`; 404 for an unknown `spanner_config_id`, 400 naming it
  when the config is disabled or does not offer C-MOVE. 202 with the job (`queued`) and its Location.
- The job's locate (its spanning C-FIND) is in the query log as a C-MOVE requested by the admin (name and client
  address); the job's log events carry the job id as query_id and `retrieve_located` the locate's own query id.
- DELETE: 200 with the final job once it ended (within a few seconds), else 202 (`running`, cancelling); 409 when
  the job has already finished or runs on another instance.
"""

from __future__ import annotations

import re
from typing import Annotated, NoReturn

from fastapi import APIRouter, HTTPException, Query, Request, Response, status
from sqlalchemy.orm import Session

from services.api.deps import AdminDep, SessionDep
from services.api.move_jobs import MoveJobsDep, move_jobs_lifespan
from services.api.move_schemas import MoveJobIn, MoveJobOut, study_move_request
from services.api.retrievals import get_retrievals
from services.api.routes.config import field_error
from services.api.spanning import client_address
from shared.db.models import MoveJob, MoveJobStatus
from shared.db.repo.destinations import get_destination
from shared.db.repo.move_jobs import MAX_LIST, create_move_job, get_move_job, interrupt_move_jobs, list_move_jobs
from shared.db.repo.spanner_configs import SpanPlan, load_span_plan
from shared.retrieval.model import Destination, Origin
from shared.retrieval.tracked_move import PREVIOUS_PROCESS, SHUTDOWN, MoveOrder

router = APIRouter(prefix="/api/v1/spanner/services", tags=["services"], lifespan=move_jobs_lifespan)
CANCEL_WAIT_SECONDS = 5.0
CONFIG_FIELD = "spanner_config_id"
JOB_ID = re.compile(r"[0-9a-f]{32}")


@router.post("/cmove", response_model=MoveJobOut, status_code=status.HTTP_202_ACCEPTED)
def start_move(body: MoveJobIn, request: Request, response: Response, session: SessionDep, admin: AdminDep,
               runner: MoveJobsDep) -> MoveJobOut:
    """Start moving a study to a configured destination; 202 with the queued job and `Location` to poll."""
    plan = _plan(session, body.spanner_config_id)
    row = get_destination(session, ae_title=body.destination_ae)
    if row is None:
        field_error(("body", "destination_ae"), f"no enabled C-MOVE destination {body.destination_ae!r} "
                    "(see /api/v1/config/destinations)")
    destination = Destination(row.ae_title, row.host, row.port)
    service = get_retrievals(request).for_plan(plan)
    strategy = body.move_strategy or plan.config.cmove_strategy
    job = create_move_job(session, config=plan.config, study_uid=body.study_uid, destination_ae=row.ae_title,
                          strategy=strategy, instance_id=runner.instance_id, requested_by=admin.name)
    session.commit()
    origin = Origin("C-MOVE", user=admin.name, address=client_address(request))
    move = study_move_request(job.study_uid, query_id=job.id, origin=origin)
    order = MoveOrder(job.id, service, move, strategy, destination)
    try:
        runner.submit(order)
    except RuntimeError as exc:
        interrupt_move_jobs(session, instance_id=runner.instance_id, comment=SHUTDOWN, job_ids=[job.id])
        session.commit()
        raise HTTPException(status.HTTP_503_SERVICE_UNAVAILABLE, str(exc)) from None
    response.headers["Location"] = str(request.url_for("get_move", job_id=job.id))
    return MoveJobOut.of(job)


@router.get("/cmove", response_model=list[MoveJobOut])
def list_moves(session: SessionDep, _admin: AdminDep, status: MoveJobStatus | None = None,
               limit: Annotated[int, Query(ge=1, le=MAX_LIST)] = 50) -> list[MoveJobOut]:
    """The newest move jobs first, optionally only those with `status`."""
    return [MoveJobOut.of(job) for job in list_move_jobs(session, status=status, limit=limit)]


@router.get("/cmove/{job_id}", response_model=MoveJobOut)
def get_move(job_id: str, session: SessionDep, _admin: AdminDep) -> MoveJobOut:
    """A move job's status, sub-operation counts, final DIMSE status and timings."""
    return MoveJobOut.of(_job(session, job_id))


@router.delete("/cmove/{job_id}", response_model=MoveJobOut, responses={202: {"model": MoveJobOut}})
def cancel_move(job_id: str, response: Response, session: SessionDep, _admin: AdminDep,
                runner: MoveJobsDep) -> MoveJobOut:
    """Cancel a queued or running job (its holders get C-CANCEL); 200 once it ended, 202 while it still ends."""
    job = _job(session, job_id)
    _still_open(job)
    if job.instance_id != runner.instance_id:
        raise HTTPException(status.HTTP_409_CONFLICT,
                            f"move job {job_id} runs on instance {job.instance_id!r}: cancel it there")
    ended = runner.cancel(job_id)
    if ended is None:  # open in the database, unknown to this process: it ended just now, or was left behind
        session.expire_all()
        _still_open(_job(session, job_id))
        interrupt_move_jobs(session, instance_id=runner.instance_id, comment=PREVIOUS_PROCESS, job_ids=[job_id])
        session.commit()
    elif not ended.wait(CANCEL_WAIT_SECONDS):
        response.status_code = status.HTTP_202_ACCEPTED
    session.expire_all()
    return MoveJobOut.of(_job(session, job_id))


def _plan(session: Session, config_id: int) -> SpanPlan:
    try:
        plan = load_span_plan(session, config_id=config_id)
    except LookupError:
        raise HTTPException(status.HTTP_404_NOT_FOUND, f"no spanner config with id {config_id}") from None
    except ValueError as exc:
        _bad_config(str(exc))
    if not plan.config.supports_cmove:
        _bad_config(f"spanner config {plan.config.name!r} does not offer C-MOVE (supports_cmove is false)")
    return plan


def _bad_config(message: str) -> NoReturn:
    raise HTTPException(status.HTTP_400_BAD_REQUEST, f"{CONFIG_FIELD}: {message}")


def _job(session: Session, job_id: str) -> MoveJob:
    """The job, or 404 (a malformed id is not looked up: ids are 32 lowercase hex digits)."""
    job = get_move_job(session, job_id=job_id) if JOB_ID.fullmatch(job_id) else None
    if job is None:
        raise HTTPException(status.HTTP_404_NOT_FOUND, f"no move job {job_id!r}")
    return job


def _still_open(job: MoveJob) -> None:
    if not job.status.is_open:
        raise HTTPException(status.HTTP_409_CONFLICT, f"move job {job.id} has already finished ({job.status.value})")
