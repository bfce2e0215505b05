"""Run Alembic from code: `upgrade_to_head(url)`, `downgrade_to_base(url)`, `current_revision(url)`.

Where the migration scripts are: the repository's `alembic/` directory, found next to the `shared` package
(`<repo>/shared/db/migrations.py` -> `<repo>/alembic`). That works from any working directory for a source checkout
and an editable install (`pip install -e .`), which is how Axiom is installed (Makefile, Dockerfiles). A deployment
that keeps the scripts elsewhere sets AXIOM_ALEMBIC_DIR. The repo's alembic.ini is read when present (for its
settings only; its logging section is not applied), else Alembic runs on an in-memory config.
"""

from __future__ import annotations

import os
from pathlib import Path

from alembic import command
from alembic.config import Config
from alembic.runtime.migration import MigrationContext
from alembic.script import ScriptDirectory
from sqlalchemy import create_engine, pool

from shared.db.session import ensure_sqlite_directory, normalize_database_url, sqlite_file_path

REPO_ROOT = Path(__file__).resolve().parents[2]


def alembic_dir() -> Path:
    """The directory holding env.py and versions/ (AXIOM_ALEMBIC_DIR overrides the repository's `alembic/`)."""
    override = os.environ.get("AXIOM_ALEMBIC_DIR")
    path = Path(override).expanduser().resolve() if override else REPO_ROOT / "alembic"
    if not (path / "env.py").is_file():
        raise FileNotFoundError(f"Alembic scripts not found at {path} (set AXIOM_ALEMBIC_DIR to the alembic/ folder)")
    return path


def alembic_config(url: str | None = None) -> Config:
    """An Alembic Config pointing at Axiom's scripts; `url` (if given) is the database to migrate."""
    ini = REPO_ROOT / "alembic.ini"
    config = Config(str(ini)) if ini.is_file() else Config()
    config.set_main_option("script_location", str(alembic_dir()))
    config.attributes["configure_logger"] = False
    if url is not None:
        config.attributes["url"] = url
    return config


def head_revision() -> str | None:
    """The newest revision among the scripts."""
    return ScriptDirectory.from_config(alembic_config()).get_current_head()


def current_revision(url: str) -> str | None:
    """The revision the database is at (None for an empty or unmigrated database). Never creates anything."""
    sqlite_path = sqlite_file_path(url)
    if sqlite_path is not None and not sqlite_path.expanduser().exists():
        return None
    engine = create_engine(normalize_database_url(url), poolclass=pool.NullPool)
    try:
        with engine.connect() as connection:
            return MigrationContext.configure(connection).get_current_revision()
    finally:
        engine.dispose()


def is_up_to_date(url: str) -> bool:
    """True when the database is at the scripts' head revision."""
    return current_revision(url) == head_revision()


def upgrade_to_head(url: str) -> None:
    """Migrate the database at `url` to the newest revision (creating a SQLite file and its folder if needed)."""
    ensure_sqlite_directory(url)
    command.upgrade(alembic_config(url), "head")


def downgrade_to_base(url: str) -> None:
    """Undo every revision: drops all of Axiom's tables (and their data)."""
    command.downgrade(alembic_config(url), "base")
