"""QueryPort for DIMSE sources: C-FIND SCU on pynetdicom (PS3.4 C.4.1, PS3.7 9.1.2).

One `DimseQueryPort` serves many spans (the span client keeps it for its life) and is used from several threads at
once. It owns one pynetdicom AE and a small pool of associations per source: a `find` reuses an idle association or
opens one; idle ones are released after `idle_seconds` (a reaper thread) and `close()` releases them all.

Status handling (PS3.4 C.4.1.1.4, PS3.7 C): Pending 0xFF00/0xFF01 -> a match; Success -> done; Cancel 0xFE00 ->
done; Warning (0xBxxx, 0x0001, 0x0107, ...) -> FindSummary(truncated=True); Failure (0xA700, 0xA900, 0xCxxx,
anything else) -> QueryFailedError with the status and Error Comment. Refused connections, rejected/aborted
associations and DIMSE timeouts -> TransportError.

Cancel (PS3.7 9.3.2.3): the token's callback sends C-CANCEL at once and arms a timer; if the peer has not sent
its final response within `cancel_grace_seconds` the association is aborted, which also wakes the thread waiting
for the next response, so a hung peer never holds a query thread beyond the grace period.
"""

from __future__ import annotations

import itertools
import logging
import socket
import threading
import time
from types import TracebackType
from pydicom import Dataset
from pynetdicom import AE, evt
from pynetdicom.association import Association
from pynetdicom.status import code_to_category

from shared.adapters.dimse_network import disable_nagle
from shared.connections import DimseConnection
from shared.dicom.charset import decode_dataset
from shared.dicom.levels import PATIENT_ROOT_FIND, STUDY_ROOT_FIND
from shared.spanning.model import FindSummary, SourceSpec, SpanRequest
from shared.spanning.ports import CancelToken, FindStream, QueryFailedError, TransportError

logger = logging.getLogger(__name__)

_PENDING = (0xFF00, 0xFF01)
_CANCEL = 0xFE00
_RELEASE_WAIT_SECONDS = 5.0  # how long close() waits for peers to confirm A-RELEASE
# PS3.8 Table 9-21: A-ASSOCIATE-RJ (source, reason/diagnostic) -> words.
_REJECT_REASONS = {
    (1, 1): "no reason given",
    (1, 2): "application context name not supported",
    (1, 3): "calling AE title not recognised",
    (1, 7): "called AE title not recognised",
    (2, 1): "no reason given (ACSE)",
    (2, 2): "protocol version not supported",
    (3, 1): "temporary congestion",
    (3, 2): "local limit exceeded",
}


class _SourceScopedAE(AE):
    """An AE whose calling AE title and timeouts can be set per thread for the association being opened.

    pynetdicom copies these from the AE when `associate()` builds the Association (in the calling thread), and
    its setters push new values into every active association. Overriding the getters with thread-local values
    lets one AE open associations for many sources concurrently, each with its own DimseConnection settings.
    """

    _SCOPED = ("ae_title", "acse_timeout", "connection_timeout", "dimse_timeout", "network_timeout")

    def __init__(self, ae_title: str) -> None:
        self._scope = threading.local()
        super().__init__(ae_title=ae_title)

    def scoped(self, **values: object) -> "_Scope":
        return _Scope(self._scope, values)

    def _scoped_value(self, name: str) -> object:
        values = getattr(self._scope, "values", None) or {}
        if name in values:
            return values[name]
        return getattr(AE, name).fget(self)


for _name in _SourceScopedAE._SCOPED:
    setattr(
        _SourceScopedAE,
        _name,
        property(lambda self, _n=_name: self._scoped_value(_n), getattr(AE, _name).fset),
    )


class _Scope:
    def __init__(self, local: threading.local, values: dict[str, object]) -> None:
        self._local, self._values = local, values

    def __enter__(self) -> None:
        self._local.values = self._values

    def __exit__(self, *exc: object) -> None:
        self._local.values = None


