"""The coordinator's FastAPI app in the embedded mode: the same routes, over shared.embedded_spans.

Chosen by services.spanner_coordinator.app.create_app when neither RABBITMQ_URL nor REDIS_URL is set and the
database is the embedded SQLite (or when asked explicitly). Spans run in this process; GET answers exactly as the
distributed coordinator does. `/health` checks the database only (there is no broker or Redis to ask).
"""

from __future__ import annotations

import asyncio
import logging
from contextlib import asynccontextmanager
from typing import Any

from fastapi import FastAPI, Request
from fastapi.concurrency import run_in_threadpool
from fastapi.responses import JSONResponse, Response
from sqlalchemy import text

from services.spanner_coordinator.app import span_error, span_routes
from services.spanner_coordinator.auth import require_principal
from shared.config import Settings
from shared.db.models import ServiceKind
from shared.db.session import make_engine, make_sessionmaker
from shared.distributed.intake import SpanRequestError
from shared.embedded_spans import EmbeddedSpans
from shared.logging import log_event
from shared.metrics import CONTENT_TYPE as METRICS_CONTENT_TYPE
from shared.metrics import metrics_token_matches, render_metrics
from shared.security.authenticator import Authenticator
from shared.service_registry import ServiceHeartbeat, process_identity

logger = logging.getLogger(__name__)
POLL_SECONDS = 0.05  # how often a long poll looks at the span (memory only)


def create_embedded_app(settings: Settings, secret: str, *, session_factory=None,
                        spans: EmbeddedSpans | None = None) -> FastAPI:
    """The embedded coordinator app on `session_factory` (built from DATABASE_URL / the SQLite file when None);
    `spans` may be given ready (tests, `axiom demo --serve`); the app closes what it built."""
    engine = None
    if session_factory is None:
        engine = make_engine(settings.db.url)
        session_factory = make_sessionmaker(engine)
    owned = spans is None
    spans = spans or EmbeddedSpans(session_factory)

    @asynccontextmanager
    async def lifespan(_app: FastAPI):
        await run_in_threadpool(spans.recover)
        heartbeat = ServiceHeartbeat(session_factory, process_identity(
            ServiceKind.COORDINATOR, settings.instance_id, instance_id=settings.instance_id),
            interval=settings.heartbeat_seconds, details=lambda: {"mode": "embedded"})
        await run_in_threadpool(heartbeat.start)
        try:
            yield
        finally:
            await run_in_threadpool(heartbeat.stop)
            if owned:
                await run_in_threadpool(spans.close)
            if engine is not None:
                engine.dispose()

    app = FastAPI(title="Axiom spanner coordinator (embedded)", version="1", lifespan=lifespan, docs_url=None,
                  redoc_url=None, openapi_url=None)
    app.state.spans, app.state.settings, app.state.session_factory = spans, settings, session_factory
    app.state.authenticator = Authenticator(session_factory, secret.encode())
    app.add_exception_handler(SpanRequestError, span_error)
    _routes(app, spans, settings)
    return app


class EmbeddedBackend:
    """The span routes' back end in this mode: shared.embedded_spans, long polls by looking at memory."""

    def __init__(self, spans: EmbeddedSpans) -> None:
        self.spans = spans

    def accept(self, **request: Any) -> dict[str, Any]:
        return self.spans.accept(**request)

    def describe(self, query_id: str, *, offset: int, limit: int) -> dict[str, Any]:
        return self.spans.describe(query_id, offset=offset, limit=limit)

    def cancel(self, query_id: str) -> dict[str, Any]:
        return self.spans.cancel(query_id)

    async def wait_finished(self, query_id: str, seconds: float) -> None:
        """Return when the span is finished or `seconds` passed, holding no thread while waiting."""
        loop = asyncio.get_running_loop()
        give_up = loop.time() + seconds
        while not self.spans.is_finished(query_id) and loop.time() < give_up:
            await asyncio.sleep(min(POLL_SECONDS, max(0.0, give_up - loop.time())))


def _routes(app: FastAPI, spans: EmbeddedSpans, settings: Settings) -> None:
    @app.get("/health")
    async def health() -> JSONResponse:
        """Liveness and readiness without authentication: 200 when the database answers."""
        checks = {"db": await run_in_threadpool(_ping_db, spans.session_factory)}
        healthy = checks["db"] == "ok"
        body = {"status": "healthy" if healthy else "unhealthy", "service": "spanner-coordinator",
                "mode": "embedded", "checks": checks}
        return JSONResponse(body, status_code=200 if healthy else 503)

    @app.get("/metrics", include_in_schema=False)
    async def metrics(request: Request) -> Response:
        """Prometheus metrics of this process's spans; AXIOM_METRICS_TOKEN or any credential, 401 otherwise."""
        if not metrics_token_matches(request.headers, settings.metrics.token):
            require_principal(request)
        body = await run_in_threadpool(render_metrics, (), local_spans=True)
        return Response(body, media_type=METRICS_CONTENT_TYPE)

    span_routes(app, EmbeddedBackend(spans), settings)


def _ping_db(session_factory) -> str:
    try:
        with session_factory() as session:
            session.execute(text("SELECT 1"))
        return "ok"
    except Exception as exc:  # the details go to the log, not to unauthenticated callers
        log_event(logger, "health_check_failed", logging.WARNING, check="db",
                  error=f"{type(exc).__name__}: {exc}"[:300])
        return "unavailable"
