"""The coordinator's FastAPI app: thin routes over shared.distributed.intake, plus the deadline sweep.

`create_app(settings)` builds everything from settings (DATABASE_URL, REDIS_URL, RABBITMQ_URL, SECRET_KEY); tests
may pass a ready runtime. The app keeps no query state: any number of coordinators serve the same queries.
Without RABBITMQ_URL/REDIS_URL on the embedded database the same routes run over shared.embedded_spans instead
(services.spanner_coordinator.embedded: spans in this process).
"""

from __future__ import annotations

import json
import logging
import threading
import time
from contextlib import asynccontextmanager
from typing import Annotated, Any, Protocol

from fastapi import Depends, FastAPI, HTTPException, Query, Request
from fastapi.concurrency import run_in_threadpool
from fastapi.responses import JSONResponse, Response
from redis.asyncio import Redis as AsyncRedis
from sqlalchemy import text

from services.spanner_coordinator.auth import require_principal
from shared.config import Settings
from shared.db.models import Role, ServiceKind
from shared.distributed.intake import (
    Requester, SpanRequestError, accept_span, cancel_span, check_query_id, describe_span, is_finished, sweep,
)
from shared.distributed.runtime import SpanRuntime, build_runtime
from shared.logging import log_event
from shared.messaging.celery_app import create_celery_app, publish
from shared.messaging.contracts import ALL_QUEUES
from shared.metrics import CONTENT_TYPE as METRICS_CONTENT_TYPE
from shared.metrics import QueueDepthCollector, SharedSpanMetrics, metrics_token_matches, render_metrics
from shared.security.authenticator import Authenticator
from shared.security.principal import Principal as CallerPrincipal
from shared.service_registry import ServiceHeartbeat, process_identity

logger = logging.getLogger(__name__)
MAX_BODY_BYTES = 64 * 1024
SWEEP_SECONDS = 0.5
PURGE_EVERY_SECONDS = 600.0
RECHECK_SECONDS = 1.0
Principal = Annotated[CallerPrincipal, Depends(require_principal)]


def create_app(settings: Settings, *, runtime: SpanRuntime | None = None, celery_app=None,
               embedded: bool | None = None, session_factory=None, spans=None) -> FastAPI:
    """The coordinator app. ValueError naming the missing setting (SECRET_KEY of 32+ characters, broker, Redis,
    PostgreSQL).

    The back end: embedded (services.spanner_coordinator.embedded: spans run in this process, `session_factory`
    and a ready shared.embedded_spans.EmbeddedSpans `spans` may be given) when `embedded` says so, or, when it is
    None, when no runtime is given, RABBITMQ_URL and REDIS_URL are unset and the database is the embedded SQLite;
    distributed otherwise."""
    secret = settings.coordinator.secret_key.get_secret_value() if settings.coordinator.secret_key else ""
    if len(secret) < 32:
        raise ValueError("SECRET_KEY must be set to at least 32 random characters (e.g. `openssl rand -hex 32`)")
    if embedded is None:
        embedded = runtime is None and is_embedded(settings)
    if embedded:
        from services.spanner_coordinator.embedded import create_embedded_app  # it imports this module's routes

        return create_embedded_app(settings, secret, session_factory=session_factory, spans=spans)
    celery_app = celery_app or create_celery_app(settings)
    if runtime is None:
        runtime = build_runtime(settings, lambda name, args, countdown: publish(celery_app, name, args,
                                                                               countdown=countdown))

    @asynccontextmanager
    async def lifespan(app: FastAPI):
        sweeper = _Sweeper(runtime)
        sweeper.start()
        # registers `coordinator:<AXIOM_INSTANCE_ID>` (reports only: the API does not start/stop coordinators)
        heartbeat = ServiceHeartbeat(
            runtime.session_factory, process_identity(ServiceKind.COORDINATOR, settings.instance_id,
                                                      instance_id=settings.instance_id),
            interval=settings.heartbeat_seconds, details=sweeper.details)
        await run_in_threadpool(heartbeat.start)
        try:
            yield
        finally:
            await run_in_threadpool(heartbeat.stop)
            sweeper.stop()
            await app.state.async_redis.aclose()
            runtime.close()

    # No unauthenticated documentation routes: the OpenAPI schema is served to API-key holders only (below).
    app = FastAPI(title="Axiom spanner coordinator", version="1", lifespan=lifespan, docs_url=None, redoc_url=None,
                  openapi_url=None)
    app.state.runtime, app.state.celery, app.state.settings = runtime, celery_app, settings
    app.state.async_redis = _async_twin(runtime.store.redis)
    app.state.authenticator = Authenticator(runtime.session_factory, secret.encode())
    app.add_exception_handler(SpanRequestError, span_error)
    _routes(app, runtime, settings)
    return app


def is_embedded(settings: Settings) -> bool:
    """The embedded default: no RABBITMQ_URL, no REDIS_URL, and the embedded SQLite database."""
    dist = settings.distributed
    return dist.rabbitmq_url is None and dist.redis_url is None and settings.db.embedded


