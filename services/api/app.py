"""The main API's FastAPI app: `create_app(settings)` builds everything from settings; nothing at import.

SECRET_KEY rule: with DATABASE_URL set (a shared, persistent deployment) SECRET_KEY must be 32+ characters, else
ValueError; a SECRET_KEY that is set must be 32+ characters everywhere. In the embedded mode (no DATABASE_URL)
without SECRET_KEY a random per-process key is drawn and a warning logged: tokens do not survive a restart, and
another process (the coordinator) cannot verify them.

Routes: /health, /api/v1/openapi.json and /api/v1/docs (authenticated), /api/v1/auth/token, /api/v1/auth/google,
/api/v1/auth/me, the configuration routes under /api/v1/config (routes/config*.py), QIDO-RS and WADO-RS spanning
under /api/v1/spanner/qido and /api/v1/spanner/wado (routes/qido.py, routes/wado.py), and under
/api/v1/spanner/services the query log (routes/logs.py), service status and control (routes/services.py) and the
tracked C-MOVE jobs (routes/moves.py).
CORS (AXIOM_CORS_ORIGINS) is off unless origins are configured.
"""

from __future__ import annotations

import logging
import secrets
from contextlib import asynccontextmanager

from fastapi import FastAPI
from fastapi.exceptions import RequestValidationError
from fastapi.middleware.cors import CORSMiddleware

from services.api.heartbeat import heartbeat_lifespan
from services.api.routes import auth, config, config_sources, config_spanner, logs, meta, metrics, moves, qido, wado
from services.api.routes import services as service_routes
from services.api.validation_errors import validation_error_response
from shared.config import Settings
from shared.db.migrations import head_revision
from shared.db.session import make_engine, make_sessionmaker
from shared.logging import log_event
from shared.security.authenticator import Authenticator
from shared.security.google_id import build_google_verifier

logger = logging.getLogger(__name__)
MIN_SECRET_LENGTH = 32
CORS_HEADERS = ["Authorization", "X-API-Key", "Content-Type", "Accept"]
CORS_EXPOSED = ["Warning", "Location", "WWW-Authenticate", "Content-Type"]


def resolve_secret_key(settings: Settings) -> str:
    """SECRET_KEY, or a random per-process key in the embedded mode; ValueError when the rule above is broken."""
    secret = settings.api.secret_key.get_secret_value() if settings.api.secret_key else ""
    if secret:
        if len(secret) < MIN_SECRET_LENGTH:
            raise ValueError(f"SECRET_KEY must be at least {MIN_SECRET_LENGTH} random characters "
                             "(e.g. `openssl rand -hex 32`)")
        return secret
    if not settings.db.embedded:
        raise ValueError("SECRET_KEY must be set to at least 32 random characters when DATABASE_URL is set "
                         "(e.g. `openssl rand -hex 32`)")
    log_event(logger, "secret_key_generated", logging.WARNING,
              detail="no SECRET_KEY in the embedded mode: a random per-process key signs tokens; they do not "
                     "survive a restart")
    return secrets.token_urlsafe(48)


def create_app(settings: Settings, *, session_factory=None) -> FastAPI:
    """The API app on `settings` (a ready `session_factory` may be given, e.g. by tests). ValueError for a missing
    or short SECRET_KEY (see the module doc)."""
    secret = resolve_secret_key(settings)
    engine = None
    if session_factory is None:
        engine = make_engine(settings.db.url)
        session_factory = make_sessionmaker(engine)

    @asynccontextmanager
    async def lifespan(started: FastAPI):
        try:
            async with heartbeat_lifespan(started):  # registers `api:<AXIOM_INSTANCE_ID>` (services.api.heartbeat)
                yield
        finally:
            if engine is not None:
                engine.dispose()

    # The schema and docs are served by routes.meta to authenticated callers only.
    app = FastAPI(title="Axiom API", version="1", lifespan=lifespan, docs_url=None, redoc_url=None, openapi_url=None)
    app.state.settings, app.state.secret_key, app.state.session_factory = settings, secret, session_factory
    app.state.authenticator = Authenticator(session_factory, secret)
    app.state.google_verifier = build_google_verifier(settings.api)  # None: Google login off
    app.add_exception_handler(RequestValidationError, validation_error_response)  # 422s that always serialize
    app.state.schema_head = head_revision()
    origins = settings.api.cors_origin_list
    if origins:
        app.add_middleware(CORSMiddleware, allow_origins=origins, allow_credentials=False,
                           allow_methods=["GET", "POST", "PUT", "PATCH", "DELETE", "OPTIONS"],
                           allow_headers=CORS_HEADERS, expose_headers=CORS_EXPOSED, max_age=600)
    # moves after qido and wado: router lifespans nest, so the move-job runner stops before the span client and
    # the API's storage AE its jobs may use
    for module in (meta, auth, config, config_sources, config_spanner, qido, wado, logs, moves, service_routes):
        app.include_router(module.router)
    metrics.install(app)  # GET /metrics (AXIOM_METRICS_TOKEN or any credential) and the DICOMweb request counter
    return app
