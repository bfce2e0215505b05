"""`axiom config apply|show` and `axiom db upgrade|downgrade|current`.

The database is get_settings().db.url (DATABASE_URL, else the embedded SQLite file). `config apply` first migrates
the database to the newest revision when it is empty or behind (the embedded mode needs no separate `db upgrade`
step); `config show` never writes and asks for `axiom db upgrade` on an unmigrated database.
"""

from __future__ import annotations

import json
from pathlib import Path

import typer
import yaml
from rich.console import Console
from rich.markup import escape

from services.cli.errors import display_url, user_errors
from shared.config import get_settings
from shared.db.migrations import current_revision, downgrade_to_base, head_revision, upgrade_to_head
from shared.db.session import make_engine, make_sessionmaker, session_scope
from shared.provisioning import apply_config_yaml, export_config
from shared.provisioning.yaml_source import load_located_yaml

console = Console()
config_app = typer.Typer(help="Declare sources, spanner configs and destinations in a YAML file, and show them.",
                         no_args_is_help=True)
db_app = typer.Typer(help="Database schema migrations (Alembic).", no_args_is_help=True)
ACTION_STYLE = {"created": "green", "updated": "yellow", "unchanged": "dim"}


def migrate_if_needed(url: str) -> None:
    current, head = current_revision(url), head_revision()
    if current != head:
        upgrade_to_head(url)
        console.print(f"[dim]database {escape(display_url(url))} migrated {current or 'empty'} -> {head}[/dim]", soft_wrap=True)


@config_app.command("apply")
def apply(
    file: Path = typer.Argument(..., help="YAML file with `sources:`, `spanner_configs:`, `destinations:`"),
    dry_run: bool = typer.Option(False, "--dry-run", help="validate and report, then roll back"),
) -> None:
    """Create or update the file's sources, spanner configs and destinations; running it twice changes nothing."""
    url = get_settings().db.url
    with user_errors(url):
        text = file.read_text(encoding="utf-8")
        try:
            load_located_yaml(text)  # a file that is not even YAML must not migrate the database first
        except ValueError as exc:
            raise ValueError(f"{file}: {exc}") from None
        migrate_if_needed(url)
        factory = make_sessionmaker(make_engine(url))
        with session_scope(factory) as session:
            try:
                report = apply_config_yaml(session, text, scp=get_settings().scp)
            except ValueError as exc:
                raise ValueError(f"{file}: {exc}") from None
            if dry_run:
                session.rollback()
    for change in report.changes:
        style = ACTION_STYLE[change.action]
        console.print(f"[{style}]{change.action:<9}[/{style}] {change.entity} {escape(change.name)}")
    suffix = " (dry run: nothing written)" if dry_run else ""
    console.print(f"{report.summary()}{suffix}")


@config_app.command("show")
def show(as_json: bool = typer.Option(False, "--json", help="JSON instead of YAML")) -> None:
    """Print the sources, spanner configs and destinations as a file `config apply` accepts (secrets masked)."""
    url = get_settings().db.url
    with user_errors(url):
        if current_revision(url) is None:
            raise ValueError(f"database {display_url(url)} is not initialised: run `axiom db upgrade`")
        factory = make_sessionmaker(make_engine(url))
        with session_scope(factory) as session:
            document = export_config(session)
    if as_json:
        typer.echo(json.dumps(document, indent=2, ensure_ascii=False))
    else:
        typer.echo(yaml.safe_dump(document, sort_keys=False, allow_unicode=True), nl=False)


@db_app.command("upgrade")
def db_upgrade() -> None:
    """Migrate the database to the newest schema revision (creates the embedded SQLite file if needed)."""
    url = get_settings().db.url
    with user_errors(url):
        before = current_revision(url)
        upgrade_to_head(url)
        after = current_revision(url)
    console.print(f"{display_url(url)}: {before or 'empty'} -> {after}")


@db_app.command("downgrade")
def db_downgrade(
    target: str = typer.Argument("base", help="only `base` (drop every table) is supported"),
    yes: bool = typer.Option(False, "--yes", help="confirm: this deletes every table and its data"),
) -> None:
    """Undo every migration: drops all of Axiom's tables and their data."""
    url = get_settings().db.url
    with user_errors(url):
        if target != "base":
            raise ValueError(f"only `axiom db downgrade base` is supported, not {target!r}")
        if not yes:
            raise ValueError("this drops every table and its data; add --yes to confirm")
        downgrade_to_base(url)
    console.print(f"{display_url(url)}: downgraded to base (no tables)")


@db_app.command("current")
def db_current() -> None:
    """Print the database's schema revision and the newest one."""
    url = get_settings().db.url
    with user_errors(url):
        current, head = current_revision(url), head_revision()
    state = "up to date" if current == head else ("empty" if current is None else "behind")
    console.print(f"{display_url(url)}: revision {current or '-'} (head {head}, {state})")


def register(app: typer.Typer) -> None:
    """Add the `config` and `db` command groups to the `axiom` app."""
    app.add_typer(config_app, name="config")
    app.add_typer(db_app, name="db")
