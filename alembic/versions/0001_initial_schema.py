"""Initial schema: sources, spanner_configs, spanner_source_mappings, spanner_query_logs.

Enums are VARCHAR + a named CHECK (the models use Enum(native_enum=False, create_constraint=True)), so PostgreSQL
and SQLite hold the same schema; constraint names follow shared.db.base.NAMING_CONVENTION.

Revision ID: 0001
Revises:
Create Date: 2026-11-23 10:33:12+00:00
"""
from typing import Sequence, Union

import sqlalchemy as sa
from alembic import op
from sqlalchemy.dialects import postgresql

revision: str = "0001"
down_revision: Union[str, Sequence[str], None] = None
branch_labels: Union[str, Sequence[str], None] = None
depends_on: Union[str, Sequence[str], None] = None

JSON = sa.JSON().with_variant(postgresql.JSONB(astext_type=sa.Text()), "postgresql")


def _timestamps() -> list[sa.Column]:
    return [
        sa.Column("created_at", sa.DateTime(timezone=True), server_default=sa.func.now(), nullable=False),
        sa.Column("updated_at", sa.DateTime(timezone=True), server_default=sa.func.now(), nullable=False),
    ]


def _enum_check(table: str, column: str, check_name: str, values: Sequence[str]) -> sa.CheckConstraint:
    allowed = ", ".join(f"'{value}'" for value in values)
    return sa.CheckConstraint(f"{column} IN ({allowed})", name=op.f(f"ck_{table}_{check_name}"))