class DimseQueryPort:
    """C-FIND SCU QueryPort for sources of kind "dimse" (connection: DimseConnection).

    `ae_title` is only the default calling AE title; each DimseConnection's `calling_ae_title` wins.
    `cancel_grace_seconds`: how long a peer may take to answer C-CANCEL before the association is aborted.
    """

    def __init__(self, *, ae_title: str = "AXIOM", cancel_grace_seconds: float = 1.0, idle_seconds: float = 10.0,
                 max_idle_per_source: int = 2) -> None:
        self._ae = _SourceScopedAE(ae_title)
        self._ae.add_requested_context(STUDY_ROOT_FIND)
        self._ae.add_requested_context(PATIENT_ROOT_FIND)
        self._grace = cancel_grace_seconds
        self._idle_seconds = idle_seconds
        self._max_idle = max_idle_per_source
        self._lock = threading.Lock()
        self._idle: dict[tuple, list[tuple[Association, float]]] = {}  # per source: (association, idle since)
        self._open: set[Association] = set()
        self._msg_ids = itertools.count(1)
        self._closed = False
        self._stop_reaper = threading.Event()
        self._reaper: threading.Thread | None = None

    # -- lifecycle ---------------------------------------------------------------------------------------------

    def close(self) -> None:
        """Release every idle association and abort any still busy. The port is unusable afterwards."""
        self._stop_reaper.set()
        with self._lock:
            self._closed = True
            idle = {a for pool in self._idle.values() for a, _ in pool}
            busy = self._open - idle
            self._open, self._idle = set(), {}
        for assoc in busy:  # a find still running elsewhere: abort, which ends its stream with TransportError
            _abort_and_wake(assoc)
        # A-RELEASE waits for each peer's A-RELEASE-RP: release them side by side, not one after another.
        releasers = [threading.Thread(target=_release_quietly, args=(assoc,), daemon=True) for assoc in idle]
        for thread in releasers:
            thread.start()
        for thread in releasers:
            thread.join(_RELEASE_WAIT_SECONDS)
        self._ae.shutdown()

    def __enter__(self) -> "DimseQueryPort":
        return self

    def __exit__(self, exc_type: type | None, exc: BaseException | None, tb: TracebackType | None) -> None:
        self.close()

    @property
    def open_associations(self) -> int:
        """How many associations this port holds open (idle or busy)."""
        with self._lock:
            return sum(1 for a in self._open if a.is_established)

    # -- QueryPort ---------------------------------------------------------------------------------------------

    def find(self, request: SpanRequest, source: SourceSpec, cancel: CancelToken) -> FindStream:
        """C-FIND `request` at `source`; yields decoded matches, returns FindSummary|None (see module doc).

        A cancelled find just ends (returns None): the engine knows it cancelled.
        """
        conn = _dimse_connection(source)
        identifier = _find_identifier(request)
        if cancel.cancelled:
            return None
        try:
            return (yield from self._find_on_pool(identifier, request.model.find_sop_class, source, conn, cancel))
        except _CancelledDuringFind:
            return None

    def _find_on_pool(self, identifier: Dataset, sop_class: str, source: SourceSpec, conn: DimseConnection,
                      cancel: CancelToken) -> FindStream:
        assoc, reused = self._checkout(source, conn, cancel)
        while True:
            run = _FindRun(self, assoc, source, conn, cancel)
            try:
                summary = yield from run.execute(identifier, sop_class, next(self._msg_ids) % 0x10000 or 1)
            except _StaleAssociation:
                self._discard(assoc)
                if not reused:
                    raise TransportError(f"{source.name}: association closed before the C-FIND was answered")
                logger.info("%s: reused association was closed by the peer, reconnecting once", source.name)
                assoc, reused = self._checkout(source, conn, cancel, allow_idle=False)
                continue
            except BaseException:
                self._discard(assoc)  # mid-stream (error, cancel or abandoned generator): not reusable
                raise
            if run.reusable:
                self._checkin(source, assoc)
            else:
                self._discard(assoc)
            return summary

    # -- association pool --------------------------------------------------------------------------------------

    def _checkout(self, source: SourceSpec, conn: DimseConnection, cancel: CancelToken,
                  allow_idle: bool = True) -> tuple[Association, bool]:
        key = _pool_key(source, conn)
        stale: list[Association] = []
        try:
            with self._lock:
                if self._closed:
                    raise QueryFailedError("the DIMSE query port is closed")
                idle = self._idle.get(key, [])
                while allow_idle and idle:
                    assoc, since = idle.pop()
                    if assoc.is_established and time.monotonic() - since < self._idle_seconds:
                        return assoc, True
                    stale.append(assoc)
        finally:
            self._retire(stale)
        assoc = self._associate(source, conn, cancel)
        with self._lock:
            self._open.add(assoc)
            if self._closed:  # closed while we were connecting
                self._open.discard(assoc)
                _release_quietly(assoc)
                raise QueryFailedError("the DIMSE query port is closed")
        return assoc, False

    def _checkin(self, source: SourceSpec, assoc: Association) -> None:
        """Keep an idle association for the next find on this source (up to `max_idle_per_source`, each for at
        most `idle_seconds`; the peer or pynetdicom's network timeout may also end it, which checkout notices)."""
        surplus: list[Association] = []
        with self._lock:
            if not self._closed and assoc.is_established:
                pool = self._idle.setdefault(_pool_key(source, source.connection), [])
                pool.append((assoc, time.monotonic()))
                while len(pool) > self._max_idle:
                    surplus.append(pool.pop(0)[0])
                assoc = None
                self._start_reaper()
        if assoc is not None:
            self._discard(assoc)
        self._retire(surplus)

    def _start_reaper(self) -> None:
        """Under self._lock: start the thread that releases associations idle longer than `idle_seconds`
        (each pooled association keeps two pynetdicom threads polling, so idle ones must not linger)."""
        if self._reaper is None:
            self._reaper = threading.Thread(target=self._reap, name="dimse-pool-reaper", daemon=True)
            self._reaper.start()

    def _reap(self) -> None:
        interval = max(0.05, min(self._idle_seconds / 2, 5.0))
        while not self._stop_reaper.wait(interval):
            now, expired = time.monotonic(), []
            with self._lock:
                for pool in self._idle.values():
                    keep = [(a, since) for a, since in pool if a.is_established and now - since < self._idle_seconds]
                    expired += [a for a, since in pool if (a, since) not in keep]
                    pool[:] = keep
            self._retire(expired)

    def _retire(self, associations: list[Association]) -> None:
        """Release associations the pool no longer wants, without making the caller wait for the peers."""
        if not associations:
            return
        with self._lock:
            self._open.difference_update(associations)
        for assoc in associations:
            threading.Thread(target=_release_quietly, args=(assoc,), daemon=True).start()

    def _discard(self, assoc: Association) -> None:
        with self._lock:
            self._open.discard(assoc)
        if assoc.is_established:
            assoc.abort()

    def _associate(self, source: SourceSpec, conn: DimseConnection, cancel: CancelToken) -> Association:
        """Open an association; a cancel while the peer has not answered the A-ASSOCIATE-RQ drops the socket."""
        opened: list[Association] = []

        def on_open(event: evt.Event) -> None:
            disable_nagle(event)
            opened.append(event.assoc)

        def on_cancel() -> None:
            for assoc in opened:
                _shutdown_socket(assoc)

        started = time.monotonic()
        unregister = cancel.on_cancel(on_cancel)
        try:
            with self._ae.scoped(
                ae_title=conn.calling_ae_title,
                acse_timeout=conn.acse_timeout,
                connection_timeout=conn.connect_timeout,
                dimse_timeout=conn.dimse_timeout,
                network_timeout=conn.network_timeout,
            ):
                assoc = self._ae.associate(conn.host, conn.port, ae_title=conn.ae_title, max_pdu=conn.max_pdu,
                                           evt_handlers=[(evt.EVT_CONN_OPEN, on_open)])
        finally:
            unregister()
        if assoc.is_established:
            return assoc
        if cancel.cancelled:
            raise _CancelledDuringFind()
        raise TransportError(_association_failure(assoc, source, conn, time.monotonic() - started, bool(opened)))


