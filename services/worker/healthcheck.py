"""`python -m services.worker.healthcheck`: a worker container's health probe, from the worker's own heartbeat.

A worker (`python -m services.worker`) registers `worker:<type>-<pid>@<host name>` in `service_instances` and
heartbeats every AXIOM_HEARTBEAT_SECONDS (services.worker.status). The probe reads the worker rows whose `host` is
this machine's (a container's host name is its own) and exits 0 when at least one is `healthy` by
shared.db.repo.service_instances.service_health (heartbeat younger than 3 intervals, running as wished), 1
otherwise — no row yet, a stale heartbeat (the worker process is gone or stuck), a failed state, or a database it
cannot read. One line saying which goes to stdout (Docker keeps it in `docker inspect`'s health log).

It checks the process and its database; the broker side shows in the `dimse_worker_status` events and the
coordinator's `/health` (broker check).
"""

from __future__ import annotations

import argparse
import socket
import sys
from typing import Sequence

from sqlalchemy.exc import SQLAlchemyError

from shared.config import DatabaseSettings
from shared.db.models import ServiceKind
from shared.db.repo.service_instances import HEALTHY, list_services, service_health
from shared.db.session import make_engine, make_sessionmaker


def worker_health(database_url: str, host: str) -> tuple[bool, str]:
    """(healthy, one-line reason) for the workers registered from `host` in the database at `database_url`."""
    engine = make_engine(database_url)
    try:
        with make_sessionmaker(engine)() as session:
            rows = [row for row in list_services(session, kind=ServiceKind.WORKER) if row.host == host]
            states = {row.service_id: service_health(row) for row in rows}
    except SQLAlchemyError as exc:
        first_line = (str(getattr(exc, "orig", None) or exc).strip().splitlines() or [""])[0]
        return False, f"cannot read service_instances: {type(exc).__name__}: {first_line}"
    finally:
        engine.dispose()
    if not states:
        return False, f"no worker registered from host {host!r}"
    listed = ", ".join(f"{service_id}={state}" for service_id, state in sorted(states.items()))
    return any(state == HEALTHY for state in states.values()), listed


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m services.worker.healthcheck",
                                     description="Exit 0 when a worker of this host heartbeats (DATABASE_URL).")
    parser.add_argument("--host", default=socket.gethostname(), help="the worker's host name (default: this one)")
    args = parser.parse_args(argv)
    healthy, detail = worker_health(DatabaseSettings().url, args.host)
    print(("healthy: " if healthy else "unhealthy: ") + detail)
    return 0 if healthy else 1


if __name__ == "__main__":
    sys.exit(main())
