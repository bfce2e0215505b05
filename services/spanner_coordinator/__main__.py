"""`python -m services.spanner_coordinator`: the coordinator on AXIOM_COORDINATOR_HOST:AXIOM_COORDINATOR_PORT
(0.0.0.0:8000; the compose file publishes it on 8002), configured by environment only: distributed over RabbitMQ,
Redis and PostgreSQL, or, without RABBITMQ_URL and REDIS_URL on the embedded SQLite database, the embedded mode
(services.spanner_coordinator.embedded)."""

from __future__ import annotations

import sys

import uvicorn

from services.spanner_coordinator.app import create_app
from shared.config import get_settings
from shared.logging import configure_logging


def main() -> int:
    settings = get_settings()
    configure_logging("spanner-coordinator", level=settings.log_level)
    try:
        app = create_app(settings)
    except ValueError as exc:
        print(f"spanner-coordinator: {exc}", file=sys.stderr)
        return 2
    uvicorn.run(app, host=settings.coordinator.host, port=settings.coordinator.port, log_config=None,
                access_log=False)
    return 0


if __name__ == "__main__":
    sys.exit(main())
