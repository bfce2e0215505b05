"""`axiom user create|list|disable|enable|set-password`: users of the API (shared.security.users).

The database is get_settings().db.url. `create` migrates it to the newest revision first when it is empty or
behind (like `apikey create`), so `axiom user create NAME --admin` is how the first administrator comes to be (there
is no "first login becomes admin"). The other commands never migrate.

Passwords are read with a hidden prompt, asked twice, or - for scripts - from one line of standard input with
`--password-stdin`; they are never echoed, printed or logged.
"""

from __future__ import annotations

import sys
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
from shared.db.session import make_engine, make_sessionmaker, session_scope
from shared.security.passwords import check_password_rules
from shared.security.users import create_user, list_users, set_user_active, set_user_password

console = Console()
user_app = typer.Typer(help="Users of the API: create (the first admin too), list, disable, enable, set-password.",
                       no_args_is_help=True)
STDIN_HELP = "read the password from one line of standard input instead of prompting (for scripts)"


def _require_migrated(url: str) -> None:
    if current_revision(url) is None:
        raise ValueError(f"database {display_url(url)} is not initialised: run `axiom db upgrade`")


def _when(value: datetime | None) -> str:
    return value.strftime("%Y-%m-%d %H:%M") if value else "-"


def _read_password(from_stdin: bool) -> str:
    """The new password: one stdin line (the newline stripped) or a hidden prompt, asked twice."""
    if from_stdin:
        password = sys.stdin.readline().rstrip("\r\n")
    else:
        password = typer.prompt("Password", hide_input=True, confirmation_prompt="Repeat the password")
    return check_password_rules(password)


def _sessions():
    return make_sessionmaker(make_engine(get_settings().db.url))


@user_app.command("create")
def create(
    username: str = typer.Argument(..., help="1-64 characters: letters, digits and . _ - @"),
    admin: bool = typer.Option(False, "--admin", help="the admin role (everything); default: user (queries)"),
    password_stdin: bool = typer.Option(False, "--password-stdin", help=STDIN_HELP),
) -> None:
    """Create a user (role user, or admin with --admin)."""
    url = get_settings().db.url
    with user_errors(url):
        password = _read_password(password_stdin)
        migrate_if_needed(url)
        with session_scope(_sessions()) as session:
            row = create_user(session, username=username, password=password, role=Role.ADMIN if admin else Role.USER)
            role = row.role.value
    console.print(f"created user [bold]{escape(username)}[/bold] (role {role})")


@user_app.command("list")
def list_command() -> None:
    """List every user: username, role, active, created, last login (UTC; never a password or hash)."""
    url = get_settings().db.url
    with user_errors(url):
        _require_migrated(url)
        with session_scope(_sessions()) as session:
            users = list_users(session)
    if not users:
        console.print("no users (create the first admin with `axiom user create NAME --admin`)")
        return
    table = Table(box=box.SIMPLE_HEAD, pad_edge=False)
    for column in ("username", "role", "active"):
        table.add_column(column, no_wrap=True)
    for column in ("created", "last login"):
        table.add_column(column, min_width=10)
    for user in users:
        table.add_row(escape(user.username), user.role.value, "yes" if user.is_active else "no",
                      _when(user.created_at), _when(user.last_login_at), style=None if user.is_active else "dim")
    console.print(table)


def _set_active(username: str, active: bool) -> None:
    url = get_settings().db.url
    with user_errors(url):
        _require_migrated(url)
        with session_scope(_sessions()) as session:
            changed = set_user_active(session, username=username, active=active)
    state = "enabled" if active else "disabled"
    console.print(f"{state} user {escape(username)}" if changed else f"user {escape(username)} was already {state}")


@user_app.command("disable")
def disable(username: str = typer.Argument(..., help="the user's name")) -> None:
    """Disable a user: no more logins, and its tokens stop working within seconds. The user stays listed."""
    _set_active(username, False)


@user_app.command("enable")
def enable(username: str = typer.Argument(..., help="the user's name")) -> None:
    """Enable a disabled user again."""
    _set_active(username, True)


@user_app.command("set-password")
def set_password(
    username: str = typer.Argument(..., help="the user's name"),
    password_stdin: bool = typer.Option(False, "--password-stdin", help=STDIN_HELP),
) -> None:
    """Replace a user's password."""
    url = get_settings().db.url
    with user_errors(url):
        _require_migrated(url)
        password = _read_password(password_stdin)
        with session_scope(_sessions()) as session:
            set_user_password(session, username=username, password=password)
    console.print(f"password of user {escape(username)} changed")


def register(app: typer.Typer) -> None:
    """Add the `user` command group to the `axiom` app."""
    app.add_typer(user_app, name="user")
