"""The API's retrieval services (shared.retrieval_services.RetrievalServices): one per app, shared by WADO-RS and the
tracked C-MOVE jobs, built on first use from the app's span client (so locates are written to the query log like
any span). Routes get it with `RetrievalsDep`.

With AXIOM_API_STORE_PORT set, `retrievals_lifespan` runs the API's own storage AE (services.api.store_scp,
AXIOM_API_STORE_AE_TITLE, default AXIOM_API) for the app's life and the services use it as the C-MOVE destination
for DIMSE sources without C-GET (C-MOVE-to-self, PS3.4 C.4.2.2); those sources must know that AE title (host and
port) as a move destination. Without it such sources are skipped as holders (WADO-RS logs
`wado_sources_skipped` naming them).
"""

from __future__ import annotations

import threading
from contextlib import asynccontextmanager
from typing import Annotated

from fastapi import Depends, FastAPI, HTTPException, Request, status
from fastapi.concurrency import run_in_threadpool

from services.api.store_scp import ApiStoreScp
from shared.adapters.google_auth import google_healthcare_access
from shared.retrieval.inbox import Inbox
from shared.retrieval_services import RetrievalServices

_lock = threading.Lock()


@asynccontextmanager
async def retrievals_lifespan(app: FastAPI):
    """Start the API's storage AE when AXIOM_API_STORE_PORT is set; at shutdown stop it and close the retrieval
    services' connections (the WADO-RS HTTP clients). A nested run (a second test client on the same app) leaves
    them to the outer one."""
    state = app.state
    if getattr(state, "retrievals_running", False):
        yield
        return
    state.retrievals_running = True
    api, scp = state.settings.api, None
    try:
        if api.store_port is not None:
            scp = ApiStoreScp(ae_title=api.store_ae_title, host=api.host, port=api.store_port,
                              session_factory=state.session_factory, inbox=Inbox())
            await run_in_threadpool(scp.start)
            state.store_scp = scp
        yield
    finally:
        services, state.retrievals = getattr(state, "retrievals", None), None
        if services is not None:
            await run_in_threadpool(services.retrieve_port.close)
        if scp is not None:
            state.store_scp = None
            await run_in_threadpool(scp.stop)
        state.retrievals_running = False


def get_retrievals(request: Request) -> RetrievalServices:
    """The app's RetrievalServices (created on first use); 503 while the app's span client is not running."""
    state = request.app.state
    services = getattr(state, "retrievals", None)
    if services is not None:
        return services
    with _lock:
        services = getattr(state, "retrievals", None)
        if services is None:
            client = getattr(state, "span_client", None)
            if client is None:
                raise HTTPException(status.HTTP_503_SERVICE_UNAVAILABLE,
                                    "the span client is not running (app not started)")
            scp, store = state.settings.scp, getattr(state, "store_scp", None)
            services = state.retrievals = RetrievalServices(
                span_client=client, calling_ae_title=scp.calling_ae_title,
                self_ae_title=store.ae_title if store else None, inbox=store.inbox if store else None,
                spool_dir=scp.spool_dir, spool_max_bytes=int(scp.spool_max_mb * 2**20),
                google=google_healthcare_access(state.settings))
    return services


RetrievalsDep = Annotated[RetrievalServices, Depends(get_retrievals)]