def upgrade() -> None:
    """Create the four tables."""
    op.create_table(
        "sources",
        sa.Column("id", sa.Integer(), nullable=False),
        sa.Column("name", sa.String(length=64), nullable=False),
        sa.Column("kind", sa.String(length=32), nullable=False),
        sa.Column("connection", JSON, nullable=False),
        sa.Column("description", sa.Text(), nullable=True),
        sa.Column("is_enabled", sa.Boolean(), server_default="1", nullable=False),
        *_timestamps(),
        sa.PrimaryKeyConstraint("id", name=op.f("pk_sources")),
        sa.UniqueConstraint("name", name=op.f("uq_sources_name")),
        _enum_check("sources", "kind", "source_kind", ("dimse", "dicomweb", "google_healthcare")),
    )
    op.create_table(
        "spanner_configs",
        sa.Column("id", sa.Integer(), nullable=False),
        sa.Column("name", sa.String(length=64), nullable=False),
        sa.Column("description", sa.Text(), nullable=True),
        sa.Column("max_concurrent_sources", sa.Integer(), server_default="8", nullable=False),
        sa.Column("query_timeout_seconds", sa.Float(), server_default="30", nullable=False),
        sa.Column("failure_strategy", sa.String(length=17), server_default="BEST_EFFORT", nullable=False),
        sa.Column("minimum_success_threshold", sa.Integer(), server_default="1", nullable=False),
        sa.Column("deduplication_strategy", sa.String(length=13), server_default="MOST_COMPLETE", nullable=False),
        sa.Column("cmove_strategy", sa.String(length=6), server_default="PROXY", nullable=False),
        sa.Column("supports_dimse_scp", sa.Boolean(), server_default="1", nullable=False),
        sa.Column("supports_qido", sa.Boolean(), server_default="1", nullable=False),
        sa.Column("supports_wado", sa.Boolean(), server_default="1", nullable=False),
        sa.Column("supports_cmove", sa.Boolean(), server_default="1", nullable=False),
        sa.Column("supports_cget", sa.Boolean(), server_default="1", nullable=False),
        sa.Column("scp_ae_title", sa.String(length=16), nullable=True),
        sa.Column("cache_ttl_seconds", sa.Integer(), server_default="0", nullable=False),
        sa.Column("is_enabled", sa.Boolean(), server_default="1", nullable=False),
        *_timestamps(),
        sa.PrimaryKeyConstraint("id", name=op.f("pk_spanner_configs")),
        sa.UniqueConstraint("name", name=op.f("uq_spanner_configs_name")),
        sa.UniqueConstraint("scp_ae_title", name=op.f("uq_spanner_configs_scp_ae_title")),
        _enum_check("spanner_configs", "failure_strategy", "failure_strategy",
                    ("FAIL_FAST", "BEST_EFFORT", "MINIMUM_THRESHOLD")),
        _enum_check("spanner_configs", "deduplication_strategy", "deduplication_strategy",
                    ("FIRST_WINS", "MOST_COMPLETE", "MERGE_ALL")),
        _enum_check("spanner_configs", "cmove_strategy", "cmove_strategy", ("DIRECT", "PROXY", "HYBRID")),
    )
    op.create_table(
        "spanner_source_mappings",
        sa.Column("id", sa.Integer(), nullable=False),
        sa.Column("spanner_config_id", sa.Integer(), nullable=False),
        sa.Column("source_id", sa.Integer(), nullable=False),
        sa.Column("priority", sa.Integer(), server_default="100", nullable=False),
        sa.Column("timeout_seconds", sa.Float(), nullable=True),
        sa.Column("max_retries", sa.Integer(), server_default="0", nullable=False),
        sa.Column("is_enabled", sa.Boolean(), server_default="1", nullable=False),
        sa.Column("additional_query_filters", JSON, nullable=True),
        sa.ForeignKeyConstraint(["source_id"], ["sources.id"], ondelete="RESTRICT",
                                name=op.f("fk_spanner_source_mappings_source_id_sources")),
        sa.ForeignKeyConstraint(["spanner_config_id"], ["spanner_configs.id"], ondelete="CASCADE",
                                name=op.f("fk_spanner_source_mappings_spanner_config_id_spanner_configs")),
        sa.PrimaryKeyConstraint("id", name=op.f("pk_spanner_source_mappings")),
        sa.UniqueConstraint("spanner_config_id", "source_id",
                            name=op.f("uq_spanner_source_mappings_spanner_config_id_source_id")),
    )
    op.create_index(op.f("ix_spanner_source_mappings_source_id"), "spanner_source_mappings", ["source_id"])
    op.create_table(
        "spanner_query_logs",
        sa.Column("id", sa.Integer(), nullable=False),
        sa.Column("query_id", sa.String(length=64), nullable=False),
        sa.Column("spanner_config_id", sa.Integer(), nullable=True),
        sa.Column("query_type", sa.String(length=6), nullable=False),
        sa.Column("query_level", sa.String(length=16), nullable=False),
        sa.Column("query_filters", JSON, nullable=True),
        sa.Column("requester_ae_title", sa.String(length=16), nullable=True),
        sa.Column("requester_user", sa.String(length=128), nullable=True),
        sa.Column("client_address", sa.String(length=128), nullable=True),
        sa.Column("status", sa.String(length=9), nullable=False),
        sa.Column("source_outcomes", JSON, nullable=True),
        sa.Column("raw_result_count", sa.Integer(), nullable=True),
        sa.Column("deduplicated_result_count", sa.Integer(), nullable=True),
        sa.Column("duration_ms", sa.Float(), nullable=True),
        sa.Column("error_message", sa.Text(), nullable=True),
        sa.Column("started_at", sa.DateTime(timezone=True), nullable=False),
        sa.Column("completed_at", sa.DateTime(timezone=True), nullable=True),
        sa.ForeignKeyConstraint(["spanner_config_id"], ["spanner_configs.id"], ondelete="SET NULL",
                                name=op.f("fk_spanner_query_logs_spanner_config_id_spanner_configs")),
        sa.PrimaryKeyConstraint("id", name=op.f("pk_spanner_query_logs")),
        _enum_check("spanner_query_logs", "query_type", "query_type", ("C-FIND", "C-MOVE", "C-GET", "QIDO", "WADO")),
        _enum_check("spanner_query_logs", "status", "query_status",
                    ("running", "completed", "partial", "failed", "cancelled")),
    )
    op.create_index(op.f("ix_spanner_query_logs_query_id"), "spanner_query_logs", ["query_id"], unique=True)
    op.create_index(op.f("ix_spanner_query_logs_spanner_config_id"), "spanner_query_logs", ["spanner_config_id"])
    op.create_index(op.f("ix_spanner_query_logs_started_at"), "spanner_query_logs", ["started_at"])


def downgrade() -> None:
    """Drop the four tables (children first)."""
    op.drop_index(op.f("ix_spanner_query_logs_started_at"), table_name="spanner_query_logs")
    op.drop_index(op.f("ix_spanner_query_logs_spanner_config_id"), table_name="spanner_query_logs")
    op.drop_index(op.f("ix_spanner_query_logs_query_id"), table_name="spanner_query_logs")
    op.drop_table("spanner_query_logs")
    op.drop_index(op.f("ix_spanner_source_mappings_source_id"), table_name="spanner_source_mappings")
    op.drop_table("spanner_source_mappings")
    op.drop_table("spanner_configs")
    op.drop_table("sources")
