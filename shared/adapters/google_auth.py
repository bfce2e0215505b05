"""Google Cloud Healthcare access for the DICOMweb adapters: OAuth 2.0 access tokens from Application Default
Credentials (ADC), and the API root the DICOM stores are reached under.

Credentials (google-auth; https://cloud.google.com/docs/authentication/application-default-credentials), in ADC's
order:
1. GOOGLE_APPLICATION_CREDENTIALS (settings.google.credentials_file): a service-account key file — the token is
   asked for with a JWT bearer grant (RFC 7523 2.1: an RS256 assertion signed with the key, `aud` the key's
   `token_uri`, posted as `grant_type=urn:ietf:params:oauth:grant-type:jwt-bearer`) — or an external-account
   (workload identity federation), impersonated or authorized-user file;
2. gcloud's user credentials (`gcloud auth application-default login`);
3. the metadata server (Compute Engine, GKE workload identity, Cloud Run).
Scope: https://www.googleapis.com/auth/cloud-healthcare, the Cloud Healthcare API's own ("read, write and manage
healthcare data"; cloud-platform would work too, but grants far more). The principal needs an IAM role on the
dataset or store: roles/healthcare.dicomViewer to query and retrieve (roles/healthcare.dicomEditor to store).

Lazy: building a provider reads nothing. The credentials are found, and the token endpoint asked, when the first
google_healthcare source is queried: a deployment without one never needs or probes Google credentials.

Cached: one token per provider (and one provider per credentials file in a process: google_healthcare_access), shared
by every thread and port. It is refreshed when less than REFRESH_MARGIN_SECONDS of its life is left (a quarter of a
short-lived token's life; Google's tokens live an hour, `expires_in` of RFC 6749 5.1), one refresh at a time. When an
early refresh fails, the old token serves until it expires.

Errors are SourceErrors carrying the reason (the adapters prefix the source's name, dicomweb_http.auth_headers):
TransportError when the token endpoint cannot be reached, times out or answers a retryable error (5xx, 429; google-auth
has already retried with backoff); QueryFailedError for everything an operator has to fix — no credentials, a key file
that is missing, unreadable or malformed, a grant the token endpoint refuses (RFC 6749 5.2, e.g. `invalid_grant`).
A failure to load credentials is remembered for LOAD_RETRY_SECONDS, so a misconfigured deployment does not search
again (metadata server time-outs included) on every query. Neither the key nor a token ever appears in a message or
a log record.
"""

from __future__ import annotations

import logging
import re
import threading
import time
import warnings
from datetime import datetime, timezone
from pathlib import Path
from typing import Any, Callable

import google.auth
import google.auth.exceptions
import google.auth.transport
import google.auth.transport.requests

from shared.adapters.dicomweb_http import GoogleHealthcareAccess
from shared.config import Settings, get_settings
from shared.logging import log_event
from shared.spanning.ports import QueryFailedError, SourceError, TransportError

logger = logging.getLogger(__name__)

HEALTHCARE_SCOPE = "https://www.googleapis.com/auth/cloud-healthcare"
REFRESH_MARGIN_SECONDS = 300.0  # refresh a token this long before it expires (google-auth's own margin is 225 s)
NO_EXPIRY_REUSE_SECONDS = 300.0  # a token without an expiry (some credential kinds) is asked for again this often
LOAD_RETRY_SECONDS = 30.0  # after a failure to find or load credentials, do not search again for this long
TOKEN_TIMEOUT_SECONDS = 20.0  # one HTTP exchange with the token endpoint or the metadata server
_PEM_BLOCK = re.compile(r"-----BEGIN [^-]+-----.*?(-----END [^-]+-----|$)", re.S)
_MAX_REASON = 300