class _StaleAssociation(Exception):
    """A reused association turned out to be closed before any response arrived."""


class _FindRun:
    """One C-FIND on one association: the response loop, cancel handling and the result cap."""

    def __init__(self, port: DimseQueryPort, assoc: Association, source: SourceSpec, conn: DimseConnection,
                 cancel: CancelToken) -> None:
        self.port, self.assoc, self.source, self.conn, self.cancel = port, assoc, source, conn, cancel
        self.reusable = False
        self._cancel_sent = threading.Event()
        self._timer: threading.Timer | None = None
        self._state = threading.Lock()  # orders cancel/abort against the end of the run
        self._finished = False  # once set, nothing may touch the association on this run's behalf
        self._sop_class = ""
        self._msg_id = 0

    def execute(self, identifier: Dataset, sop_class: str, msg_id: int) -> FindStream:
        self._sop_class, self._msg_id = sop_class, msg_id
        responses = self._send(identifier, sop_class, msg_id)
        unregister = self.cancel.on_cancel(self._request_cancel_in_background)
        try:
            return (yield from self._consume(responses))
        finally:
            unregister()
            # pynetdicom 3.0 yields an undecodable identifier from inside `with assoc.lock` (the AE-wide lock):
            # closing its generator releases that lock before anyone aborts the association, which needs it.
            responses.close()
            with self._state:
                self._finished = True
                if self._timer is not None:
                    self._timer.cancel()

    def _send(self, identifier: Dataset, sop_class: str, msg_id: int):
        if not self.assoc.is_established:
            raise _StaleAssociation()
        try:
            return self.assoc.send_c_find(identifier, sop_class, msg_id=msg_id)
        except RuntimeError as exc:  # association dropped between checkout and send
            raise _StaleAssociation() from exc
        except ValueError as exc:
            accepted = any(cx.abstract_syntax == sop_class for cx in self.assoc.accepted_contexts)
            reason = f"could not encode the identifier: {exc}" if accepted else (
                f"{self.source.name} did not accept the C-FIND SOP class {sop_class}")
            self.reusable = self.assoc.is_established
            raise QueryFailedError(reason) from exc

    def _consume(self, responses) -> FindStream:
        cap = self.source.max_results
        yielded, capped, first = 0, False, True
        waited_from = time.monotonic()
        for status, identifier in responses:
            if "Status" not in status:
                self._raise_no_response(first, time.monotonic() - waited_from)
            first = False
            code = int(status.Status)
            if code in _PENDING:
                if self._cancel_sent.is_set():
                    continue  # draining after C-CANCEL (caller's cancel or our cap)
                if cap is not None and yielded >= cap:
                    capped = True
                    self._request_cancel()
                    continue
                yield _decoded(identifier, self.source)
                yielded += 1
                waited_from = time.monotonic()
                continue
            self.reusable = True  # a final response leaves the association idle and usable
            return self._final(code, status, capped, cap)
        raise TransportError(f"{self.source.name}: C-FIND ended without a final status")

    def _final(self, code: int, status: Dataset, capped: bool, cap: int | None) -> FindSummary | None:
        comment = str(status.get("ErrorComment", "") or "").strip()
        if capped:
            return FindSummary(truncated=True, warning=f"capped at {cap} matches (max_results)")
        if code == 0x0000 or code == _CANCEL:
            return None
        category = code_to_category(code)
        if category == "Warning" or (code & 0xF000) == 0xB000:
            text = f"{self.source.name} answered with warning status 0x{code:04X}" + (f": {comment}" if comment else "")
            return FindSummary(truncated=True, warning=text)
        detail = f" ({comment})" if comment else ""
        raise QueryFailedError(f"{self.source.name}: C-FIND failed with status 0x{code:04X} [{category}]{detail}")

    def _raise_no_response(self, first: bool, waited: float) -> None:
        """pynetdicom yields an empty status when the peer aborted, closed or timed out."""
        if self.cancel.cancelled:
            raise _CancelledDuringFind()
        if first and waited < 0.5 and (self.assoc.is_aborted or not self.assoc.is_established):
            raise _StaleAssociation()
        if waited >= self.conn.dimse_timeout * 0.95:
            raise TransportError(f"{self.source.name}: no response within {self.conn.dimse_timeout:g} s")
        raise TransportError(f"{self.source.name}: association aborted by the peer during C-FIND")

    # -- cancel ----------------------------------------------------------------------------------------------

    def _request_cancel_in_background(self) -> None:
        """The CancelToken hook: runs in the canceller's thread (the engine's), which must never wait on the peer
        or on pynetdicom's locks, so C-CANCEL is sent from a thread of its own."""
        threading.Thread(target=self._request_cancel, name=f"c-cancel-{self.source.name}", daemon=True).start()

    def _request_cancel(self) -> None:
        """Send C-CANCEL (once) and abort if the peer has not finished within the grace period.

        Under `_state`, so a cancel that arrives after the run ended never reaches an association that is back in
        the pool (and perhaps serving another span); the timer is armed before the send for the same reason.
        """
        with self._state:
            if self._finished or self._cancel_sent.is_set():
                return
            self._cancel_sent.set()
            self._timer = threading.Timer(self.port._grace, self._abort_and_wake)
            self._timer.daemon = True
            self._timer.start()
            try:
                self.assoc.send_c_cancel(self._msg_id, query_model=self._sop_class)
            except Exception as exc:  # association already gone: the timer's abort still unblocks the reader
                logger.debug("%s: C-CANCEL not sent: %s", self.source.name, exc)

    def _abort_and_wake(self) -> None:
        with self._state:
            if self._finished:  # the peer answered the C-CANCEL in time
                return
            self.reusable = False
        logger.info("%s: no final response %.1f s after C-CANCEL, aborting", self.source.name, self.port._grace)
        _abort_and_wake(self.assoc)


