"""User errors end a command with one red line and exit code 2, never a traceback."""

from __future__ import annotations

from contextlib import contextmanager
from typing import Iterator

import typer
from pydantic import ValidationError
from rich.console import Console
from rich.markup import escape
from sqlalchemy.engine import make_url
from sqlalchemy.exc import ArgumentError, OperationalError

err_console = Console(stderr=True)


def describe_error(exc: Exception) -> str:
    """A one-line explanation of a user error (pydantic errors name the field)."""
    if isinstance(exc, ValidationError):
        first = exc.errors()[0]
        field = ".".join(str(part) for part in first["loc"])
        return f"{field}: {first['msg']}"
    return str(exc) or type(exc).__name__


def display_url(url: str) -> str:
    """A database URL fit to print: the password hidden (an unparsable URL is not echoed: it may hold one)."""
    try:
        return make_url(url).render_as_string(hide_password=True)
    except ArgumentError:
        return "(unparsable DATABASE_URL)"


def _fail(message: str) -> None:
    err_console.print(f"[red]error:[/red] {escape(message)}", soft_wrap=True)
    raise typer.Exit(2) from None


@contextmanager
def user_errors(database_url: str | None = None) -> Iterator[None]:
    """ValueError/LookupError (incl. pydantic's ValidationError), an unreachable database and unreadable files
    become `error: ...` on stderr (one line) and exit code 2."""
    try:
        yield
    except (ValueError, LookupError) as exc:
        _fail(describe_error(exc))
    except ArgumentError as exc:  # includes an unknown dialect in DATABASE_URL
        _fail(f"invalid database URL: {exc}")
    except ImportError as exc:  # a DATABASE_URL whose driver is not installed
        _fail(f"database driver not installed: {exc.name or exc}")
    except OperationalError as exc:
        reason = str(exc.orig).strip().splitlines()[0] if exc.orig else str(exc)
        where = f"database {display_url(database_url)}" if database_url else "database"
        _fail(f"{where}: {reason}")
    except OSError as exc:
        _fail(str(exc))
