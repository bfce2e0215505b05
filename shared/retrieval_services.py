"""RetrievalServices: the retrieval service of each spanner config, wired to the retrieve adapters (C-MOVE/C-GET for
DIMSE sources, WADO-RS for DICOMweb ones: shared.adapters.retrieve_ports), a C-STORE port and a span client.

The one place that builds `shared.retrieval.service.RetrievalService` for real use: the spanning SCP's C-MOVE and
C-GET (services/listener) and the API's tracked move jobs call `for_plan(plan)`. A config's service is kept while
its sources and policy stay the same, so concurrent retrievals share its locate cache ("recent finds may be
reused") and its spool budget; it is rebuilt when the config changes. Locates are spans run by the given span
client (embedded or distributed), so they are written to the query log like any other span: with the retrieval's
Origin (RetrieveRequest.origin) as requester — the calling AE title and address, or the API user and address —
and its operation as query type (C-MOVE, C-GET, WADO); a retrieval without an origin as INTERNAL_REQUESTER.
"""

from __future__ import annotations

import tempfile
import threading
from dataclasses import dataclass
from pathlib import Path

from shared.adapters.dicomweb_http import GoogleHealthcareAccess
from shared.adapters.dimse_store import DimseStorePort
from shared.adapters.retrieve_ports import RoutingRetrievePort
from shared.db.repo.spanner_configs import SpanPlan
from shared.retrieval.inbox import Inbox
from shared.retrieval.model import Origin
from shared.retrieval.service import RetrievalService
from shared.spanning.model import SpanRequest, SpanResult

LOCATE_CACHE_SECONDS = 30.0
INTERNAL_REQUESTER = {"user": "retrieval-locate"}  # a retrieval nobody in particular asked for


@dataclass
class _Built:
    fingerprint: tuple
    service: RetrievalService


class RetrievalServices:
    """One RetrievalService per spanner config id (thread-safe). `google`: Google Cloud Healthcare access for WADO-RS
    (default: the process's, shared.adapters.google_auth.google_healthcare_access)."""

    def __init__(self, *, span_client, calling_ae_title: str, self_ae_title: str | None = None,
                 inbox: Inbox | None = None, spool_dir: Path | None = None, spool_max_bytes: int = 512 * 2**20,
                 locate_cache_seconds: float = LOCATE_CACHE_SECONDS,
                 google: GoogleHealthcareAccess | None = None) -> None:
        self._client = span_client
        self._self_ae, self.inbox = self_ae_title, inbox
        self._spool_dir = Path(spool_dir) if spool_dir else Path(tempfile.gettempdir()) / "axiom-spool"
        self._spool_max, self._cache_seconds = spool_max_bytes, locate_cache_seconds
        # Public: callers reach a DICOMweb source's WADO-RS metadata through it (port_for(source).metadata).
        self.retrieve_port = RoutingRetrievePort(google=google)
        self._store_port = DimseStorePort(ae_title=calling_ae_title)
        self._lock = threading.Lock()
        self._services: dict[int, _Built] = {}

    def for_plan(self, plan: SpanPlan) -> RetrievalService:
        """The service of `plan`'s config (built on first use, rebuilt when its sources or policy changed)."""
        fingerprint = (tuple(plan.sources), plan.policy)
        with self._lock:
            built = self._services.get(plan.config.id)
            if built is None or built.fingerprint != fingerprint:
                built = _Built(fingerprint, self._build(plan))
                self._services[plan.config.id] = built
            return built.service

    def _build(self, plan: SpanPlan) -> RetrievalService:
        config_id, sources, policy = plan.config.id, list(plan.sources), plan.policy

        def locate(request: SpanRequest, origin: Origin | None) -> SpanResult:
            requester = origin.requester if origin is not None else dict(INTERNAL_REQUESTER)
            return self._client.run(request, sources, policy, config_id=config_id, requester=requester)

        return RetrievalService(
            locate=locate, sources=sources, retrieve_port=self.retrieve_port, store_port=self._store_port,
            spool_dir=self._spool_dir / f"config-{config_id}", spool_max_bytes=self._spool_max,
            locate_cache_ttl_seconds=self._cache_seconds, self_ae_title=self._self_ae, inbox=self.inbox)