async def span_error(_request: Request, exc: SpanRequestError) -> JSONResponse:
    """SpanRequestError as its HTTP status and `detail` (the message names the field)."""
    return JSONResponse({"detail": str(exc)}, status_code=exc.status_code)


class SpanBackend(Protocol):
    """What the span routes run on: the distributed intake (DistributedSpans) or the embedded one
    (services.spanner_coordinator.embedded). accept/describe/cancel raise SpanRequestError naming the field."""

    def accept(self, **request: Any) -> dict[str, Any]: ...

    def describe(self, query_id: str, *, offset: int, limit: int) -> dict[str, Any]: ...

    def cancel(self, query_id: str) -> dict[str, Any]: ...

    async def wait_finished(self, query_id: str, seconds: float) -> None: ...


class DistributedSpans:
    """The distributed back end: shared.distributed.intake on the runtime; long polls woken by the finaliser's
    pub/sub announcement (shared.distributed.store.done_channel), with a look at the stored state every
    RECHECK_SECONDS in case an announcement was missed."""

    def __init__(self, runtime: SpanRuntime, async_redis: AsyncRedis) -> None:
        self.runtime, self.async_redis = runtime, async_redis

    def accept(self, **request: Any) -> dict[str, Any]:
        return accept_span(self.runtime, **request)

    def describe(self, query_id: str, *, offset: int, limit: int) -> dict[str, Any]:
        return describe_span(self.runtime, query_id, offset=offset, limit=limit)

    def cancel(self, query_id: str) -> dict[str, Any]:
        return cancel_span(self.runtime, query_id)

    async def wait_finished(self, query_id: str, seconds: float) -> None:
        """Return when the query is finished or `seconds` passed, holding no thread while waiting."""
        give_up = time.monotonic() + seconds
        pubsub = self.async_redis.pubsub(ignore_subscribe_messages=True)
        try:
            await pubsub.subscribe(self.runtime.store.done_channel(query_id))
            while not await run_in_threadpool(is_finished, self.runtime, query_id):
                left = give_up - time.monotonic()
                if left <= 0:
                    return
                if await pubsub.get_message(timeout=min(left, RECHECK_SECONDS)) is not None:
                    return
        finally:
            await pubsub.aclose()


def span_routes(app: FastAPI, backend: SpanBackend, settings: Settings) -> None:
    """The routes both modes share: the authenticated OpenAPI schema and POST/GET/DELETE /spanning-query."""
    max_wait = settings.coordinator.max_wait_seconds

    @app.get("/openapi.json", include_in_schema=False)
    async def openapi(_principal: Principal) -> dict[str, Any]:
        """The API's OpenAPI schema, for authenticated clients."""
        return app.openapi()

    @app.post("/spanning-query", status_code=202)
    async def submit(request: Request, principal: Principal,
                     spanner_config_id: Annotated[int | None, Query(ge=1)] = None,
                     spanner_config: Annotated[str | None, Query(max_length=64)] = None,
                     query_type: Annotated[str, Query(max_length=16)] = "C-FIND",
                     query_level: Annotated[str, Query(max_length=16)] = "STUDY") -> JSONResponse:
        """Accept a spanning query (202); poll GET /spanning-query/{query_id}."""
        keys = await json_body(request)
        requester = Requester(user=principal.name, address=request.client.host if request.client else None)
        accepted = await run_in_threadpool(
            backend.accept, config_id=spanner_config_id, config_name=spanner_config, query_type=query_type,
            query_level=query_level, keys=keys, requester=requester)
        return JSONResponse(accepted, status_code=202, headers={"Location": accepted["status_url"]})

    @app.get("/spanning-query/{query_id}")
    async def status(query_id: str, principal: Principal,
                     offset: Annotated[int, Query(ge=0)] = 0, limit: Annotated[int, Query(ge=0, le=10_000)] = 100,
                     wait: Annotated[float, Query(ge=0)] = 0) -> dict[str, Any]:
        """The query's status, per-source outcomes and a page of results; `wait` long-polls until it is done."""
        check_query_id(query_id)
        if wait > 0:
            await backend.wait_finished(query_id, min(wait, max_wait))
        view = await run_in_threadpool(backend.describe, query_id, offset=offset, limit=limit)
        check_owner(view, principal)
        return view

    @app.delete("/spanning-query/{query_id}")
    async def cancel(query_id: str, principal: Principal) -> dict[str, Any]:
        """Cancel the query: outstanding source queries stop, the status becomes `cancelled`."""
        view = await run_in_threadpool(backend.describe, query_id, offset=0, limit=0)
        check_owner(view, principal)
        return await run_in_threadpool(backend.cancel, query_id)


