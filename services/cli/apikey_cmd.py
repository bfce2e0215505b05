"""`axiom apikey create|list|revoke`: API keys for the coordinator and the API (shared.security.api_keys).

The database is get_settings().db.url. `create` migrates it to the newest revision first when it is empty or
behind (like `config apply`); `list` and `revoke` never migrate and ask for `axiom db upgrade` on an unmigrated
database. A key is printed once, by `create`; nothing ever prints a hash.
"""

from __future__ import annotations

import getpass
from datetime import datetime

import typer
from rich import box
from rich.console import Console
from rich.markup import escape
from rich.table import Table

from services.cli.config_cmd import migrate_if_needed
from services.cli.errors import display_url, user_errors
from shared.config import get_settings
from shared.db.migrations import current_revision
from shared.db.models import Role
from shared.db.repo.api_keys import get_api_key
from shared.db.session import make_engine, make_sessionmaker, session_scope
from shared.security.api_keys import create_api_key, list_api_keys, revoke_api_key

console = Console()
apikey_app = typer.Typer(help="API keys for the HTTP services: create (shown once), list, revoke.",
                         no_args_is_help=True)


def _default_creator() -> str:
    try:
        return f"cli:{getpass.getuser()}"
    except (KeyError, OSError):
        return "cli"


def _require_migrated(url: str) -> None:
    if current_revision(url) is None:
        raise ValueError(f"database {display_url(url)} is not initialised: run `axiom db upgrade`")


def _when(value: datetime | None) -> str:
    return value.strftime("%Y-%m-%d %H:%M") if value else "-"


@apikey_app.command("create")
def create(
    name: str = typer.Option(..., "--name", help='a unique label, e.g. "ohif-viewer"'),
    role: Role = typer.Option(Role.USER, "--role", help="user (queries) or admin (everything)"),
    created_by: str = typer.Option(None, "--created-by", help="who asked for it (default: cli:<login>)"),
) -> None:
    """Create a key and print it once: store it now, it cannot be shown again."""
    url = get_settings().db.url
    with user_errors(url):
        migrate_if_needed(url)
        with session_scope(make_sessionmaker(make_engine(url))) as session:
            row, key = create_api_key(session, name=name, role=role, created_by=created_by or _default_creator())
            prefix, role_value = row.prefix, row.role.value
    console.print(f"created API key [bold]{escape(name)}[/bold] (role {role_value}, prefix {prefix})")
    typer.echo(key)
    console.print("[yellow]Store this key now: it cannot be shown again.[/yellow]")


@apikey_app.command("list")
def list_keys() -> None:
    """List every key: name, prefix, role, created, last used, revoked (UTC; never the key or its hash)."""
    url = get_settings().db.url
    with user_errors(url):
        _require_migrated(url)
        with session_scope(make_sessionmaker(make_engine(url))) as session:
            keys = list_api_keys(session)
    if not keys:
        console.print("no API keys (create one with `axiom apikey create --name NAME --role user`)")
        return
    table = Table(box=box.SIMPLE_HEAD, pad_edge=False)
    for column in ("name", "prefix", "role"):  # identifiers never wrap; timestamps may (narrow terminals)
        table.add_column(column, no_wrap=True)
    for column in ("created", "last used", "revoked"):
        table.add_column(column, min_width=10)  # on 80 columns the date and the time stack
    for key in keys:
        style = "dim" if not key.is_active else None
        table.add_row(escape(key.name), key.prefix, key.role.value, _when(key.created_at),
                      _when(key.last_used_at), _when(key.revoked_at), style=style)
    console.print(table)


@apikey_app.command("revoke")
def revoke(name: str = typer.Argument(..., help="the key's name")) -> None:
    """Revoke a key: it stops authenticating at once and stays listed."""
    url = get_settings().db.url
    with user_errors(url):
        _require_migrated(url)
        with session_scope(make_sessionmaker(make_engine(url))) as session:
            row = get_api_key(session, name=name)
            if row is None:
                raise LookupError(f"no API key named {name!r}")
            revoked = revoke_api_key(session, name=name)
            revoked_at = row.revoked_at
    if revoked:
        console.print(f"revoked API key {escape(name)}")
    else:
        console.print(f"API key {escape(name)} was already revoked ({_when(revoked_at)})")


def register(app: typer.Typer) -> None:
    """Add the `apikey` command group to the `axiom` app."""
    app.add_typer(apikey_app, name="apikey")
