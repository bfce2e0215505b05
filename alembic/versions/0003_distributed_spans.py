"""Distributed spans: the `accepted` query status, a deadline per query, and kept results.

- `spanner_query_logs.status` also allows `accepted` (the coordinator queued the query, no worker planned it yet);
  its named CHECK is recreated (VARCHAR(9) already fits).
- `spanner_query_logs.deadline_at`: when a distributed span is finalised whatever its workers did.
- `spanner_query_results`: a finished distributed span's result (codec JSON) until `expires_at` (bounded retention).

Revision ID: 0003
Revises: 0002
Create Date: 2026-11-23 12:00:00+00:00
"""
from typing import Sequence, Union

import sqlalchemy as sa
from alembic import op
from sqlalchemy.dialects import postgresql

revision: str = "0003"
down_revision: Union[str, Sequence[str], None] = "0002"
branch_labels: Union[str, Sequence[str], None] = None
depends_on: Union[str, Sequence[str], None] = None

JSON = sa.JSON().with_variant(postgresql.JSONB(astext_type=sa.Text()), "postgresql")
CHECK = "ck_spanner_query_logs_query_status"
OLD_STATUSES = ("running", "completed", "partial", "failed", "cancelled")
NEW_STATUSES = ("accepted",) + OLD_STATUSES


def _status_check(values: Sequence[str]) -> str:
    return "status IN ({})".format(", ".join(f"'{value}'" for value in values))


def upgrade() -> None:
    """Allow `accepted`, add `deadline_at`, create `spanner_query_results`."""
    with op.batch_alter_table("spanner_query_logs") as batch:
        batch.drop_constraint(op.f(CHECK), type_="check")
        batch.create_check_constraint(op.f(CHECK), _status_check(NEW_STATUSES))
        batch.add_column(sa.Column("deadline_at", sa.DateTime(timezone=True), nullable=True))
    op.create_table(
        "spanner_query_results",
        sa.Column("query_id", sa.String(length=64), nullable=False),
        sa.Column("result", JSON, nullable=False),
        sa.Column("created_at", sa.DateTime(timezone=True), nullable=False),
        sa.Column("expires_at", sa.DateTime(timezone=True), nullable=False),
        sa.ForeignKeyConstraint(["query_id"], ["spanner_query_logs.query_id"], ondelete="CASCADE",
                                name=op.f("fk_spanner_query_results_query_id_spanner_query_logs")),
        sa.PrimaryKeyConstraint("query_id", name=op.f("pk_spanner_query_results")),
    )
    op.create_index(op.f("ix_spanner_query_results_expires_at"), "spanner_query_results", ["expires_at"])


def downgrade() -> None:
    """Drop the results table and the deadline; `accepted` rows become `failed` before the CHECK narrows."""
    op.drop_index(op.f("ix_spanner_query_results_expires_at"), table_name="spanner_query_results")
    op.drop_table("spanner_query_results")
    op.execute("UPDATE spanner_query_logs SET status = 'failed' WHERE status = 'accepted'")
    with op.batch_alter_table("spanner_query_logs") as batch:
        batch.drop_column("deadline_at")
        batch.drop_constraint(op.f(CHECK), type_="check")
        batch.create_check_constraint(op.f(CHECK), _status_check(OLD_STATUSES))
