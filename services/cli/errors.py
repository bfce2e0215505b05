"""User errors end a command with one red line and exit code 2, never a traceback."""

from __future__ import annotations

from contextlib import contextmanager
from typing import Iterator

import typer
from pydantic import ValidationError
from rich.console import Console
from rich.markup import escape


def describe_error(exc: Exception) -> str:
    """A one-line explanation of a user error (pydantic errors name the field)."""
    if isinstance(exc, ValidationError):
        first = exc.errors()[0]
        field = ".".join(str(part) for part in first["loc"])
        return f"{field}: {first['msg']}"
    return str(exc) or type(exc).__name__


@contextmanager
def user_errors() -> Iterator[None]:
    """Turn ValueError/LookupError (and pydantic's ValidationError) into `error: ...` and exit 2."""
    try:
        yield
    except (ValueError, LookupError) as exc:
        Console(stderr=True).print(f"[red]error:[/red] {escape(describe_error(exc))}")
        raise typer.Exit(2) from None
