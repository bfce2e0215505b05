"""The `axiom` command: one typer app; each command group registers itself from its own module."""

from __future__ import annotations

import typer

from services.cli import apikey_cmd, config_cmd, demo_cmd, find_cmd, pacs_sim_cmd

app = typer.Typer(
    name="axiom",
    help="Axiom: one query across every PACS (query spanning), and a DICOM router.",
    no_args_is_help=True,
    add_completion=False,
    pretty_exceptions_enable=False,
)
for module in (find_cmd, config_cmd, apikey_cmd, demo_cmd, pacs_sim_cmd):
    module.register(app)


def main() -> None:
    """Console-script entry point."""
    app()


if __name__ == "__main__":
    main()
