"""Users: the `users` table (username + argon2id password hash, role admin/user, active flag, last login).

The role is VARCHAR + a named CHECK like `api_keys.role` (shared.db.models.api_key.Role), so PostgreSQL and SQLite
hold the same schema; constraint names follow shared.db.base.NAMING_CONVENTION.

Revision ID: 0005
Revises: 0004
Create Date: 2026-12-02 09:00:00+00:00
"""
from typing import Sequence, Union

import sqlalchemy as sa
from alembic import op

revision: str = "0005"
down_revision: Union[str, Sequence[str], None] = "0004"
branch_labels: Union[str, Sequence[str], None] = None
depends_on: Union[str, Sequence[str], None] = None


def upgrade() -> None:
    """Create `users` (usernames unique)."""
    op.create_table(
        "users",
        sa.Column("id", sa.Integer(), nullable=False),
        sa.Column("username", sa.String(length=64), nullable=False),
        sa.Column("password_hash", sa.String(length=255), nullable=False),
        sa.Column("role", sa.String(length=5), nullable=False),
        sa.Column("is_active", sa.Boolean(), server_default="1", nullable=False),
        sa.Column("created_at", sa.DateTime(timezone=True), server_default=sa.func.now(), nullable=False),
        sa.Column("last_login_at", sa.DateTime(timezone=True), nullable=True),
        sa.PrimaryKeyConstraint("id", name=op.f("pk_users")),
        sa.UniqueConstraint("username", name=op.f("uq_users_username")),
        sa.CheckConstraint("role IN ('admin', 'user')", name=op.f("ck_users_role")),
    )


def downgrade() -> None:
    """Drop `users` (every user is lost; API keys are not touched)."""
    op.drop_table("users")
