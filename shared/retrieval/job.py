"""One retrieval in progress (a C-MOVE or C-GET the spanner serves, PS3.4 C.4.2 / C.4.3) and how it reaches the
holders of its entities: the job's counts and cancel tokens, the holders usable for a strategy, and which holder
each entity tries next.
"""

from __future__ import annotations

import logging
import time
from collections import defaultdict
from dataclasses import dataclass, field
from typing import Any, Callable, Iterable, Mapping

from shared.dicom.levels import QueryLevel
from shared.logging import log_event
from shared.retrieval.inbox import Inbox
from shared.retrieval.locate import Batch, Entity, key_text
from shared.retrieval.model import RetrieveOutcome, RetrieveRequest
from shared.retrieval.ports import RetrievePort, RetrieveStream
from shared.retrieval.spool import Spool
from shared.retrieval.tally import Tally
from shared.spanning.model import SourceSpec
from shared.spanning.ports import CancelToken

logger = logging.getLogger("shared.retrieval")


@dataclass
class Job:
    """A retrieval's state. `cancel` is the caller's token; `token` is the job's own, handed to the ports: the
    caller's cancel, a lost destination or the job's abandonment cancel it. Counts are kept by the thread that
    runs the job's generator."""

    request: RetrieveRequest
    operation: str
    cancel: CancelToken
    destination: str | None = None
    token: CancelToken = field(default_factory=CancelToken)
    expected: int | None = None
    tally: Tally = field(default_factory=Tally)
    problems: list[str] = field(default_factory=list)  # for the Error Comment, most important first
    destination_lost: bool = False
    spool: Spool | None = None
    early: RetrieveOutcome | None = None  # the outcome when the job ended before retrieving (locate failed)
    unhook: Callable[[], None] = lambda: None
    started: float = field(default_factory=time.monotonic)

    @property
    def cancelled(self) -> bool:
        """The caller cancelled (PS3.4 C.4.2.3.2 / C.4.3.3.2 C-CANCEL)."""
        return self.cancel.cancelled

    def fields(self, **more: Any) -> dict[str, Any]:
        """Correlation fields for log events."""
        study = key_text(self.request.identifier.get("StudyInstanceUID"))
        base = {"query_id": self.request.query_id, "operation": self.operation, "query_level": self.request.level.value,
                "study_uid": study or None, "destination": self.destination}
        return {**base, **more}

    def note(self, problem: str) -> None:
        if problem not in self.problems:
            self.problems.append(problem)

    def outcome(self) -> RetrieveOutcome:
        return self.tally.outcome(self.cancelled, "; ".join(self.problems) or None)


@dataclass(frozen=True)
class Holders:
    """How the service reaches the sources holding entities: the retrieve port, the config's sources by name, and
    the spanner's own storage AE (title and inbox) for C-MOVE-to-self when a source has no C-GET."""

    retrieve_port: RetrievePort
    sources: Mapping[str, SourceSpec]
    self_ae_title: str | None = None
    inbox: Inbox | None = None

    def can_direct(self, name: str) -> bool:
        """The source can C-MOVE straight to the caller's destination: a DIMSE source with C-MOVE (PS3.4 C.4.2).
        A DICOMweb source cannot (PS3.18 has no C-MOVE); it is fetched through PROXY instead (can_proxy)."""
        source = self.sources.get(name)
        return source is not None and source.kind == "dimse" and _flag(source, "supports_cmove")

    def can_proxy(self, name: str) -> bool:
        """The spanner can fetch from the source: C-GET (WADO-RS for a DICOMweb source), or C-MOVE to its own
        storage AE."""
        source = self.sources.get(name)
        if source is None:
            return False
        return _flag(source, "supports_cget") or self.can_move_to_self(source)

    def can_move_to_self(self, source: SourceSpec) -> bool:
        return bool(self.self_ae_title and self.inbox is not None and source.kind == "dimse"
                    and _flag(source, "supports_cmove"))


def _flag(source: SourceSpec, name: str) -> bool:
    """A DIMSE connection's capability; sources of other kinds do not say, and their adapter decides."""
    return getattr(source.connection, name, True) is not False


class HolderChain:
    """Which holder each entity tries next: its holders in priority order (Match.sources), each tried once, skipping
    those `usable` rejects and those `excluded`."""

    def __init__(self, usable: Callable[[str], bool], excluded: Iterable[str] = ()) -> None:
        self._usable = usable
        self._excluded = frozenset(excluded)
        self._tried: dict[tuple[str, ...], set[str]] = defaultdict(set)

    def next_for(self, entity: Entity) -> str | None:
        tried = self._tried[entity.key]
        for holder in entity.holders:
            if holder not in tried and holder not in self._excluded and self._usable(holder):
                return holder
        return None

    def tried(self, batch: Batch) -> None:
        for entity in batch.entities:
            self._tried[entity.key].add(batch.holder)

    def split(self, entities: Iterable[Entity]) -> tuple[list[Entity], list[Entity]]:
        """(entities with a holder left, entities without)."""
        retry, gone = [], []
        for entity in entities:
            (retry if self.next_for(entity) is not None else gone).append(entity)
        return retry, gone


def drain(stream: RetrieveStream) -> RetrieveOutcome | None:
    """Run a retrieve stream to its end (its progress is not needed); its outcome."""
    while True:
        try:
            next(stream)
        except StopIteration as stop:
            return stop.value


def image_uids(entities: Iterable[Entity]) -> list[str]:
    """The SOP Instance UIDs among `entities` (IMAGE level): what a Failed SOP Instance UID List can name."""
    return [entity.uid for entity in entities if entity.level is QueryLevel.IMAGE]


def log_holder_failed(job: Job, batch: Batch, reason: str, **more: Any) -> None:
    job.note(f"{batch.holder} failed")
    log_event(logger, "retrieve_holder_failed", logging.WARNING,
              **job.fields(source=batch.holder, entities=len(batch.entities), error=reason, **more))
