"""The QueryPorts of one span, keyed by source kind, closed together when the span ends.

    with build_query_ports() as ports:
        result = run_span(request, sources, ports=ports, ...)

Ports are built lazily: a span over DICOMweb sources only never creates a pynetdicom AE.
"""

from __future__ import annotations

import logging
import threading
from types import TracebackType
from typing import Callable, Iterator, Mapping

from shared.adapters.dicomweb import GoogleHealthcareAccess, QidoQueryPort
from shared.adapters.dimse_scu import DimseQueryPort
from shared.adapters.google_auth import google_healthcare_access
from shared.spanning.ports import QueryPort

logger = logging.getLogger(__name__)


class QueryPorts(Mapping[str, QueryPort]):
    """A read-only mapping kind -> QueryPort that builds each port on first access and closes them all."""

    def __init__(self, factories: Mapping[str, Callable[[], QueryPort]]) -> None:
        self._factories = dict(factories)
        self._lock = threading.Lock()
        self._ports: dict[str, QueryPort] = {}
        self._shared: dict[Callable[[], QueryPort], QueryPort] = {}

    def __getitem__(self, kind: str) -> QueryPort:
        with self._lock:  # concurrent spans may share one QueryPorts
            if kind not in self._ports:
                factory = self._factories[kind]  # KeyError: unknown kind, as a Mapping should
                port = self._shared.get(factory)
                if port is None:
                    port = self._shared[factory] = factory()
                self._ports[kind] = port
            return self._ports[kind]

    def __iter__(self) -> Iterator[str]:
        return iter(self._factories)

    def __len__(self) -> int:
        return len(self._factories)

    def close(self) -> None:
        """Close every port built so far (each once, even when it serves several kinds)."""
        with self._lock:
            ports, self._ports, self._shared = list(self._shared.values()), {}, {}
        for port in ports:
            try:
                port.close()  # type: ignore[attr-defined]
            except Exception:
                logger.exception("closing %s failed", type(port).__name__)

    def __enter__(self) -> "QueryPorts":
        return self

    def __exit__(self, exc_type: type | None, exc: BaseException | None, tb: TracebackType | None) -> None:
        self.close()


def build_query_ports(*, calling_ae_title: str = "AXIOM", google: GoogleHealthcareAccess | None = None,
                      cancel_grace_seconds: float = 1.0) -> QueryPorts:
    """QueryPorts for "dimse" (C-FIND SCU), "dicomweb" and "google_healthcare" (one QIDO port).

    Long-lived owners (the span client) keep one for their life, so DIMSE associations and HTTP connections are
    reused across spans; a one-off caller can use it for a single span and close it.

    `calling_ae_title` is the default for DIMSE connections without their own; `google` gives Google Cloud
    Healthcare sources their API root and bearer tokens (default: shared.adapters.google_auth.google_healthcare_access
    of the process's settings, taken when the DICOMweb port is first built; it loads no credentials by itself).
    """

    def dimse() -> QueryPort:
        return DimseQueryPort(ae_title=calling_ae_title, cancel_grace_seconds=cancel_grace_seconds)

    def qido() -> QueryPort:
        return QidoQueryPort(google=google or google_healthcare_access())

    return QueryPorts({"dimse": dimse, "dicomweb": qido, "google_healthcare": qido})
