"""The API process in `service_instances`: `api:<AXIOM_INSTANCE_ID>` registered by the app's lifespan through the
shared heartbeat loop (shared.service_registry.ServiceHeartbeat, every AXIOM_HEARTBEAT_SECONDS), so
`GET /api/v1/spanner/services/status` lists the API beside the listeners, coordinators and workers.

It only reports (the API refuses to start/stop/restart it: 409). Its details: where it listens (AXIOM_API_HOST /
AXIOM_API_PORT), the move jobs this process has queued or running, and its storage AE (AE title and bound port;
None when AXIOM_API_STORE_PORT is unset). Details are read at each beat: the move-job runner and the storage AE
start after the first beat (router lifespans nest inside the app's), so the first report may show them as None.
A nested run of the same app (a second test client) leaves the heartbeat to the outer one; at shutdown the last
heartbeat records the API `stopped`.
"""

from __future__ import annotations

from contextlib import asynccontextmanager
from typing import Any

from fastapi import FastAPI
from fastapi.concurrency import run_in_threadpool

from shared.db.models import ServiceKind
from shared.service_registry import ServiceHeartbeat, process_identity


def api_status_details(app: FastAPI) -> dict[str, Any]:
    """What the API's heartbeat reports (see the module doc)."""
    state, api = app.state, app.state.settings.api
    runner = getattr(state, "move_jobs", None)
    store = getattr(state, "store_scp", None)
    try:
        store_port = store.port if store is not None else None
    except RuntimeError:  # stopping meanwhile
        store_port = None
    return {"host": api.host, "port": api.port,
            "open_move_jobs": len(runner.running()) if runner is not None else None,
            "store_ae_title": store.ae_title if store is not None else None, "store_port": store_port}


def api_heartbeat(app: FastAPI) -> ServiceHeartbeat:
    """The (unstarted) registration + heartbeat loop of `api:<instance_id>` for `app`."""
    settings = app.state.settings
    identity = process_identity(ServiceKind.API, settings.instance_id, instance_id=settings.instance_id)
    return ServiceHeartbeat(app.state.session_factory, identity, interval=settings.heartbeat_seconds,
                            details=lambda: api_status_details(app))


@asynccontextmanager
async def heartbeat_lifespan(app: FastAPI):
    """Register the API and beat for the app's life; record it stopped at the end."""
    if getattr(app.state, "heartbeat", None) is not None:  # a nested run: the outer one beats
        yield
        return
    heartbeat = app.state.heartbeat = api_heartbeat(app)
    await run_in_threadpool(heartbeat.start)
    try:
        yield
    finally:
        await run_in_threadpool(heartbeat.stop)
        app.state.heartbeat = None