class GoogleTokenProvider:
    """A TokenProvider (callable, returns an access token) over Application Default Credentials; see the module doc.

    `credentials_file`: a GOOGLE_APPLICATION_CREDENTIALS path, or None for the rest of ADC's search. `clock` is
    time.time (wall clock: token expiries are absolute). Thread-safe.
    """

    def __init__(self, *, credentials_file: Path | None = None, scopes: tuple[str, ...] = (HEALTHCARE_SCOPE,),
                 clock: Callable[[], float] = time.time) -> None:
        self.credentials_file, self._scopes, self._clock = credentials_file, scopes, clock
        self._lock = threading.Lock()
        self._credentials: Any = None
        self._request: google.auth.transport.Request | None = None
        self._load_error: QueryFailedError | None = None
        self._load_retry_at = 0.0
        self._token: str | None = None
        self._expires_at = 0.0  # when the token stops working
        self._refresh_at = 0.0  # when to ask for the next one

    def __call__(self) -> str:
        """A valid access token: the cached one, or a fresh one from the credentials (loaded on first use).
        QueryFailedError / TransportError with the reason when there is none."""
        with self._lock:
            now = self._clock()
            if self._token is not None and now < self._refresh_at:
                return self._token
            try:
                return self._refresh(self._loaded(now), now)
            except SourceError:
                if self._token is not None and now < self._expires_at - 1.0:
                    # An early refresh failed: the current token still works; try again in a while.
                    self._refresh_at = now + min(30.0, (self._expires_at - now) / 2)
                    return self._token
                raise

    def _loaded(self, now: float) -> Any:
        """The credentials, found and loaded once (a failure is kept for LOAD_RETRY_SECONDS)."""
        if self._credentials is not None:
            return self._credentials
        if self._load_error is not None and now < self._load_retry_at:
            raise self._load_error
        try:
            self._request = self._request or _TimedRequest(TOKEN_TIMEOUT_SECONDS)
            self._credentials = self._find_credentials()
            self._load_error = None
            return self._credentials
        except Exception as exc:  # noqa: BLE001 - google-auth and OSError alike become one worded error
            path = str(self.credentials_file)  # named once, after the reason (google-auth repeats it)
            reason = _reason(exc).replace(f"File {path}", "the file").replace(path, "the file")
            self._load_error = QueryFailedError(f"cannot load Google credentials: {reason} ({self._where()})")
            self._load_retry_at = now + LOAD_RETRY_SECONDS
            log_event(logger, "google_credentials_unavailable", logging.WARNING, credentials=self._where(),
                      error=str(self._load_error), retry_in_seconds=LOAD_RETRY_SECONDS)
            raise self._load_error from None

    def _find_credentials(self) -> Any:
        """ADC: the explicit key file, else google.auth.default's search (gcloud user credentials, metadata)."""
        if self.credentials_file is not None:
            if not self.credentials_file.exists():
                raise FileNotFoundError("the key file does not exist")
            if not self.credentials_file.is_file():
                raise IsADirectoryError("the key file is not a regular file")
            with warnings.catch_warnings():
                # The warning is about credential files from untrusted parties; this one is the operator's own,
                # exactly as google.auth.default treats GOOGLE_APPLICATION_CREDENTIALS.
                warnings.simplefilter("ignore", DeprecationWarning)
                credentials, _project = google.auth.load_credentials_from_file(
                    str(self.credentials_file), scopes=list(self._scopes), request=self._request)
            return credentials
        credentials, _project = google.auth.default(scopes=list(self._scopes), request=self._request)
        return credentials

    def _refresh(self, credentials: Any, now: float) -> str:
        """Ask for a new token (RFC 7523 grant, metadata server, ... as the credentials do) and cache it."""
        try:
            credentials.refresh(self._request)
        except google.auth.exceptions.GoogleAuthError as exc:
            if isinstance(exc, google.auth.exceptions.TransportError):
                error: SourceError = TransportError(f"the token endpoint cannot be reached: "
                                                    f"{_reason(exc, self._token)} ({self._where()})")
            elif getattr(exc, "retryable", False):
                error = TransportError(f"the token endpoint failed: {_reason(exc, self._token)} ({self._where()})")
            else:
                error = QueryFailedError(f"the token endpoint refused the credentials: {_reason(exc, self._token)} "
                                         f"({self._where()})")
            retryable = isinstance(error, TransportError)
            log_event(logger, "google_token_failed", logging.WARNING, credentials=self._where(), error=str(error),
                      retryable=retryable)
            raise error from None
        except Exception as exc:  # noqa: BLE001 - e.g. a malformed answer: worded, never a 500
            raise QueryFailedError(f"the token request failed: {type(exc).__name__} ({self._where()})") from None
        token = credentials.token
        if not token:
            raise QueryFailedError(f"the token endpoint gave no access token ({self._where()})")
        self._token = token
        expiry = _epoch(credentials.expiry)
        if expiry is None:
            self._expires_at, self._refresh_at = now + NO_EXPIRY_REUSE_SECONDS, now + NO_EXPIRY_REUSE_SECONDS
        else:
            lifetime = max(expiry - now, 0.0)
            self._expires_at = expiry
            self._refresh_at = expiry - min(REFRESH_MARGIN_SECONDS, lifetime / 4)
        log_event(logger, "google_token_refreshed", credentials=self._where(),
                  principal=getattr(credentials, "service_account_email", None) or type(credentials).__name__,
                  expires_in_seconds=None if expiry is None else round(expiry - now))
        return token

    def _where(self) -> str:
        """Where the credentials come from, for messages (a path, never its content)."""
        if self.credentials_file is not None:
            return f"GOOGLE_APPLICATION_CREDENTIALS={self.credentials_file}"
        return "Application Default Credentials"


