"""`move_jobs`: the API's tracked C-MOVE jobs (POST /api/v1/spanner/services/cmove), one row per job.

A job moves one study to a Move Destination through the retrieval service (shared.retrieval.tracked_move). Its
counts are the C-MOVE sub-operation counts (PS3.4 C.4.2.1.4: remaining, completed, failed, warning), written while
it runs; at the end `dimse_status` is the final C-MOVE status (PS3.4 C.4.2.1.5) and `failed_uids` the Failed SOP
Instance UID List (C.4.2.1.6). `instance_id` is the Axiom instance (AXIOM_INSTANCE_ID) whose API process runs the
job: at start that instance marks its own jobs left queued/running by a previous process `interrupted`.
"""

from __future__ import annotations

from datetime import datetime
from enum import Enum as PyEnum

from sqlalchemy import ForeignKey, Index, Integer, String, Text
from sqlalchemy.orm import Mapped, mapped_column

from shared.db.base import Base, JsonType, UtcDateTime, utc_now
from shared.db.models.spanner import value_enum
from shared.retrieval.model import CmoveStrategy


class MoveJobStatus(str, PyEnum):
    """A move job's state: `queued` (waiting for a worker), `running`, then one final state."""

    QUEUED = "queued"
    RUNNING = "running"
    COMPLETED = "completed"  # final status 0x0000
    COMPLETED_WITH_FAILURES = "completed_with_failures"  # 0xB000: some sub-operations failed
    FAILED = "failed"  # 0xA701 / 0xA702 / 0xC000 ...: nothing (or nothing useful) was moved
    CANCELLED = "cancelled"  # cancelled by a caller (0xFE00)
    INTERRUPTED = "interrupted"  # cut off by the API process stopping (shutdown or crash)

    @property
    def is_open(self) -> bool:
        return self in (MoveJobStatus.QUEUED, MoveJobStatus.RUNNING)


OPEN_STATUSES = (MoveJobStatus.QUEUED, MoveJobStatus.RUNNING)


class MoveJob(Base):
    """One tracked C-MOVE of a study to a destination: what was asked, by whom, its progress and its outcome."""

    __tablename__ = "move_jobs"
    __table_args__ = (Index("ix_move_jobs_created_at", "created_at"),)

    id: Mapped[str] = mapped_column(String(32), primary_key=True)  # uuid4 hex
    spanner_config_id: Mapped[int | None] = mapped_column(
        ForeignKey("spanner_configs.id", ondelete="SET NULL"), index=True)
    spanner_config_name: Mapped[str] = mapped_column(String(64))  # kept when the config is deleted
    study_uid: Mapped[str] = mapped_column(String(64))
    destination_ae: Mapped[str] = mapped_column(String(16))
    strategy: Mapped[CmoveStrategy] = mapped_column(value_enum(CmoveStrategy, "move_strategy"))
    status: Mapped[MoveJobStatus] = mapped_column(
        value_enum(MoveJobStatus, "move_job_status"), default=MoveJobStatus.QUEUED, index=True)
    instance_id: Mapped[str] = mapped_column(String(64))
    requested_by: Mapped[str | None] = mapped_column(String(128))
    remaining: Mapped[int | None] = mapped_column(Integer)  # None until the locate sized the move
    completed: Mapped[int] = mapped_column(Integer, default=0)
    failed: Mapped[int] = mapped_column(Integer, default=0)
    warning: Mapped[int] = mapped_column(Integer, default=0)
    failed_uids: Mapped[list[str] | None] = mapped_column(JsonType)
    dimse_status: Mapped[int | None] = mapped_column(Integer)
    error_comment: Mapped[str | None] = mapped_column(Text)
    created_at: Mapped[datetime] = mapped_column(UtcDateTime, default=utc_now)
    started_at: Mapped[datetime | None] = mapped_column(UtcDateTime)
    finished_at: Mapped[datetime | None] = mapped_column(UtcDateTime)

    def __repr__(self) -> str:
        return f"MoveJob(id={self.id!r}, study_uid={self.study_uid!r}, status={self.status!r})"
