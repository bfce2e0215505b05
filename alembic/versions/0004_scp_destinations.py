"""Spanning DIMSE SCP: C-MOVE destinations and the calling AE titles a spanner config accepts.

- `dicom_destinations`: Move Destination AE title (unique) -> host and port, with a named CHECK on the port range.
- `spanner_configs.allowed_calling_ae_titles`: a JSON list of calling AE titles; NULL (or empty) allows any.

Revision ID: 0004
Revises: 0003
Create Date: 2026-12-01 09:00:00+00:00
"""
from typing import Sequence, Union

import sqlalchemy as sa
from alembic import op
from sqlalchemy.dialects import postgresql

revision: str = "0004"
down_revision: Union[str, Sequence[str], None] = "0003"
branch_labels: Union[str, Sequence[str], None] = None
depends_on: Union[str, Sequence[str], None] = None

JSON = sa.JSON().with_variant(postgresql.JSONB(astext_type=sa.Text()), "postgresql")


def upgrade() -> None:
    """Create `dicom_destinations`, add `spanner_configs.allowed_calling_ae_titles`."""
    op.create_table(
        "dicom_destinations",
        sa.Column("id", sa.Integer(), nullable=False),
        sa.Column("ae_title", sa.String(length=16), nullable=False),
        sa.Column("host", sa.String(length=255), nullable=False),
        sa.Column("port", sa.Integer(), nullable=False),
        sa.Column("description", sa.Text(), nullable=True),
        sa.Column("is_enabled", sa.Boolean(), server_default="1", nullable=False),
        sa.Column("created_at", sa.DateTime(timezone=True), server_default=sa.func.now(), nullable=False),
        sa.Column("updated_at", sa.DateTime(timezone=True), server_default=sa.func.now(), nullable=False),
        sa.PrimaryKeyConstraint("id", name=op.f("pk_dicom_destinations")),
        sa.UniqueConstraint("ae_title", name=op.f("uq_dicom_destinations_ae_title")),
        sa.CheckConstraint("port >= 1 AND port <= 65535", name=op.f("ck_dicom_destinations_port_range")),
    )
    with op.batch_alter_table("spanner_configs") as batch:
        batch.add_column(sa.Column("allowed_calling_ae_titles", JSON, nullable=True))


def downgrade() -> None:
    """Drop the column and `dicom_destinations` (every destination is lost)."""
    with op.batch_alter_table("spanner_configs") as batch:
        batch.drop_column("allowed_calling_ae_titles")
    op.drop_table("dicom_destinations")