class _CancelledDuringFind(Exception):
    """The caller cancelled while we waited for a response: the stream just ends."""


# -- pure helpers ------------------------------------------------------------------------------------------------


def _dimse_connection(source: SourceSpec) -> DimseConnection:
    if not isinstance(source.connection, DimseConnection):
        raise QueryFailedError(f"{source.name}: a dimse source needs a DimseConnection, got "
                               f"{type(source.connection).__name__}")
    return source.connection


def _pool_key(source: SourceSpec, conn: DimseConnection) -> tuple:
    return (source.name, conn.host, conn.port, conn.ae_title, conn.calling_ae_title)


def _find_identifier(request: SpanRequest) -> Dataset:
    """The C-FIND identifier: the request's keys plus QueryRetrieveLevel (PS3.4 C.4.1.1.3.1)."""
    if not request.model.allows(request.level):
        raise QueryFailedError(f"{request.model.value} has no {request.level.value} level (PS3.4 C.6.2)")
    identifier = Dataset()
    identifier.update(request.identifier)
    identifier.QueryRetrieveLevel = request.level.value
    return identifier


def _decoded(identifier: Dataset | None, source: SourceSpec) -> Dataset:
    """Decode one answer with its own Specific Character Set; anything undecodable is a malformed answer."""
    if identifier is None:
        raise QueryFailedError(f"{source.name}: sent a C-FIND response identifier that could not be decoded")
    try:
        decode_dataset(identifier)
        for element in identifier.iterall():  # force pydicom to convert every remaining raw value now
            _ = element.value
    except Exception as exc:
        raise QueryFailedError(f"{source.name}: malformed C-FIND response identifier: {exc}") from exc
    return identifier


