"""Who may associate with the spanning SCP, decided at A-ASSOCIATE time (PS3.8 7.1.1.7, Table 9-21).

The called AE title selects a spanner config (`spanner_configs.scp_ae_title`, enabled, `supports_dimse_scp`), so
several configs are served side by side on one port. An unknown called AE title is rejected with A-ASSOCIATE-RJ
"called AE title not recognised" (1, 1, 7); a calling AE title outside the config's `allowed_calling_ae_titles`
with "calling AE title not recognised" (1, 1, 3); while the configs cannot be read at all (database down at start),
transiently (2, 1, 1), so callers retry instead of concluding the AE title is wrong. The listener's own storage AE title (AXIOM_SCP_AE_TITLE) also
accepts associations, from the DIMSE sources' AE titles only: that is where sources send what the spanner retrieves
with C-MOVE to itself.

pynetdicom checks only one AE title itself (`require_called_aet`), so `GatedACSE` replaces the acceptor's ACSE of
each association (services.listener.server installs it) and asks the `AssociationGate` before the usual
negotiation; the accepted association is bound to its config for the handlers.
"""

from __future__ import annotations

import logging
import threading
import time
import weakref
from dataclasses import dataclass
from typing import Callable

from pynetdicom import evt
from pynetdicom.acse import ACSE
from pynetdicom.association import Association

from shared.db.repo.spanner_configs import list_spanner_configs
from shared.logging import log_event

logger = logging.getLogger(__name__)


@dataclass(frozen=True)
class Rejection:
    """An A-ASSOCIATE-RJ: result (1 permanent, 2 transient), source and reason/diagnostic (PS3.8 Table 9-21)."""

    result: int
    source: int
    diagnostic: int
    reason: str


CALLED_AE_NOT_RECOGNISED = Rejection(1, 1, 7, "called AE title not served")
CALLING_AE_NOT_RECOGNISED = Rejection(1, 1, 3, "calling AE title not allowed")
CONFIG_UNAVAILABLE = Rejection(2, 1, 1, "spanner configs unavailable (database)")  # transient: try again later


@dataclass(frozen=True)
class Binding:
    """An accepted association: who called which AE title, and the spanner config it selects (None for the storage
    AE, which only takes C-STORE from sources)."""

    called_ae: str
    calling_ae: str
    address: str
    config_id: int | None
    config_name: str | None


@dataclass(frozen=True)
class _Entry:
    config_id: int | None
    config_name: str | None
    allowed: frozenset[str]  # empty: anyone, unless `closed`
    closed: bool = False  # only the `allowed` AE titles (the storage AE: the sources)


class AssociationGate:
    """Decides on association requests from the configs in the database (re-read every `refresh_seconds`)."""

    def __init__(self, session_factory: Callable, *, storage_ae_title: str | None, refresh_seconds: float = 2.0,
                 clock: Callable[[], float] = time.monotonic) -> None:
        self._session_factory, self._storage_ae = session_factory, (storage_ae_title or "").strip() or None
        self._refresh, self._clock = refresh_seconds, clock
        self._lock = threading.Lock()
        self._entries: dict[str, _Entry] | None = None  # None until the configs were read once
        self._loaded_at: float | None = None
        self._bindings: weakref.WeakKeyDictionary[Association, Binding] = weakref.WeakKeyDictionary()

    def served_ae_titles(self) -> list[str]:
        """The called AE titles accepted now, sorted."""
        return sorted(self._current() or {})

    def decide(self, *, called: str, calling: str, address: str) -> Binding | Rejection:
        """The Binding for an acceptable request, or the Rejection to answer it with (transient when the configs
        could never be read)."""
        called, calling = called.strip(), calling.strip()
        entries = self._current()
        if entries is None:
            return CONFIG_UNAVAILABLE
        entry = entries.get(called)
        if entry is None:
            return CALLED_AE_NOT_RECOGNISED
        if (entry.allowed or entry.closed) and calling not in entry.allowed:
            return CALLING_AE_NOT_RECOGNISED
        return Binding(called, calling, address, entry.config_id, entry.config_name)

    def bind(self, assoc: Association, binding: Binding) -> None:
        self._bindings[assoc] = binding

    def binding(self, assoc: Association) -> Binding | None:
        """The Binding of an accepted association (None: not accepted through this gate)."""
        return self._bindings.get(assoc)

    def _current(self) -> dict[str, _Entry] | None:
        with self._lock:
            now = self._clock()
            if self._loaded_at is None or now - self._loaded_at >= self._refresh:
                try:
                    self._entries = self._load()
                except Exception as exc:  # keep answering with what we knew; say why we could not refresh
                    log_event(logger, "scp_config_refresh_failed", logging.ERROR, error=str(exc))
                self._loaded_at = now
            return self._entries

    def _load(self) -> dict[str, _Entry]:
        entries: dict[str, _Entry] = {}
        source_aes: set[str] = set()
        with self._session_factory() as session:
            for config in list_spanner_configs(session, enabled_only=True):
                source_aes |= {m.source.connection.ae_title for m in config.mappings
                               if m.source.kind == "dimse" and m.source.is_enabled}
                if config.scp_ae_title and config.supports_dimse_scp:
                    allowed = frozenset(t.strip() for t in (config.allowed_calling_ae_titles or []) if t.strip())
                    entries[config.scp_ae_title.strip()] = _Entry(config.id, config.name, allowed)
        if self._storage_ae and self._storage_ae not in entries:
            entries[self._storage_ae] = _Entry(None, None, frozenset(source_aes), closed=True)
        return entries


class GatedACSE(ACSE):
    """The acceptor's ACSE with the gate's decision first (see the module doc)."""

    def __init__(self, assoc: Association, gate: AssociationGate) -> None:
        super().__init__(assoc)
        self._gate = gate

    def _negotiate_as_acceptor(self) -> None:
        request = self.requestor.primitive
        called = str(request.called_ae_title or "").strip()
        calling = str(request.calling_ae_title or "").strip()
        address = getattr(self.assoc.requestor.address_info, "address", "") or ""
        decision = self._gate.decide(called=called, calling=calling, address=address)
        if isinstance(decision, Rejection):
            log_event(logger, "association_rejected", logging.WARNING, called_ae=called, calling_ae=calling,
                      client_address=address, reason=decision.reason)
            self.requestor.ae_title = calling
            self.send_reject(decision.result, decision.source, decision.diagnostic)
            evt.trigger(self.assoc, evt.EVT_REJECTED, {})
            self.assoc.kill()
            return
        self.acceptor.ae_title = called  # the A-ASSOCIATE-AC answers with the AE title that was called
        self._gate.bind(self.assoc, decision)
        super()._negotiate_as_acceptor()
