"""The listener service: builds the spanning SCP from settings and runs it (`python -m services.listener`).

`Listener(settings)` wires the database, the span client (in-process, or through the distributed coordinator
path when RABBITMQ_URL and REDIS_URL are set: shared.distributed.client), the association gate, the retrieval
services and the handlers; `start()` binds AXIOM_SCP_HOST:AXIOM_SCP_PORT (0.0.0.0:11114) and serves in background
threads, `stop()` ends it for good. Tests and the embedded demo build one the same way, with their own settings.

Service management: `start_serving()` / `stop_serving()` open and close the port (open associations are aborted)
any number of times while the process, its database and its span client stay up; `heartbeat()` builds the
shared.service_registry loop that registers `listener:<AXIOM_INSTANCE_ID>` and applies the desired state and
restarts operators set through the API (POST /api/v1/spanner/services/stop, /start, /restart/{service_id}).
With AXIOM_SCP_PORT=0 each start binds a new free port (the heartbeat's details say which).
"""

from __future__ import annotations

import logging
import threading
from typing import Any, Callable

from services.listener.gate import AssociationGate
from services.listener.handlers import ScpHandlers
from services.listener.retrieve_handlers import RetrieveHandlers
from services.listener.retrieve_scp import RetrieveScp
from services.listener.server import build_ae, start_server
from shared.adapters.google_auth import google_healthcare_access
from shared.config import Settings
from shared.db.models import ServiceKind
from shared.db.session import make_engine, make_sessionmaker
from shared.distributed.client import span_client_for
from shared.logging import log_event
from shared.retrieval.inbox import Inbox
from shared.retrieval_services import RetrievalServices
from shared.service_registry import ServiceHeartbeat, process_identity

logger = logging.getLogger(__name__)
LISTENER_TYPES = ("spanning-scp",)


class Listener:
    """One spanning SCP on one port. Not started until `start()`."""

    def __init__(self, settings: Settings, *, session_factory: Callable | None = None,
                 span_client=None) -> None:
        if settings.scp.listener_type not in LISTENER_TYPES:
            raise ValueError(f"AXIOM_LISTENER_TYPE={settings.scp.listener_type!r}: expected one of "
                             f"{', '.join(LISTENER_TYPES)}")
        self.settings = settings
        self._engine = None
        if session_factory is None:
            self._engine = make_engine(settings.db.url)
            session_factory = make_sessionmaker(self._engine)
        self.session_factory = session_factory
        self._own_client = span_client is None
        self.client = span_client or span_client_for(settings, session_factory)
        scp = settings.scp
        self.gate = AssociationGate(session_factory, storage_ae_title=scp.ae_title)
        self.inbox = Inbox()
        self.handlers = ScpHandlers(gate=self.gate, span_client=self.client, session_factory=session_factory,
                                    inbox=self.inbox)
        self.retrievals = RetrievalServices(
            span_client=self.client, calling_ae_title=scp.calling_ae_title, self_ae_title=scp.ae_title,
            inbox=self.inbox, spool_dir=scp.spool_dir, spool_max_bytes=int(scp.spool_max_mb * 2**20),
            google=google_healthcare_access(settings))
        retrieve = RetrieveHandlers(gate=self.gate, plans=self.handlers.plan, services=self.retrievals,
                                    session_factory=session_factory)
        self.retrieve_scp = RetrieveScp(move=retrieve.move, get=retrieve.get)
        self.ae = build_ae(settings.scp.ae_title, maximum_associations=settings.scp.max_associations)
        self._server = None
        self._serving_lock = threading.Lock()

    @property
    def port(self) -> int:
        """The bound port (useful with AXIOM_SCP_PORT=0)."""
        if self._server is None:
            raise RuntimeError("the listener is not started")
        return self._server.server_address[1]

    @property
    def serving(self) -> bool:
        """True while the port is open."""
        return self._server is not None

    def start(self) -> "Listener":
        """Start serving (see `start_serving`); returns the listener."""
        self.start_serving()
        return self

    def start_serving(self) -> None:
        """Bind the port and serve in background threads; nothing when already serving. OSError when the port
        cannot be bound."""
        scp = self.settings.scp
        with self._serving_lock:
            if self._server is not None:
                return
            self._server = start_server(self.ae, (scp.host, scp.port), gate=self.gate,
                                        retrieve_server=self.retrieve_scp.serve, find_handler=self.handlers.on_find,
                                        evt_handlers=self.handlers.bindings())
        log_event(logger, "scp_listener_started", host=scp.host, port=self.port,
                  instance_id=self.settings.instance_id, storage_ae_title=scp.ae_title,
                  served_ae_titles=self.gate.served_ae_titles())

    def stop_serving(self) -> None:
        """Close the port and abort the open associations; the listener can start serving again."""
        with self._serving_lock:
            if self._server is None:
                return
            self.ae.shutdown()
            self._server = None
        log_event(logger, "scp_listener_stopped", instance_id=self.settings.instance_id)

    def stop(self) -> None:
        """Stop serving for good: also release the span client and the database."""
        self.stop_serving()
        if self._own_client:
            self.client.close()
        if self._engine is not None:
            self._engine.dispose()

    def status_details(self) -> dict[str, Any]:
        """What the heartbeat reports: bound port (None when stopped), AE titles, open associations."""
        server = self._server
        return {"host": self.settings.scp.host, "port": server.server_address[1] if server is not None else None,
                "configured_port": self.settings.scp.port, "storage_ae_title": self.settings.scp.ae_title,
                "served_ae_titles": self.gate.served_ae_titles(),
                "active_associations": len(self.ae.active_associations)}

    def heartbeat(self, *, interval: float | None = None) -> ServiceHeartbeat:
        """The (unstarted) registration + heartbeat + reconcile loop of `listener:<instance_id>` for this listener,
        every `interval` seconds (default AXIOM_HEARTBEAT_SECONDS)."""
        instance_id = self.settings.instance_id
        return ServiceHeartbeat(self.session_factory, process_identity(ServiceKind.LISTENER, instance_id,
                                                                       instance_id=instance_id),
                                interval=interval or self.settings.heartbeat_seconds, details=self.status_details,
                                target=self)

    def __enter__(self) -> "Listener":
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()
