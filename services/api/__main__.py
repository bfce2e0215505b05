"""`python -m services.api`: the main API on AXIOM_API_HOST:AXIOM_API_PORT (0.0.0.0:80; the compose file publishes
it on 8001), configured by environment only."""

from __future__ import annotations

import sys

import uvicorn

from services.api.app import create_app
from shared.config import get_settings
from shared.logging import configure_logging


def main() -> int:
    settings = get_settings()
    configure_logging("api", level=settings.log_level)
    try:
        app = create_app(settings)
    except ValueError as exc:
        print(f"api: {exc}", file=sys.stderr)
        return 2
    uvicorn.run(app, host=settings.api.host, port=settings.api.port, log_config=None, access_log=False)
    return 0


if __name__ == "__main__":
    sys.exit(main())
