"""Reachability probes of configured sources: a C-ECHO to DIMSE sources, a one-result QIDO-RS query to DICOMweb ones.

- DIMSE (kind "dimse"): an association with the source's own calling AE title, timeouts and max PDU
  (request_association, so refusals are worded as for queries), then C-ECHO (Verification SOP Class, PS3.7 9.1.5,
  PS3.4 Annex A); reachable when the status is Success (0x0000).
- DICOMweb (kinds "dicomweb", "google_healthcare"): `GET {qido root}/studies?limit=1` (PS3.18 10.6) through
  QidoQueryPort, with the source's authentication (a google_healthcare source's access token comes from `google`,
  default shared.adapters.google_auth.google_healthcare_access(): no credentials is an unreachable result saying
  why); reachable on any 2xx answer (including 204, an empty archive).

`probe_sources` runs every probe in parallel and returns one ProbeResult per source, in the order given; latency is
the whole round trip (connect + association/request + answer). A probe still running at the deadline is cancelled
and reported unreachable. Probes never raise: every failure is a result with `error`.
"""

from __future__ import annotations

import dataclasses
import time
from collections.abc import Sequence
from concurrent.futures import ThreadPoolExecutor, wait
from dataclasses import dataclass

from pydicom import Dataset
from pynetdicom import AE
from pynetdicom.association import Association
from pynetdicom.sop_class import Verification

from shared.adapters.dicomweb import GoogleHealthcareAccess, QidoQueryPort
from shared.adapters.dimse_association import (
    AssociationCancelled,
    abort_and_wake,
    dimse_connection,
    request_association,
)
from shared.adapters.google_auth import google_healthcare_access
from shared.dicom.levels import QueryLevel
from shared.spanning.model import SourceSpec, SpanRequest
from shared.spanning.ports import CancelToken, SourceError

DICOMWEB_KINDS = frozenset({"dicomweb", "google_healthcare"})
DEFAULT_DEADLINE_SECONDS = 30.0


@dataclass(frozen=True)
class ProbeResult:
    """The outcome of probing one source: reachable or not, the round-trip latency, and why not."""

    source: str
    kind: str
    reachable: bool
    latency_ms: float | None
    error: str | None = None


def echo_dimse(source: SourceSpec, cancel: CancelToken | None = None) -> ProbeResult:
    """C-ECHO the DIMSE source (PS3.7 9.1.5) with its calling AE title and timeouts; never raises."""
    cancel = cancel or CancelToken()
    started = time.monotonic()
    try:
        conn = dimse_connection(source)
        ae = AE(ae_title=conn.calling_ae_title)
        ae.acse_timeout, ae.dimse_timeout = conn.acse_timeout, conn.dimse_timeout
        ae.network_timeout, ae.connection_timeout = conn.network_timeout, conn.connect_timeout
        ae.add_requested_context(Verification)
        assoc = request_association(
            lambda handlers: ae.associate(conn.host, conn.port, ae_title=conn.ae_title, max_pdu=conn.max_pdu,
                                          evt_handlers=handlers), source, conn, cancel)
        error = _echo(assoc, cancel)
    except AssociationCancelled:
        error = "cancelled: no answer before the probe deadline"
    except SourceError as exc:
        error = str(exc)
    except Exception as exc:  # noqa: BLE001 - a probe reports, it does not raise
        error = f"{type(exc).__name__}: {exc}"
    return _result(source, started, error)


def _echo(assoc: Association, cancel: CancelToken) -> str | None:
    """Send C-ECHO on an established association and release it; the error text, or None on Success."""
    unregister = cancel.on_cancel(lambda: abort_and_wake(assoc))
    try:
        status: Dataset = assoc.send_c_echo()
    finally:
        unregister()
        if assoc.is_established:
            assoc.release()
    if cancel.cancelled:
        return "cancelled: no C-ECHO response before the probe deadline"
    if "Status" not in status:
        return "no C-ECHO response (association aborted or DIMSE timeout)"
    if int(status.Status) != 0x0000:
        return f"C-ECHO answered with status 0x{int(status.Status):04X}"
    return None


def query_dicomweb(source: SourceSpec, cancel: CancelToken | None = None,
                   port: QidoQueryPort | None = None, google: GoogleHealthcareAccess | None = None) -> ProbeResult:
    """QIDO-RS `GET studies?limit=1` at the DICOMweb source (PS3.18 10.6), on `port` or a port of its own with
    `google` (default: the process's google_healthcare_access()); never raises."""
    cancel = cancel or CancelToken()
    started = time.monotonic()
    owned = port is None
    port = port or QidoQueryPort(google=google or google_healthcare_access())
    request = SpanRequest(level=QueryLevel.STUDY, identifier=Dataset(), query_type="PROBE")
    try:
        stream = port.find(request, dataclasses.replace(source, max_results=0), cancel)  # limit=max_results+1
        for _match in stream:
            pass
        error = "cancelled: no answer before the probe deadline" if cancel.cancelled else None
    except SourceError as exc:
        error = str(exc)
    except Exception as exc:  # noqa: BLE001 - as above
        error = f"{type(exc).__name__}: {exc}"
    finally:
        if owned:
            port.close()
    return _result(source, started, error)


def probe_source(source: SourceSpec, cancel: CancelToken | None = None,
                 google: GoogleHealthcareAccess | None = None) -> ProbeResult:
    """C-ECHO for a DIMSE source, a QIDO-RS probe for a DICOMweb one (see the module doc)."""
    if source.kind == "dimse":
        return echo_dimse(source, cancel)
    if source.kind in DICOMWEB_KINDS:
        return query_dicomweb(source, cancel, google=google)
    return ProbeResult(source.name, source.kind, False, None, f"cannot probe a source of kind {source.kind!r}")


def probe_sources(sources: Sequence[SourceSpec], *, deadline_seconds: float = DEFAULT_DEADLINE_SECONDS,
                  google: GoogleHealthcareAccess | None = None) -> list[ProbeResult]:
    """Probe every source in parallel (one thread each); results in the order of `sources`. `google`: Google Cloud
    Healthcare access for google_healthcare sources (default: the process's).

    A probe not finished after `deadline_seconds` is cancelled and reported unreachable with that reason.
    """
    if not sources:
        return []
    tokens = [CancelToken() for _ in sources]
    pool = ThreadPoolExecutor(max_workers=len(sources), thread_name_prefix="axiom-probe")
    try:
        futures = [pool.submit(probe_source, source, token, google) for source, token in zip(sources, tokens)]
        wait(futures, timeout=deadline_seconds)
        results = []
        for source, token, future in zip(sources, tokens, futures):
            if future.done():
                results.append(future.result())
                continue
            token.cancel()
            results.append(ProbeResult(source.name, source.kind, False, None,
                                       f"no answer within the probe deadline of {deadline_seconds:g} s"))
        return results
    finally:
        pool.shutdown(wait=False, cancel_futures=True)


def _result(source: SourceSpec, started: float, error: str | None) -> ProbeResult:
    latency = round((time.monotonic() - started) * 1000.0, 1)
    return ProbeResult(source=source.name, kind=source.kind, reachable=error is None,
                       latency_ms=latency, error=error)
