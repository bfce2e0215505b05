"""The `axiom` command: one typer app; each command group registers itself from its own module."""

from __future__ import annotations

import os
import sys

import typer

from services.cli import (
    apikey_cmd, broker_cmd, config_cmd, demo_cmd, find_cmd, pacs_sim_cmd, span_cmd, stack_cmd, user_cmd,
)
from shared.logging import configure_logging

app = typer.Typer(
    name="axiom",
    help="Axiom: one query across every PACS (query spanning), and a DICOM router.",
    no_args_is_help=True,
    add_completion=False,
    pretty_exceptions_enable=False,
)
for module in (find_cmd, config_cmd, apikey_cmd, user_cmd, demo_cmd, pacs_sim_cmd, span_cmd, stack_cmd, broker_cmd):
    module.register(app)


@app.callback()
def logging_setup() -> None:
    """JSON log lines go to stderr (stdout stays the command's output). Default ERROR: the command's own tables
    already show each source's status; LOG_LEVEL=WARNING adds source_query_failed, INFO every span event."""
    configure_logging("cli", level=os.environ.get("LOG_LEVEL", "ERROR"), stream=sys.stderr)


def main() -> None:
    """Console-script entry point."""
    app()


if __name__ == "__main__":
    main()
