"""What the DICOMweb adapters (QIDO-RS query, WADO-RS retrieve; PS3.18) share on httpx: the source's
authentication headers, resource URLs under the service's base URL and prefix, credential-free URLs for messages and
logs, HTTP status -> SourceError, pooled clients per TLS-verify flag, and waking a blocked read on cancel.

Redirects are never followed: a custom auth header must not travel to another host.
"""

from __future__ import annotations

import base64
import socket
import threading
from dataclasses import dataclass
from typing import Callable

import httpx

from shared.connections import GOOGLE_HEALTHCARE_URL, DicomwebConnection, GoogleHealthcareConnection
from shared.spanning.model import SourceSpec
from shared.spanning.ports import QueryFailedError, SourceError, TransportError

TokenProvider = Callable[[], str]
DicomwebConnections = DicomwebConnection | GoogleHealthcareConnection


@dataclass(frozen=True)
class GoogleHealthcareAccess:
    """How the DICOMweb adapters reach Google Cloud Healthcare stores: `token_provider` returns an OAuth 2.0 access
    token (shared.adapters.google_auth.GoogleTokenProvider; raises SourceError with the reason when it cannot), and
    `api_root` is the API root the stores' DICOMweb paths are built under (AXIOM_GOOGLE_HEALTHCARE_URL). No Google
    library is needed here."""

    token_provider: TokenProvider
    api_root: str = GOOGLE_HEALTHCARE_URL


def dicomweb_connection(source: SourceSpec) -> DicomwebConnections:
    """The source's DICOMweb connection; QueryFailedError when the source is not a DICOMweb one."""
    conn = source.connection
    if not isinstance(conn, (DicomwebConnection, GoogleHealthcareConnection)):
        raise QueryFailedError(f"{source.name}: a DICOMweb source needs a DicomwebConnection, got "
                               f"{type(conn).__name__}")
    return conn


def auth_headers(source: SourceSpec, google: GoogleHealthcareAccess | None) -> dict[str, str]:
    """The Authorization (or API-key) header for `source`: its DicomwebAuth, or for Google Cloud Healthcare a bearer
    token from `google` (RFC 6750 2.1). Without `google`, or when no token can be had, the source's error names it
    and the reason (the provider's SourceError kind is kept: a token endpoint that is down is worth a retry)."""
    conn = dicomweb_connection(source)
    if isinstance(conn, GoogleHealthcareConnection):
        if google is None:
            raise QueryFailedError(f"{source.name}: Google Cloud Healthcare needs a token provider (no Google "
                                   "credentials are configured)")
        try:
            token = google.token_provider()
        except SourceError as exc:
            raise type(exc)(f"{source.name}: no Google access token: {exc}") from None
        return {"Authorization": f"Bearer {token}"}
    auth = conn.auth
    if auth.type == "basic":
        raw = f"{auth.username}:{auth.password}".encode("utf-8")
        return {"Authorization": "Basic " + base64.b64encode(raw).decode("ascii")}
    if auth.type == "bearer":
        return {"Authorization": f"Bearer {auth.token}"}
    if auth.type == "api_key":
        return {auth.header: str(auth.token)}
    return {}


def dicomweb_root(conn: DicomwebConnections, google: GoogleHealthcareAccess | None) -> str:
    """The connection's DICOMweb base URL; a Google Cloud Healthcare store's is under `google.api_root`."""
    if isinstance(conn, GoogleHealthcareConnection):
        return conn.dicomweb_url(google.api_root if google is not None else GOOGLE_HEALTHCARE_URL)
    return conn.base_url


def service_url(conn: DicomwebConnections, prefix_field: str, path: str, query_string: str = "", *,
                google: GoogleHealthcareAccess | None = None) -> httpx.URL:
    """`path` (e.g. "studies/1.2.3") under the connection's base URL (dicomweb_root) and its `prefix_field` prefix
    (qido_prefix, wado_prefix; Google Healthcare has none), with `query_string` kept exactly as given."""
    prefix = getattr(conn, prefix_field, "").strip("/")
    base = httpx.URL(dicomweb_root(conn, google).rstrip("/") + "/" + (prefix + "/" if prefix else "") + path)
    raw = base.raw_path + (b"?" + query_string.encode("ascii") if query_string else b"")
    # raw_path keeps our minimal encoding; httpx would percent-encode `^` (Orthanc then matches nothing).
    return base.copy_with(raw_path=raw)


def safe_url(url: httpx.URL) -> str:
    """The URL without user info, for messages and logs (credentials never travel in them)."""
    return str(url.copy_with(username=None, password=None))


def status_error(status: int, body: bytes, url: httpx.URL) -> SourceError | None:
    """None for a 2xx; else the error for an HTTP status: 408, 429 and 5xx are TransportError (worth a retry),
    anything else (3xx: redirects are not followed; 4xx) QueryFailedError. Names the status and the URL and
    quotes the start of the body."""
    if 200 <= status < 300:
        return None
    snippet = body[:300].decode("utf-8", "replace").strip().replace("\n", " ")
    detail = f"HTTP {status} from {safe_url(url)}" + (f": {snippet}" if snippet else "")
    if status in (408, 429) or status >= 500:
        return TransportError(detail)
    return QueryFailedError(detail)


class HttpClients:
    """One httpx.Client per TLS-verify flag, built on first use, closed together. `keepalive=False` closes each
    connection after its response (every request then opens its own, see WadoRetrievePort). Thread-safe."""

    def __init__(self, *, transport: httpx.BaseTransport | None = None, keepalive: bool = True,
                 name: str = "DICOMweb port") -> None:
        self._transport, self._name = transport, name
        self._limits = httpx.Limits() if keepalive else httpx.Limits(max_keepalive_connections=0)
        self._clients: dict[bool, httpx.Client] = {}
        self._lock = threading.Lock()
        self._closed = False

    def get(self, verify: bool) -> httpx.Client:
        """The client for `verify`; QueryFailedError once closed."""
        with self._lock:
            if self._closed:
                raise QueryFailedError(f"the {self._name} is closed")
            client = self._clients.get(verify)
            if client is None:
                client = self._clients[verify] = httpx.Client(
                    verify=verify, follow_redirects=False, transport=self._transport, limits=self._limits)
            return client

    def close(self) -> None:
        with self._lock:
            self._closed = True
            clients, self._clients = list(self._clients.values()), {}
        for client in clients:
            client.close()


def shutdown_socket(sock: object) -> None:
    """Shut a socket down both ways: wakes a thread blocked in recv() (close() alone would not)."""
    if isinstance(sock, socket.socket):
        try:
            sock.shutdown(socket.SHUT_RDWR)
        except OSError:
            pass


def response_socket(response: httpx.Response | None) -> object:
    """The socket under a streamed httpx response (None when not known, e.g. a mock transport)."""
    stream = response.extensions.get("network_stream") if response is not None else None
    return stream.get_extra_info("socket") if stream is not None else None
