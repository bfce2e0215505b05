"""Association side of the DIMSE SCU: one pynetdicom AE and a pool of associations per source (PS3.8, PS3.7 9.1).

`AssociationPool` is owned by a `DimseQueryPort` (dimse_scu.py) and used from several threads at once: `checkout`
reuses an idle association for the source or opens one; `checkin` keeps it idle for the next find (up to
`max_idle_per_source`, each for at most `idle_seconds`, a reaper thread releases expired ones); `discard` aborts
one that is no longer usable; `close()` releases them all. Refused connections and rejected/aborted associations
-> TransportError; a cancel while the association is being negotiated -> AssociationCancelled.
"""

from __future__ import annotations

import socket
import threading
import time
from typing import Callable, Iterable

from pydicom import Dataset
from pynetdicom import AE, evt
from pynetdicom.association import Association

from shared.adapters.dimse_network import disable_nagle
from shared.adapters.dimse_reactor import gate_reactor
from shared.connections import DimseConnection
from shared.dicom.levels import InformationModel, QueryLevel
from shared.spanning.model import SourceSpec
from shared.spanning.ports import CancelToken, QueryFailedError, TransportError

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


class AssociationCancelled(Exception):
    """The caller cancelled while the peer had not yet answered the A-ASSOCIATE-RQ."""


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


class AssociationPool:
    """Associations per source, opened by one AE that requests `contexts` (see module doc)."""

    def __init__(self, *, ae_title: str, contexts: Iterable[str], idle_seconds: float,
                 max_idle_per_source: int) -> None:
        self._ae = _SourceScopedAE(ae_title)
        for context in contexts:
            self._ae.add_requested_context(context)
        self._idle_seconds = idle_seconds
        self._max_idle = max_idle_per_source
        self._lock = threading.Lock()
        self._idle: dict[tuple, list[tuple[Association, float]]] = {}  # per source: (association, idle since)
        self._open: set[Association] = set()
        self._closed = False
        self._stop_reaper = threading.Event()
        self._reaper: threading.Thread | None = None

    # -- lifecycle ---------------------------------------------------------------------------------------------

    def close(self) -> None:
        """Release every idle association and abort any still busy. The pool is unusable afterwards."""
        self._stop_reaper.set()
        with self._lock:
            self._closed = True
            idle = {a for pool in self._idle.values() for a, _ in pool}
            busy = self._open - idle
            self._open, self._idle = set(), {}
        for assoc in busy:  # a find still running elsewhere: abort, which ends its stream with TransportError
            abort_and_wake(assoc)
        # A-RELEASE waits for each peer's A-RELEASE-RP: release them side by side, not one after another.
        releasers = [threading.Thread(target=_release_quietly, args=(assoc,), daemon=True) for assoc in idle]
        for thread in releasers:
            thread.start()
        for thread in releasers:
            thread.join(_RELEASE_WAIT_SECONDS)
        self._ae.shutdown()

    @property
    def open_count(self) -> int:
        """How many associations the pool holds open (idle or busy)."""
        with self._lock:
            return sum(1 for a in self._open if a.is_established)

    # -- checkout / checkin ------------------------------------------------------------------------------------

    def checkout(self, source: SourceSpec, conn: DimseConnection, cancel: CancelToken,
                 allow_idle: bool = True) -> tuple[Association, bool]:
        """An established association for `source` and whether it was reused from the idle pool."""
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

    def checkin(self, source: SourceSpec, assoc: Association) -> None:
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
            self.discard(assoc)
        self._retire(surplus)

    def discard(self, assoc: Association) -> None:
        """Forget an association that is not reusable and abort it if still established."""
        with self._lock:
            self._open.discard(assoc)
        if assoc.is_established:
            assoc.abort()

    # -- idle expiry -------------------------------------------------------------------------------------------

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

    # -- opening -----------------------------------------------------------------------------------------------

    def _associate(self, source: SourceSpec, conn: DimseConnection, cancel: CancelToken) -> Association:
        """Open an association with the source's own calling AE title and timeouts (request_association)."""

        def associate(handlers: list) -> Association:
            with self._ae.scoped(ae_title=conn.calling_ae_title, acse_timeout=conn.acse_timeout,
                                 connection_timeout=conn.connect_timeout, dimse_timeout=conn.dimse_timeout,
                                 network_timeout=conn.network_timeout):
                return self._ae.associate(conn.host, conn.port, ae_title=conn.ae_title, max_pdu=conn.max_pdu,
                                          evt_handlers=handlers)

        return request_association(associate, source, conn, cancel)


# -- helpers -----------------------------------------------------------------------------------------------------


def request_association(associate: Callable[[list], Association], source: SourceSpec, conn: DimseConnection,
                        cancel: CancelToken, *, refused: Callable[[Association], None] | None = None) -> Association:
    """Request an association (PS3.8 7.1.1) through `associate(evt_handlers)` (an AE.associate call given these
    handlers), with TCP_NODELAY set and the reactor gated (dimse_reactor.py: no response is lost to pynetdicom's
    reactor thread). A cancel while the peer has not answered the A-ASSOCIATE-RQ drops the socket
    and raises AssociationCancelled (an association established just as the cancel landed is aborted: its socket may
    already be shut). Refused, rejected or aborted -> TransportError naming the reason; `refused` may raise a more
    precise error for a failed association first."""
    opened: list[Association] = []

    def on_open(event: evt.Event) -> None:
        disable_nagle(event)
        gate_reactor(event.assoc)  # before the association is established: its reactor starts only then
        opened.append(event.assoc)

    def on_cancel() -> None:
        for assoc in opened:
            _shutdown_socket(assoc)

    started = time.monotonic()
    unregister = cancel.on_cancel(on_cancel)
    try:
        assoc = associate([(evt.EVT_CONN_OPEN, on_open)])
    finally:
        unregister()
    if cancel.cancelled:
        if assoc.is_established:
            abort_and_wake(assoc)
        raise AssociationCancelled()
    if assoc.is_established:
        return assoc
    if refused is not None:
        refused(assoc)
    raise TransportError(_association_failure(assoc, source, conn, time.monotonic() - started, bool(opened)))


def dimse_connection(source: SourceSpec) -> DimseConnection:
    """The source's DimseConnection; QueryFailedError when it has another kind of connection."""
    if not isinstance(source.connection, DimseConnection):
        raise QueryFailedError(f"{source.name}: a dimse source needs a DimseConnection, got "
                               f"{type(source.connection).__name__}")
    return source.connection


def level_identifier(keys: Dataset, level: QueryLevel, model: InformationModel) -> Dataset:
    """A Q/R identifier: `keys` plus QueryRetrieveLevel (PS3.4 C.4.1.1.3.1, C.4.2.2.1); QueryFailedError when the
    model has no such level (PS3.4 C.6.2)."""
    if not model.allows(level):
        raise QueryFailedError(f"{model.value} has no {level.value} level (PS3.4 C.6.2)")
    identifier = Dataset()
    identifier.update(keys)
    identifier.QueryRetrieveLevel = level.value
    return identifier


def _pool_key(source: SourceSpec, conn: DimseConnection) -> tuple:
    return (source.name, conn.host, conn.port, conn.ae_title, conn.calling_ae_title)


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


def abort_and_wake(assoc: Association) -> None:
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