def _association_failure(assoc: Association, source: SourceSpec, conn: DimseConnection, elapsed: float,
                         connected: bool) -> str:
    where = f"{conn.host}:{conn.port}"
    if assoc.is_rejected:
        primitive = assoc.acceptor.primitive
        src = getattr(primitive, "result_source", None)
        diag = getattr(primitive, "diagnostic", None)
        reason = _REJECT_REASONS.get((src, diag), f"source {src}, reason {diag}")
        kind = "transiently" if getattr(primitive, "result", None) == 2 else ""
        return f"association rejected {kind} by {source.name}: {reason}".replace("  ", " ")
    if not connected:
        if elapsed >= conn.connect_timeout * 0.95:
            return f"no connection to {where} within {conn.connect_timeout:g} s"
        return f"connection refused {where}"
    if elapsed >= conn.acse_timeout * 0.95:
        return f"no association response from {where} within {conn.acse_timeout:g} s"
    return f"association aborted by {source.name} ({where}) during negotiation"


def _abort_and_wake(assoc: Association) -> None:
    """Abort, then wake a reader blocked in DIMSE get_msg(): an empty item reads as "no response" (as pynetdicom's
    own abort paths do in fsm.AA_2/3/4), so its find loop ends now instead of at the DIMSE timeout."""
    try:
        assoc.abort()
    except Exception:
        pass
    finally:
        assoc.dimse.msg_queue.put((None, None))


def _shutdown_socket(assoc: Association) -> None:
    """Shut the TCP connection down: the DUL sees it closed (PS3.8 Evt17) and pynetdicom ends the association."""
    try:
        sock = assoc.dul.socket.socket if assoc.dul.socket is not None else None
        if sock is not None:
            sock.shutdown(socket.SHUT_RDWR)
    except (OSError, AttributeError):
        pass


def _release_quietly(assoc: Association) -> None:
    try:
        if assoc.is_established:
            assoc.release()
        else:
            assoc.abort()
    except Exception:  # closing is best effort
        pass

