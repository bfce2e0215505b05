"""`axiom stack up`: the services of the compose files as local processes, without Docker.

The plan comes from the compose files (services/cli/stack_plan.py), the supervision from services/cli/stack.py.
PostgreSQL, Redis and RabbitMQ are the ones DATABASE_URL, REDIS_URL and RABBITMQ_URL name (and SECRET_KEY signs
tokens): all four are required. The one-shots run first (`migrate`: `upgrade_to_head`, in this process;
`broker-setup`: `axiom broker setup` as a process, so RabbitMQ's management API must answer, at
AXIOM_RABBITMQ_MANAGEMENT_URL or port 15672 of RABBITMQ_URL's host), then every long-running service in dependency
order.
"""

from __future__ import annotations

import os
import signal
import sys
from pathlib import Path
from typing import Optional

import typer

from services.cli.errors import display_url, user_errors
from services.cli.stack import LinePrinter, Supervisor, pump_output, spawn
from services.cli.stack_plan import STACK_VARIABLES, OneShot, StackPlan, build_plan, default_compose_files, load_compose
from shared.db.migrations import upgrade_to_head

stack_app = typer.Typer(help="Run the compose topology as local processes (no Docker).", no_args_is_help=True)
MIN_SECRET_LENGTH = 32


def register(app: typer.Typer) -> None:
    """Add the `stack` command group to `app`."""
    app.add_typer(stack_app, name="stack")


def check_environment(environ: dict[str, str] | os._Environ) -> None:
    """ValueError naming every missing stack variable (and a SECRET_KEY too short for the services)."""
    missing = [name for name in STACK_VARIABLES if not environ.get(name)]
    if missing:
        raise ValueError(f"axiom stack up needs {', '.join(missing)} in the environment (e.g. "
                         "DATABASE_URL=postgresql://axiom:secret@127.0.0.1:5432/axiom REDIS_URL=redis://127.0.0.1:6379/0"
                         " RABBITMQ_URL=amqp://guest:guest@127.0.0.1:5672// SECRET_KEY=$(openssl rand -hex 32))")
    if len(environ["SECRET_KEY"]) < MIN_SECRET_LENGTH:
        raise ValueError(f"SECRET_KEY must be at least {MIN_SECRET_LENGTH} characters (e.g. `openssl rand -hex 32`)")


def parse_scale(values: list[str]) -> dict[str, int]:
    """`SERVICE=N` options as a mapping; ValueError naming a malformed one."""
    scale = {}
    for value in values:
        name, sep, count = value.partition("=")
        if not sep or not name.strip() or not count.strip().isdigit():
            raise ValueError(f"--scale wants SERVICE=N (e.g. dimse-query-worker=3), got {value!r}")
        scale[name.strip()] = int(count)
    return scale


def parse_only(values: list[str]) -> list[str] | None:
    """`--only a,b --only c` as [a, b, c]; None when not given."""
    names = [name.strip() for value in values for name in value.split(",") if name.strip()]
    return names or None


@stack_app.command("up")
def up(
    scale: list[str] = typer.Option([], "--scale", help="SERVICE=N instances (repeatable), like docker compose"),
    only: list[str] = typer.Option([], "--only", help="run only these services (comma-separated, repeatable)"),
    files: list[Path] = typer.Option([], "--file", "-f", help="compose files in order (default: the repository's "
                                     "docker-compose.yml and docker-compose.enterprise.yml)"),
    port_offset: int = typer.Option(0, "--port-offset", envvar="AXIOM_STACK_PORT_OFFSET",
                                    help="added to every published host port (8001, 8002, 11114)"),
    host: str = typer.Option("127.0.0.1", "--host", envvar="AXIOM_STACK_HOST", help="address the services listen on"),
    exit_on_failure: bool = typer.Option(False, "--exit-on-failure", help="stop the whole stack when a service "
                                         "fails, instead of applying its compose restart policy"),
    grace: float = typer.Option(10.0, "--grace", min=0.0, help="seconds between SIGTERM and SIGKILL at shutdown"),
    colour: Optional[bool] = typer.Option(None, "--color/--no-color", help="colour the prefixes (default: on a tty)"),
) -> None:
    """Run the one-shots (schema migration, broker policies), then every Axiom service of the compose files, until
    Ctrl-C (or SIGTERM)."""
    environ = dict(os.environ)
    with user_errors(environ.get("DATABASE_URL")):
        check_environment(environ)
        plan = build_plan(load_compose(list(files) or default_compose_files()), environ, scale=parse_scale(scale),
                          only=parse_only(only), port_offset=port_offset, host=host,
                          data_dir=Path(environ.get("AXIOM_DATA_DIR") or "axiom-data") / "stack")
        for directory in plan.directories:
            directory.mkdir(parents=True, exist_ok=True)
    if not plan.processes:
        raise typer.BadParameter("no service to run (check --only and --scale)")
    labels = [spec.label for spec in plan.processes] + [shot.service for shot in plan.one_shots] + ["[stack]"]
    printer = LinePrinter(sys.stdout, max(len(label) for label in labels),
                          sys.stdout.isatty() if colour is None else colour)
    if plan.skipped:
        printer.note(f"not started (infrastructure from the environment): {', '.join(plan.skipped)}")
    supervisor = Supervisor(plan.processes, printer, exit_on_failure=exit_on_failure, grace=grace)
    previous = {sig: signal.signal(sig, lambda *_: supervisor.request_stop()) for sig in (signal.SIGINT, signal.SIGTERM)}
    try:
        with user_errors(environ["DATABASE_URL"]):
            if not run_one_shots(plan, printer, environ) or supervisor.stop.is_set():
                raise typer.Exit(1)
        code = supervisor.run()
    finally:
        for sig, handler in previous.items():
            signal.signal(sig, handler)
    raise typer.Exit(code)


def run_one_shots(plan: StackPlan, printer: LinePrinter, environ: dict[str, str]) -> bool:
    """Each one-shot to completion, in order; False (reported) at the first failure."""
    for shot in plan.one_shots:
        if not run_one_shot(shot, printer, environ):
            return False
    return True


def run_one_shot(shot: OneShot, printer: LinePrinter, environ: dict[str, str]) -> bool:
    """`migrate` runs `upgrade_to_head` here (the compose one-shot's code); any other one-shot as a process."""
    if shot.argv is None:
        url = environ["DATABASE_URL"]
        printer.line(shot.service, f"upgrading {display_url(url)} to the newest schema revision")
        upgrade_to_head(url)
        printer.line(shot.service, "done")
        return True
    process = spawn(shot.argv, dict(shot.env))
    reader = pump_output(process.stdout, shot.service, shot.service, printer)
    code = process.wait()
    reader.join(timeout=2)
    if code != 0:
        printer.note(f"{shot.service} exited with code {code}: not starting the services")
    return code == 0
