"""Retrieval vocabulary (C-MOVE PS3.4 C.4.2, C-GET PS3.4 C.4.3): requests, destinations, sub-operation progress and
the final outcome. Pure: stdlib and pydicom only, frozen dataclasses, so the same types serve the spanning SCP
(services/listener) and the API's tracked move jobs.
"""

from __future__ import annotations

import uuid
from dataclasses import dataclass, field
from enum import Enum

from pydicom import Dataset

from shared.dicom.levels import InformationModel, QueryLevel

# DIMSE statuses of retrieval, PS3.4 C.4.2.1.5 (C-MOVE) and C.4.3.1.4 (C-GET).
SUCCESS = 0x0000
PENDING = 0xFF00
CANCEL = 0xFE00
SUB_OPERATIONS_WITH_FAILURES = 0xB000  # Warning: one or more sub-operations failed
OUT_OF_RESOURCES_MATCHES = 0xA701  # Refused: could not calculate the number of matches
OUT_OF_RESOURCES_SUB_OPERATIONS = 0xA702  # Refused: could not perform sub-operations
MOVE_DESTINATION_UNKNOWN = 0xA801
IDENTIFIER_DOES_NOT_MATCH = 0xA900
UNABLE_TO_PROCESS = 0xC000


class CmoveStrategy(str, Enum):
    """How the spanning SCP serves a C-MOVE (a spanner config's cmove_strategy column)."""

    DIRECT = "DIRECT"  # the holding source sends straight to the caller's Move Destination
    PROXY = "PROXY"  # the spanner retrieves from the source and forwards each instance as it arrives
    HYBRID = "HYBRID"  # DIRECT first; on 0xA801 or failure, PROXY for what is missing


# The query types a retrieval's locate is logged with (spanner_query_logs.query_type): the operation it serves.
RETRIEVAL_QUERY_TYPES = ("C-MOVE", "C-GET", "WADO")


@dataclass(frozen=True)
class Origin:
    """Who asked for a retrieval, and through what, as the query log records its locates: `query_type` the
    operation served — C-MOVE (PS3.4 C.4.2: the spanning SCP, the API's tracked move jobs), C-GET (C.4.3) or WADO
    (a WADO-RS retrieve, PS3.18 10.4) — and the requester: the API user, the calling AE title, the client address."""

    query_type: str
    user: str | None = None
    ae_title: str | None = None
    address: str | None = None

    def __post_init__(self) -> None:
        if self.query_type not in RETRIEVAL_QUERY_TYPES:
            raise ValueError(f"query_type: expected one of {', '.join(RETRIEVAL_QUERY_TYPES)}, "
                             f"got {self.query_type!r}")

    @property
    def requester(self) -> dict[str, str]:
        """The requester as span clients take it (keys user, ae_title, address; unknown ones left out)."""
        known = {"user": self.user, "ae_title": self.ae_title, "address": self.address}
        return {key: value for key, value in known.items() if value}


@dataclass(frozen=True)
class RetrieveRequest:
    """What to retrieve: the level and the unique keys of the entities (PS3.4 C.4.2.2.1: a C-MOVE identifier holds
    only unique keys; at the request's level a key may be a list of UIDs, backslash-separated). `origin`: who asked
    (None: an internal retrieval, logged as such)."""

    level: QueryLevel
    identifier: Dataset
    model: InformationModel = InformationModel.STUDY_ROOT
    query_id: str = field(default_factory=lambda: uuid.uuid4().hex)
    origin: Origin | None = None


@dataclass(frozen=True)
class Destination:
    """A C-STORE destination (a `dicom_destinations` row): where a Move Destination AE title is reached."""

    ae_title: str
    host: str
    port: int


@dataclass(frozen=True)
class RetrieveProgress:
    """Sub-operation counts so far, as a pending C-MOVE/C-GET response carries them (PS3.4 C.4.2.1.4).
    `remaining` is None when not known yet."""

    remaining: int | None
    completed: int = 0
    failed: int = 0
    warning: int = 0


@dataclass(frozen=True)
class RetrieveOutcome:
    """The end of a retrieval: the final DIMSE status, the counts, the SOP Instance UIDs that failed (PS3.4
    C.4.2.1.6: Failed SOP Instance UID List) and an Error Comment for the caller when something went wrong."""

    status: int
    completed: int = 0
    failed: int = 0
    warning: int = 0
    failed_uids: tuple[str, ...] = ()
    error_comment: str | None = None

    @property
    def ok(self) -> bool:
        return self.status == SUCCESS
