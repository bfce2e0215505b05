"""Alembic environment for Axiom's schema (target: shared.db.models, one MetaData).

The database, first match wins:
  1. `config.attributes["connection"]`: an open SQLAlchemy Connection (tests, embedding code);
  2. `config.attributes["url"]`: set by shared.db.migrations (the CLI and services use that module);
  3. `alembic -x url=...` on the command line;
  4. `sqlalchemy.url` in the ini file (left unset in the repo's alembic.ini);
  5. shared.config.get_settings().db.url: DATABASE_URL, else the embedded SQLite file.
SQLite gets render_as_batch (ALTER TABLE through copy-and-move); every run compares types (compare_type=True).
"""

from __future__ import annotations

import logging
from logging.config import fileConfig
from typing import Any

from alembic import context
from sqlalchemy import JSON, create_engine, pool

from shared.db.base import UtcDateTime
from shared.db.models import Base

config = context.config
if config.config_file_name is not None and config.attributes.get("configure_logger", True):
    fileConfig(config.config_file_name, disable_existing_loggers=False)

target_metadata = Base.metadata
logger = logging.getLogger("alembic.env")


def database_url() -> str:
    """The URL to migrate when no connection was handed in (see the module docstring for the order)."""
    url = config.attributes.get("url") or context.get_x_argument(as_dictionary=True).get("url")
    url = url or config.get_main_option("sqlalchemy.url")
    if not url:
        from shared.config import get_settings

        url = get_settings().db.url
    return url


def render_item(type_: str, obj: Any, autogen_context: Any) -> str | bool:
    """Render Axiom's own column types as plain SQLAlchemy types so revisions never import application code."""
    if type_ != "type":
        return False
    if isinstance(obj, UtcDateTime):
        return "sa.DateTime(timezone=True)"
    if isinstance(obj, JSON) and "postgresql" in getattr(obj, "_variant_mapping", {}):
        autogen_context.imports.add("from sqlalchemy.dialects import postgresql")
        return "sa.JSON().with_variant(postgresql.JSONB(astext_type=sa.Text()), 'postgresql')"
    return False


def _configure(**kwargs: Any) -> None:
    context.configure(
        target_metadata=target_metadata,
        compare_type=True,
        render_item=render_item,
        **kwargs,
    )


def run_migrations_offline() -> None:
    """Emit SQL to stdout (`alembic upgrade head --sql`)."""
    url = database_url()
    _configure(url=url, literal_binds=True, dialect_opts={"paramstyle": "named"},
               render_as_batch=url.startswith("sqlite"))
    with context.begin_transaction():
        context.run_migrations()


def _run_on(connection: Any) -> None:
    _configure(connection=connection, render_as_batch=connection.dialect.name == "sqlite")
    with context.begin_transaction():
        context.run_migrations()


def run_migrations_online() -> None:
    """Migrate through a live connection: the one handed in, or a fresh NullPool engine."""
    connection = config.attributes.get("connection")
    if connection is not None:
        _run_on(connection)
        return
    url = database_url()
    from shared.db.session import ensure_sqlite_directory, normalize_database_url

    url = normalize_database_url(url)
    ensure_sqlite_directory(url)
    # A plain engine on purpose: SQLite foreign keys stay OFF while migrating, so batch table rebuilds
    # (copy, drop, rename) never fire ON DELETE CASCADE on child rows.
    engine = create_engine(url, poolclass=pool.NullPool)
    try:
        with engine.connect() as connection:
            _run_on(connection)
    finally:
        engine.dispose()


if context.is_offline_mode():
    run_migrations_offline()
else:
    run_migrations_online()