def _routes(app: FastAPI, runtime: SpanRuntime, settings: Settings) -> None:
    @app.get("/health")
    async def health() -> JSONResponse:
        """Liveness and readiness without authentication: 200 when PostgreSQL, RabbitMQ and Redis answer."""
        checks = await run_in_threadpool(_checks, app)
        healthy = all(value == "ok" for value in checks.values())
        body = {"status": "healthy" if healthy else "unhealthy", "service": "spanner-coordinator", "checks": checks}
        return JSONResponse(body, status_code=200 if healthy else 503)

    @app.get("/metrics", include_in_schema=False)
    async def metrics(request: Request) -> Response:
        """Prometheus metrics (shared.metrics): every distributed span, whoever finalised it, and the queue depths.
        `Authorization: Bearer <AXIOM_METRICS_TOKEN>`, or any credential the other routes take; 401 otherwise."""
        if not metrics_token_matches(request.headers, settings.metrics.token):
            require_principal(request)
        collectors = (SharedSpanMetrics.of_store(runtime.store),
                      QueueDepthCollector(app.state.celery.connection_for_write, ALL_QUEUES))
        body = await run_in_threadpool(render_metrics, collectors, local_spans=False)
        return Response(body, media_type=METRICS_CONTENT_TYPE)

    span_routes(app, DistributedSpans(runtime, app.state.async_redis), settings)


def _async_twin(client) -> AsyncRedis:
    """An asyncio client on the same Redis server and database as `client` (for pub/sub waits)."""
    kwargs = client.connection_pool.connection_kwargs
    same = {key: kwargs[key] for key in ("host", "port", "db", "username", "password", "ssl") if key in kwargs}
    return AsyncRedis(**same, decode_responses=True, socket_connect_timeout=3.0)


def check_owner(view: dict[str, Any], principal: CallerPrincipal) -> None:
    """RBAC: an admin sees every query; a `user` principal only the queries it submitted (others are 404)."""
    if not principal.allows(Role.ADMIN) and view.get("requested_by") != principal.name:
        raise SpanRequestError(404, f"no spanning query {view['query_id']!r}")


async def json_body(request: Request) -> Any:
    """The request's query keys: a JSON body of at most MAX_BODY_BYTES (empty: no keys); 413/422 otherwise."""
    body = await request.body()
    if len(body) > MAX_BODY_BYTES:
        raise HTTPException(413, f"body: at most {MAX_BODY_BYTES} bytes of query keys")
    if not body.strip():
        return {}
    try:
        return json.loads(body)
    except (json.JSONDecodeError, UnicodeDecodeError) as exc:
        raise HTTPException(422, f"body: invalid JSON ({exc})") from None


def _checks(app: FastAPI) -> dict[str, str]:
    runtime: SpanRuntime = app.state.runtime
    checks: dict[str, str] = {}
    for name, probe in (("db", lambda: _ping_db(runtime)), ("broker", lambda: _ping_broker(app.state.celery)),
                        ("redis", runtime.store.redis.ping)):
        try:
            probe()
            checks[name] = "ok"
        except Exception as exc:  # the details go to the log, not to unauthenticated callers (host names)
            checks[name] = "unavailable"
            log_event(logger, "health_check_failed", logging.WARNING, check=name,
                      error=f"{type(exc).__name__}: {exc}"[:300])
    return checks


def _ping_db(runtime: SpanRuntime) -> None:
    with runtime.session_factory() as session:
        session.execute(text("SELECT 1"))


def _ping_broker(celery_app) -> None:
    with celery_app.connection_for_write() as connection:
        connection.ensure_connection(max_retries=1, interval_start=0, timeout=2)


class _Sweeper:
    """A background thread running shared.distributed.intake.sweep every SWEEP_SECONDS (deadlines, re-plans) and
    purging expired results every PURGE_EVERY_SECONDS. Errors are logged, never fatal."""

    def __init__(self, runtime: SpanRuntime) -> None:
        self._runtime, self._stop = runtime, threading.Event()
        self._thread = threading.Thread(target=self._run, name="span-sweeper", daemon=True)
        self._next_purge = 0.0
        self.sweeps, self.failures = 0, 0

    def start(self) -> None:
        self._thread.start()

    def details(self) -> dict[str, float | int]:
        """What the coordinator's heartbeat reports (services/status)."""
        return {"sweeps": self.sweeps, "sweep_failures": self.failures, "sweep_seconds": SWEEP_SECONDS}

    def stop(self) -> None:
        self._stop.set()
        self._thread.join(timeout=5)

    def _run(self) -> None:
        while not self._stop.wait(SWEEP_SECONDS):
            purge = time.monotonic() >= self._next_purge
            try:
                sweep(self._runtime, purge=purge)
                self.sweeps += 1
                if purge:
                    self._next_purge = time.monotonic() + PURGE_EVERY_SECONDS
            except Exception as exc:
                self.failures += 1
                log_event(logger, "spanning_sweep_failed", logging.ERROR, error=f"{type(exc).__name__}: {exc}")
