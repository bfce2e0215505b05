"""`axiom broker setup`: apply the queue-limit policies of deploy/rabbitmq/definitions.json to RabbitMQ.

The broker is the one RABBITMQ_URL names: its vhost receives the policies (whatever vhost the file names), its user
and password log in to the management HTTP API at AXIOM_RABBITMQ_MANAGEMENT_URL (default
`http://<RABBITMQ_URL's host>:15672`). Idempotent: a policy the broker already holds unchanged is left alone. The
compose one-shot `broker-setup` runs it before every service that publishes or consumes; a deployment without
Docker runs it once after the broker is up (and again after an upgrade). The logic is shared.messaging.broker_policy.
"""

from __future__ import annotations

from pathlib import Path
from typing import Optional

import typer
from rich.console import Console
from rich.markup import escape

from services.cli.errors import user_errors
from shared.config import get_settings
from shared.messaging.broker_policy import (
    DEFAULT_DEFINITIONS, BrokerSetupError, apply_policies, load_policies, management_target,
)

console = Console()
broker_app = typer.Typer(help="RabbitMQ set-up for the distributed mode: the queue-limit policies.",
                         no_args_is_help=True)
ACTION_STYLE = {"created": "green", "updated": "yellow", "unchanged": "dim"}


@broker_app.command("setup")
def setup(
    definitions: Optional[Path] = typer.Option(
        None, "--definitions", metavar="PATH",
        help="RabbitMQ definitions file whose `policies` are applied (default: deploy/rabbitmq/definitions.json)"),
    wait: float = typer.Option(30.0, "--wait", min=0.0, metavar="SECONDS",
                               help="how long to keep retrying while the management API does not answer yet"),
) -> None:
    """Apply the definitions file's policies to RABBITMQ_URL's vhost through the management API (idempotent)."""
    settings = get_settings().distributed
    with user_errors():
        if not settings.rabbitmq_url:
            raise BrokerSetupError("RABBITMQ_URL is not set: the policies go to the broker and vhost it names "
                                   "(e.g. RABBITMQ_URL=amqp://axiom:secret@rabbitmq:5672//)")
        policies = load_policies(definitions or DEFAULT_DEFINITIONS)
        target = management_target(settings.rabbitmq_url, settings.rabbitmq_management_url)
        changes = apply_policies(target, policies, wait_seconds=wait)
    for change in changes:
        style = ACTION_STYLE[change.action]
        console.print(f"[{style}]{change.action:<9}[/{style}] policy {escape(change.name)}", soft_wrap=True)
    console.print(f"vhost {escape(repr(target.vhost))} at {escape(target.base_url)}: {len(changes)} "
                  f"{'policy' if len(changes) == 1 else 'policies'} in place", soft_wrap=True)


def register(app: typer.Typer) -> None:
    """Add the `broker` command group to the `axiom` app."""
    app.add_typer(broker_app, name="broker")
