"""The Alembic revisions give exactly the models (no drift) on PostgreSQL and SQLite, and downgrade to nothing.

PostgreSQL: a uniquely named database on AXIOM_TEST_POSTGRES_URL (default postgres@127.0.0.1:5432, trust auth),
dropped afterwards; skipped (failed under AXIOM_REQUIRE_SERVICES=1) when the server is unreachable.
"""

from __future__ import annotations

import os
import subprocess
import sys
import uuid
from typing import Iterator

import pytest
from alembic.autogenerate import compare_metadata
from alembic.runtime.migration import MigrationContext
from sqlalchemy import create_engine, inspect, text
from sqlalchemy.engine import make_url
from sqlalchemy.exc import OperationalError

from shared.db.migrations import current_revision, downgrade_to_base, head_revision, upgrade_to_head
from shared.db.models import Base
from shared.db.session import normalize_database_url
from tests.peers import require

ADMIN_URL = normalize_database_url(
    os.environ.get("AXIOM_TEST_POSTGRES_URL", "postgresql://postgres@127.0.0.1:5432/postgres"))


def postgres_reachable() -> bool:
    engine = create_engine(ADMIN_URL, connect_args={"connect_timeout": 3})
    try:
        with engine.connect():
            return True
    except OperationalError:
        return False
    finally:
        engine.dispose()


@pytest.fixture()
def postgres_url() -> Iterator[str]:
    require(postgres_reachable(), f"PostgreSQL is not reachable at {make_url(ADMIN_URL).render_as_string()}")
    name = f"axiom_migrations_{uuid.uuid4().hex[:12]}"
    admin = create_engine(ADMIN_URL, isolation_level="AUTOCOMMIT")
    with admin.connect() as connection:
        connection.execute(text(f'CREATE DATABASE "{name}"'))
    try:
        yield make_url(ADMIN_URL).set(database=name).render_as_string(hide_password=False)
    finally:
        with admin.connect() as connection:
            connection.execute(text(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)'))
        admin.dispose()


def schema_drift(url: str) -> list:
    engine = create_engine(url)
    try:
        with engine.connect() as connection:
            context = MigrationContext.configure(connection, opts={"compare_type": True})
            return compare_metadata(context, Base.metadata)
    finally:
        engine.dispose()


def constraint_names(url: str) -> dict[str, set[str]]:
    """CHECK constraint and index names per table (autogenerate does not compare CHECKs, so compare them here)."""
    engine = create_engine(url)
    try:
        inspector = inspect(engine)
        return {
            table: {c["name"] for c in inspector.get_check_constraints(table)}
            | {i["name"] for i in inspector.get_indexes(table) if not i["name"].startswith("uq_")}
            for table in inspector.get_table_names() if table != "alembic_version"
        }
    finally:
        engine.dispose()


def model_constraint_names() -> dict[str, set[str]]:
    from sqlalchemy import CheckConstraint

    return {
        table.name: {c.name for c in table.constraints if isinstance(c, CheckConstraint)}
        | {i.name for i in table.indexes}
        for table in Base.metadata.sorted_tables
    }


def table_names(url: str) -> set[str]:
    engine = create_engine(url)
    try:
        return set(inspect(engine).get_table_names())
    finally:
        engine.dispose()


def assert_upgrade_matches_models_and_downgrades(url: str) -> None:
    assert current_revision(url) is None
    upgrade_to_head(url)
    assert current_revision(url) == head_revision()
    assert schema_drift(url) == []
    assert constraint_names(url) == model_constraint_names()
    downgrade_to_base(url)
    assert table_names(url) == {"alembic_version"}
    assert current_revision(url) is None
    upgrade_to_head(url)  # and it comes back
    assert schema_drift(url) == []


@pytest.mark.integration
def test_postgresql_upgrade_has_no_drift_and_downgrades(postgres_url):
    assert_upgrade_matches_models_and_downgrades(postgres_url)


def test_sqlite_upgrade_has_no_drift_and_downgrades(tmp_path):
    assert_upgrade_matches_models_and_downgrades(f"sqlite:///{tmp_path / 'nested' / 'axiom.db'}")


def test_migrations_run_from_any_working_directory(tmp_path):
    url = f"sqlite:///{tmp_path / 'elsewhere.db'}"
    code = "import sys; from shared.db.migrations import upgrade_to_head; upgrade_to_head(sys.argv[1])"
    subprocess.run([sys.executable, "-c", code, url], cwd=tmp_path, check=True, timeout=60)
    assert current_revision(url) == head_revision()
