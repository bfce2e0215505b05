"""Tracked C-MOVE jobs of the API: the `move_jobs` table.

- One row per job (id: uuid4 hex): study, Move Destination AE title, strategy, status, the instance running it,
  the sub-operation counts (PS3.4 C.4.2.1.4), the Failed SOP Instance UID List, the final DIMSE status and timings.
- `spanner_config_id` is SET NULL when the config is deleted; `spanner_config_name` keeps its name.
- `strategy` and `status` are VARCHAR + named CHECKs (shared.db.models.spanner.value_enum), the same on PostgreSQL
  and SQLite; constraint names follow shared.db.base.NAMING_CONVENTION.

Revision ID: 0008
Revises: 0007
Create Date: 2026-12-04 17:00:00+00:00
"""
from typing import Sequence, Union

import sqlalchemy as sa
from alembic import op
from sqlalchemy.dialects import postgresql

revision: str = "0008"
down_revision: Union[str, Sequence[str], None] = "0007"
branch_labels: Union[str, Sequence[str], None] = None
depends_on: Union[str, Sequence[str], None] = None

JSON = sa.JSON().with_variant(postgresql.JSONB(astext_type=sa.Text()), "postgresql")
STATUSES = ("queued", "running", "completed", "completed_with_failures", "failed", "cancelled", "interrupted")


def _in(column: str, values: Sequence[str]) -> str:
    return f"{column} IN ({', '.join(repr(value) for value in values)})"


def upgrade() -> None:
    """Create `move_jobs` with its indexes."""
    op.create_table(
        "move_jobs",
        sa.Column("id", sa.String(length=32), nullable=False),
        sa.Column("spanner_config_id", sa.Integer(), nullable=True),
        sa.Column("spanner_config_name", sa.String(length=64), nullable=False),
        sa.Column("study_uid", sa.String(length=64), nullable=False),
        sa.Column("destination_ae", sa.String(length=16), nullable=False),
        sa.Column("strategy", sa.String(length=6), nullable=False),
        sa.Column("status", sa.String(length=23), nullable=False),
        sa.Column("instance_id", sa.String(length=64), nullable=False),
        sa.Column("requested_by", sa.String(length=128), nullable=True),
        sa.Column("remaining", sa.Integer(), nullable=True),
        sa.Column("completed", sa.Integer(), nullable=False),
        sa.Column("failed", sa.Integer(), nullable=False),
        sa.Column("warning", sa.Integer(), nullable=False),
        sa.Column("failed_uids", JSON, nullable=True),
        sa.Column("dimse_status", sa.Integer(), nullable=True),
        sa.Column("error_comment", sa.Text(), nullable=True),
        sa.Column("created_at", sa.DateTime(timezone=True), nullable=False),
        sa.Column("started_at", sa.DateTime(timezone=True), nullable=True),
        sa.Column("finished_at", sa.DateTime(timezone=True), nullable=True),
        sa.ForeignKeyConstraint(["spanner_config_id"], ["spanner_configs.id"], ondelete="SET NULL",
                                name=op.f("fk_move_jobs_spanner_config_id_spanner_configs")),
        sa.PrimaryKeyConstraint("id", name=op.f("pk_move_jobs")),
        sa.CheckConstraint(_in("strategy", ("DIRECT", "PROXY", "HYBRID")), name=op.f("ck_move_jobs_move_strategy")),
        sa.CheckConstraint(_in("status", STATUSES), name=op.f("ck_move_jobs_move_job_status")),
    )
    op.create_index(op.f("ix_move_jobs_spanner_config_id"), "move_jobs", ["spanner_config_id"])
    op.create_index(op.f("ix_move_jobs_status"), "move_jobs", ["status"])
    op.create_index(op.f("ix_move_jobs_created_at"), "move_jobs", ["created_at"])


def downgrade() -> None:
    """Drop `move_jobs` (the job history is lost)."""
    op.drop_index(op.f("ix_move_jobs_created_at"), table_name="move_jobs")
    op.drop_index(op.f("ix_move_jobs_status"), table_name="move_jobs")
    op.drop_index(op.f("ix_move_jobs_spanner_config_id"), table_name="move_jobs")
    op.drop_table("move_jobs")
