"""The API's move-job runner (shared.retrieval.tracked_move.TrackedMoves): one per app, started and stopped by the
lifespan of the routes.moves router (merged into the app's lifespan when the router is included).

At start the runner marks `interrupted` the jobs this instance (AXIOM_INSTANCE_ID) left open in a previous process;
at shutdown it cancels the running jobs and records them `interrupted`. A database that is not migrated yet does
not stop the API: the recovery is then skipped with a warning (/health reports "not migrated" meanwhile).
Routes get the runner with `MoveJobsDep`.
"""

from __future__ import annotations

import logging
from contextlib import asynccontextmanager
from typing import Annotated

from fastapi import Depends, FastAPI, HTTPException, Request, status
from sqlalchemy.exc import SQLAlchemyError

from shared.logging import log_event
from shared.retrieval.tracked_move import TrackedMoves

logger = logging.getLogger(__name__)
SHUTDOWN_GRACE_SECONDS = 5.0


@asynccontextmanager
async def move_jobs_lifespan(app: FastAPI):
    """Create the runner on the app's session factory and settings; shut it down at the end."""
    settings = app.state.settings
    runner = app.state.move_jobs = TrackedMoves(session_factory=app.state.session_factory,
                                                workers=settings.api.move_job_workers,
                                                instance_id=settings.instance_id)
    try:
        runner.recover()
    except SQLAlchemyError as exc:
        log_event(logger, "move_jobs_recovery_skipped", logging.WARNING, error=str(exc).splitlines()[0][:200])
    try:
        yield
    finally:
        runner.shutdown(SHUTDOWN_GRACE_SECONDS)
        app.state.move_jobs = None


def get_move_jobs(request: Request) -> TrackedMoves:
    """The app's move-job runner; 503 while the app is not started."""
    runner = getattr(request.app.state, "move_jobs", None)
    if runner is None:
        raise HTTPException(status.HTTP_503_SERVICE_UNAVAILABLE, "the move job runner is not running (app not started)")
    return runner


MoveJobsDep = Annotated[TrackedMoves, Depends(get_move_jobs)]