class _TimedRequest(google.auth.transport.Request):
    """google-auth's requests transport with a bounded time per exchange (its own default is 120 s)."""

    def __init__(self, timeout: float) -> None:
        self._inner = google.auth.transport.requests.Request()
        self._timeout = timeout

    def __call__(self, url: str, method: str = "GET", body: Any = None, headers: Any = None,
                 timeout: float | None = None, **kwargs: Any) -> google.auth.transport.Response:
        return self._inner(url, method=method, body=body, headers=headers, timeout=timeout or self._timeout,
                           **kwargs)


def _epoch(expiry: datetime | None) -> float | None:
    """google-auth's expiry (a naive UTC datetime) as a Unix time."""
    if expiry is None:
        return None
    return (expiry if expiry.tzinfo else expiry.replace(tzinfo=timezone.utc)).timestamp()


def _reason(exc: BaseException, token: str | None = None) -> str:
    """A short reason for `exc`: its message (and its cause's, as google-auth wraps them), with any PEM block and
    `token` removed, cut to a few hundred characters."""
    parts = [arg for arg in getattr(exc, "args", ()) if isinstance(arg, (str, BaseException))]
    text = "; ".join(str(part) for part in parts) or type(exc).__name__
    text = _PEM_BLOCK.sub("[key removed]", text)
    if token:
        text = text.replace(token, "[token removed]")
    text = " ".join(text.split())
    return text if len(text) <= _MAX_REASON else text[:_MAX_REASON] + "..."


_shared_lock = threading.Lock()
_shared_providers: dict[Path | None, GoogleTokenProvider] = {}


def google_healthcare_access(settings: Settings | None = None) -> GoogleHealthcareAccess:
    """The Google Cloud Healthcare access of this process for `settings` (default get_settings()): the API root
    AXIOM_GOOGLE_HEALTHCARE_URL and the token provider of GOOGLE_APPLICATION_CREDENTIALS (ADC's search when unset).

    The one factory every builder of query / retrieve ports and probes uses (shared.adapters.query_ports,
    retrieve_ports, probe): one provider per credentials file per process, so every port shares one token. Loads
    nothing (see the module doc: lazy)."""
    google = (settings or get_settings()).google
    with _shared_lock:
        provider = _shared_providers.get(google.credentials_file)
        if provider is None:
            provider = _shared_providers[google.credentials_file] = GoogleTokenProvider(
                credentials_file=google.credentials_file)
    return GoogleHealthcareAccess(token_provider=provider, api_root=google.healthcare_url.rstrip("/"))
