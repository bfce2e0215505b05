"""GET /metrics: the API's Prometheus metrics (shared.metrics), and the QIDO-RS/WADO-RS request counter.

Access: `Authorization: Bearer <AXIOM_METRICS_TOKEN>` (what a Prometheus scraper sends; compared in constant time),
or any credential the other routes take (API key, access token). Without either: 401. The route is left out of the
OpenAPI schema (it is not part of the API a client programs against).

What it shows: the spans this process ran (`axiom_spans_total`, latencies, per-source failures), DICOMweb request
counts by service and status code, log shipping counters, process metrics; with RABBITMQ_URL set, the depths of the
distributed mode's queues. The embedded mode has no queue: its span executor's backlog is not exported.
"""

from __future__ import annotations

from typing import Any

from fastapi import APIRouter, Depends, FastAPI, Request, Response
from fastapi.concurrency import run_in_threadpool
from kombu import Connection

from services.api.deps import get_principal
from shared.messaging.contracts import ALL_QUEUES
from shared.metrics import (
    CONTENT_TYPE, QueueDepthCollector, metrics_token_matches, record_dicomweb_request, render_metrics,
)

DICOMWEB_PREFIXES = (("/api/v1/spanner/qido/", "qido-rs"), ("/api/v1/spanner/wado/", "wado-rs"))


def metrics_access(request: Request) -> None:
    """Let the scraper's AXIOM_METRICS_TOKEN through; anyone else must authenticate as on any route (401)."""
    if not metrics_token_matches(request.headers, request.app.state.settings.metrics.token):
        get_principal(request, None, None)


router = APIRouter(dependencies=[Depends(metrics_access)])


@router.get("/metrics", include_in_schema=False)
async def metrics(request: Request) -> Response:
    """The Prometheus text exposition (format 0.0.4)."""
    collectors = getattr(request.app.state, "metrics_collectors", ())
    body = await run_in_threadpool(render_metrics, collectors)
    return Response(body, media_type=CONTENT_TYPE)


class DicomwebRequestCounter:
    """ASGI middleware counting answered QIDO-RS/WADO-RS requests by service and status code (no body access)."""

    def __init__(self, app: Any) -> None:
        self.app = app

    async def __call__(self, scope: dict, receive: Any, send: Any) -> None:
        path = scope.get("path", "") if scope["type"] == "http" else ""
        service = next((name for prefix, name in DICOMWEB_PREFIXES if path.startswith(prefix)), None)
        if service is None:
            await self.app(scope, receive, send)
            return

        async def counting_send(message: dict) -> None:
            if message["type"] == "http.response.start":
                record_dicomweb_request(service, message["status"])
            await send(message)

        await self.app(scope, receive, counting_send)


def install(app: FastAPI) -> None:
    """Add /metrics and the DICOMweb request counter to the API app; with RABBITMQ_URL, the queue depths too."""
    app.include_router(router)
    app.add_middleware(DicomwebRequestCounter)
    url = app.state.settings.distributed.rabbitmq_url
    if url:
        app.state.metrics_collectors = (QueueDepthCollector(lambda: _broker_connection(url), ALL_QUEUES),)


def _broker_connection(url: str) -> Connection:
    return Connection(url, connect_timeout=2)
