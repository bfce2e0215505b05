"""One RetrievePort over every source kind: C-MOVE / C-GET for "dimse" sources (DimseRetrievePort), WADO-RS for
"dicomweb" and "google_healthcare" ones (WadoRetrievePort) — as shared/adapters/query_ports.py does for queries.
The retrieval service (shared/retrieval) sees one port and never asks what a source is.
"""

from __future__ import annotations

from types import TracebackType

from shared.adapters.dicomweb_http import GoogleHealthcareAccess
from shared.adapters.dicomweb_retrieve import WadoRetrievePort
from shared.adapters.dimse_retrieve import DimseRetrievePort
from shared.adapters.google_auth import google_healthcare_access
from shared.retrieval.model import RetrieveRequest
from shared.retrieval.ports import InstanceSink, RetrievePort, RetrieveStream
from shared.spanning.model import SourceSpec
from shared.spanning.ports import CancelToken, QueryFailedError

DICOMWEB_KINDS = ("dicomweb", "google_healthcare")


class RoutingRetrievePort:
    """A RetrievePort that hands each call to the port of the source's kind (`source.kind`, the same value as
    `source.connection.kind`). An unknown kind is a QueryFailedError naming it. Safe to share between threads.

    `google`: Google Cloud Healthcare's API root and tokens for the WADO-RS port (default: google_healthcare_access()
    of the process's settings; loads no credentials by itself)."""

    def __init__(self, *, dimse: RetrievePort | None = None, dicomweb: RetrievePort | None = None,
                 google: GoogleHealthcareAccess | None = None) -> None:
        self._dimse = dimse or DimseRetrievePort()
        self._dicomweb = dicomweb or WadoRetrievePort(google=google or google_healthcare_access())

    def port_for(self, source: SourceSpec) -> RetrievePort:
        """The port serving `source`'s kind."""
        kind = getattr(source.connection, "kind", None) or source.kind
        if kind == "dimse":
            return self._dimse
        if kind in DICOMWEB_KINDS:
            return self._dicomweb
        raise QueryFailedError(f"{source.name}: cannot retrieve from a source of kind {kind!r}")

    def move(self, source: SourceSpec, request: RetrieveRequest, destination_ae: str,
             cancel: CancelToken) -> RetrieveStream:
        """C-MOVE through the source's port (a DICOMweb source raises QueryFailedError: it cannot C-MOVE)."""
        return self.port_for(source).move(source, request, destination_ae, cancel)

    def get(self, source: SourceSpec, request: RetrieveRequest, sink: InstanceSink,
            cancel: CancelToken) -> RetrieveStream:
        """C-GET (DIMSE) or WADO-RS (DICOMweb) through the source's port."""
        return self.port_for(source).get(source, request, sink, cancel)

    def close(self) -> None:
        """Close the ports that hold connections (the WADO-RS HTTP clients)."""
        for port in (self._dimse, self._dicomweb):
            close = getattr(port, "close", None)
            if close is not None:
                close()

    def __enter__(self) -> "RoutingRetrievePort":
        return self

    def __exit__(self, exc_type: type | None, exc: BaseException | None, tb: TracebackType | None) -> None:
        self.close()
