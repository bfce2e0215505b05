"""Request and response bodies of the tracked C-MOVE jobs (`/api/v1/spanner/services/cmove`, routes/moves.py).

`study_uid` is checked as a C-MOVE identifier's Study Instance UID is (shared.dicom.scp_requests: a single valid UID,
PS3.5 9.1); `destination_ae` as an AE title (PS3.5 6.2) — that it is a configured destination is the route's check.
"""

from __future__ import annotations

from dataclasses import replace
from datetime import datetime

from pydantic import BaseModel, ConfigDict, Field, field_validator
from pydicom import Dataset, config
from pydicom.valuerep import validate_value

from shared.db.base import MAX_INTEGER
from shared.db.models import MoveJob
from shared.dicom.levels import STUDY_ROOT_MOVE
from shared.dicom.scp_requests import IdentifierError, retrieve_request
from shared.provisioning.schema import AeTitle
from shared.retrieval.model import CmoveStrategy, Origin, RetrieveRequest


def study_move_request(study_uid: str, *, query_id: str | None = None,
                       origin: Origin | None = None) -> RetrieveRequest:
    """The STUDY-level Study Root C-MOVE request of one study (PS3.4 C.4.2.2.1); ValueError naming what is wrong.
    `origin`: who asked (its locate's query log row names them)."""
    if "\\" in study_uid:
        raise ValueError("a single Study Instance UID, not a list")
    try:  # before it is set on a Dataset, which would only warn
        validate_value("UI", study_uid, config.RAISE)
    except ValueError:
        raise ValueError(f"{study_uid[:24]!r} is not a valid UID (PS3.5 9.1)") from None
    identifier = Dataset()
    identifier.QueryRetrieveLevel, identifier.StudyInstanceUID = "STUDY", study_uid
    try:
        request = retrieve_request(identifier, STUDY_ROOT_MOVE, query_id=query_id)
    except IdentifierError as exc:
        raise ValueError(str(exc)) from None
    return request if origin is None else replace(request, origin=origin)


class MoveJobIn(BaseModel):
    """A study to move to a configured C-MOVE destination over a spanner config's sources."""

    model_config = ConfigDict(extra="forbid")

    study_uid: str = Field(max_length=64, description="the Study Instance UID (0020,000D) to move")
    destination_ae: AeTitle = Field(description="a configured destination's AE title (/api/v1/config/destinations)")
    spanner_config_id: int = Field(ge=1, le=MAX_INTEGER)
    move_strategy: CmoveStrategy | None = Field(
        default=None, description="DIRECT, PROXY or HYBRID; default: the spanner config's cmove_strategy")

    @field_validator("study_uid")
    @classmethod
    def _valid_uid(cls, value: str) -> str:
        value = value.strip()
        study_move_request(value)
        return value


class MoveJobOut(BaseModel):
    """A tracked C-MOVE job: its request, state, sub-operation counts (PS3.4 C.4.2.1.4), the final DIMSE status
    (hex, PS3.4 C.4.2.1.5), the Failed SOP Instance UID List and timings."""

    id: str
    status: str
    study_uid: str
    destination_ae: str
    spanner_config_id: int | None
    spanner_config_name: str
    move_strategy: str
    instance_id: str
    requested_by: str | None
    remaining: int | None
    completed: int
    failed: int
    warning: int
    failed_uids: list[str]
    dimse_status: str | None = Field(description="the final C-MOVE status, e.g. 0x0000, 0xB000, 0xFE00")
    error_comment: str | None
    created_at: datetime
    started_at: datetime | None
    finished_at: datetime | None
    duration_seconds: float | None = Field(description="finished_at - started_at")

    @classmethod
    def of(cls, job: MoveJob) -> MoveJobOut:
        duration = None
        if job.started_at is not None and job.finished_at is not None:
            duration = round((job.finished_at - job.started_at).total_seconds(), 3)
        return cls(id=job.id, status=job.status.value, study_uid=job.study_uid, destination_ae=job.destination_ae,
                   spanner_config_id=job.spanner_config_id, spanner_config_name=job.spanner_config_name,
                   move_strategy=job.strategy.value, instance_id=job.instance_id, requested_by=job.requested_by,
                   remaining=job.remaining, completed=job.completed, failed=job.failed, warning=job.warning,
                   failed_uids=list(job.failed_uids or []),
                   dimse_status=None if job.dimse_status is None else f"0x{job.dimse_status:04X}",
                   error_comment=job.error_comment, created_at=job.created_at, started_at=job.started_at,
                   finished_at=job.finished_at, duration_seconds=duration)
