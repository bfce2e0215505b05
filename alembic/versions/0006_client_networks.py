"""A spanner config's client network allowlist for the HTTP query routes.

- `spanner_configs.allowed_client_networks`: a JSON list of CIDR blocks; NULL (or empty) allows any client address.

Revision ID: 0006
Revises: 0005
Create Date: 2026-11-23 17:20:00+00:00
"""
from typing import Sequence, Union

import sqlalchemy as sa
from alembic import op
from sqlalchemy.dialects import postgresql

revision: str = "0006"
down_revision: Union[str, Sequence[str], None] = "0005"
branch_labels: Union[str, Sequence[str], None] = None
depends_on: Union[str, Sequence[str], None] = None

JSON = sa.JSON().with_variant(postgresql.JSONB(astext_type=sa.Text()), "postgresql")


def upgrade() -> None:
    """Add `spanner_configs.allowed_client_networks`."""
    with op.batch_alter_table("spanner_configs") as batch:
        batch.add_column(sa.Column("allowed_client_networks", JSON, nullable=True))


def downgrade() -> None:
    """Drop `spanner_configs.allowed_client_networks`."""
    with op.batch_alter_table("spanner_configs") as batch:
        batch.drop_column("allowed_client_networks")
