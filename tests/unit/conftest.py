"""Fixtures shared by unit tests that need the schema: an embedded SQLite database migrated to head."""

from __future__ import annotations

import pytest

from shared.db.migrations import upgrade_to_head
from shared.db.session import make_engine, make_sessionmaker


@pytest.fixture(scope="module")
def factory(tmp_path_factory):
    """A session factory on a fresh SQLite database at the head revision, one per test module."""
    url = f"sqlite:///{tmp_path_factory.mktemp('db') / 'axiom.db'}"
    upgrade_to_head(url)
    engine = make_engine(url)
    yield make_sessionmaker(engine)
    engine.dispose()


@pytest.fixture()
def session(factory):
    """A session whose uncommitted changes are rolled back after the test."""
    with factory() as session:
        yield session
        session.rollback()
