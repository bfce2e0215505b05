"""Service management: the `service_instances` table (registration, heartbeat, desired/actual state).

- One row per Axiom process (`service_id` unique: `listener:<instance>`, `coordinator:<instance>`,
  `worker:<celery hostname>`, `api:<instance>`), with host, pid, `details` JSON, `last_heartbeat_at`
  and its own heartbeat interval `heartbeat_seconds` (health is judged against it).
- `desired_state` (running/stopped) and `restart_generation` are written by operators through the API;
  `actual_state` (running/stopped/failed) and `applied_generation` by the process when it reconciles.
- The three state columns are VARCHAR + named CHECKs (shared.db.models.spanner.value_enum), the same on
  PostgreSQL and SQLite; constraint names follow shared.db.base.NAMING_CONVENTION.

Revision ID: 0007
Revises: 0006
Create Date: 2026-12-04 10:00:00+00:00
"""
from typing import Sequence, Union

import sqlalchemy as sa
from alembic import op
from sqlalchemy.dialects import postgresql

revision: str = "0007"
down_revision: Union[str, Sequence[str], None] = "0006"
branch_labels: Union[str, Sequence[str], None] = None
depends_on: Union[str, Sequence[str], None] = None

JSON = sa.JSON().with_variant(postgresql.JSONB(astext_type=sa.Text()), "postgresql")


def upgrade() -> None:
    """Create `service_instances` (service ids unique)."""
    op.create_table(
        "service_instances",
        sa.Column("id", sa.Integer(), nullable=False),
        sa.Column("service_id", sa.String(length=255), nullable=False),
        sa.Column("kind", sa.String(length=11), nullable=False),
        sa.Column("instance_id", sa.String(length=128), nullable=False),
        sa.Column("host", sa.String(length=255), nullable=True),
        sa.Column("pid", sa.Integer(), nullable=True),
        sa.Column("desired_state", sa.String(length=7), server_default="running", nullable=False),
        sa.Column("actual_state", sa.String(length=7), server_default="running", nullable=False),
        sa.Column("restart_generation", sa.Integer(), server_default="0", nullable=False),
        sa.Column("applied_generation", sa.Integer(), server_default="0", nullable=False),
        sa.Column("started_at", sa.DateTime(timezone=True), nullable=True),
        sa.Column("last_heartbeat_at", sa.DateTime(timezone=True), nullable=True),
        sa.Column("heartbeat_seconds", sa.Float(), server_default="5", nullable=False),
        sa.Column("details", JSON, nullable=True),
        sa.Column("created_at", sa.DateTime(timezone=True), server_default=sa.func.now(), nullable=False),
        sa.PrimaryKeyConstraint("id", name=op.f("pk_service_instances")),
        sa.UniqueConstraint("service_id", name=op.f("uq_service_instances_service_id")),
        sa.CheckConstraint("kind IN ('listener', 'coordinator', 'worker', 'api')",
                           name=op.f("ck_service_instances_service_kind")),
        sa.CheckConstraint("desired_state IN ('running', 'stopped')", name=op.f("ck_service_instances_desired_state")),
        sa.CheckConstraint("actual_state IN ('running', 'stopped', 'failed')",
                           name=op.f("ck_service_instances_actual_state")),
    )


def downgrade() -> None:
    """Drop `service_instances` (registrations are rebuilt by the next heartbeats)."""
    op.drop_table("service_instances")
