"""`GET /health` (open) and the API's own description, for authenticated callers only: `/api/v1/openapi.json` and
the Swagger UI at `/api/v1/docs`.

Why the docs need credentials: every route but /health does (issue 5), and the schema maps the whole surface. The
docs page embeds the schema (Swagger UI's `spec`), so it works for any client that can authenticate that one
request (curl, a header-injecting proxy or browser extension); Swagger UI's "Authorize" then obtains a token for
trying routes out.
"""

from __future__ import annotations

import logging
from typing import Any

from fastapi import APIRouter, Request
from fastapi.concurrency import run_in_threadpool
from fastapi.openapi.docs import get_swagger_ui_html
from fastapi.responses import HTMLResponse, JSONResponse
from sqlalchemy import text
from sqlalchemy.exc import DBAPIError

from services.api.deps import PrincipalDep
from services.api.schemas import Health
from shared.logging import log_event

logger = logging.getLogger(__name__)
router = APIRouter()
OPENAPI_URL = "/api/v1/openapi.json"


@router.get("/health", response_model=Health, responses={503: {"model": Health}}, tags=["meta"])
async def health(request: Request) -> JSONResponse:
    """Liveness and readiness without authentication: 200 when the database answers and is at the newest schema
    revision; 503 naming the failed check otherwise (details go to the log, not to unauthenticated callers)."""
    checks = {"db": await run_in_threadpool(_check_db, request.app)}
    healthy = all(value == "ok" for value in checks.values())
    body = Health(status="healthy" if healthy else "unhealthy", checks=checks)
    return JSONResponse(body.model_dump(), status_code=200 if healthy else 503)


def _check_db(app) -> str:
    """"ok", "unavailable" (no answer to SELECT 1) or "not migrated" (alembic_version missing or not at head)."""
    with app.state.session_factory() as session:
        try:
            session.execute(text("SELECT 1"))
        except Exception as exc:
            log_event(logger, "health_check_failed", logging.WARNING, check="db",
                      error=f"{type(exc).__name__}: {exc}"[:300])
            return "unavailable"
        try:
            revision = session.execute(text("SELECT version_num FROM alembic_version")).scalar()
        except DBAPIError:
            revision = None
    if revision != app.state.schema_head:
        log_event(logger, "health_check_failed", logging.WARNING, check="db",
                  error=f"schema at revision {revision}, expected {app.state.schema_head} (run `axiom db upgrade`)")
        return "not migrated"
    return "ok"


@router.get(OPENAPI_URL, include_in_schema=False)
async def openapi(request: Request, _principal: PrincipalDep) -> dict[str, Any]:
    """The API's OpenAPI schema, for authenticated callers."""
    return request.app.openapi()


@router.get("/api/v1/docs", include_in_schema=False)
async def docs(request: Request, _principal: PrincipalDep) -> HTMLResponse:
    """Swagger UI with the schema embedded (no second, unauthenticated fetch of openapi.json)."""
    return get_swagger_ui_html(openapi_url=OPENAPI_URL, title="Axiom API",
                               swagger_ui_parameters={"spec": request.app.openapi(), "persistAuthorization": False})
