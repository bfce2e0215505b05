"""`python -m services.worker`: a Celery worker consuming the queues of WORKER_TYPE (environment only).

It registers as `worker:<celery hostname>` and heartbeats every AXIOM_HEARTBEAT_SECONDS with its queues and task
counts (services.worker.status), visible at GET /api/v1/spanner/services/status."""

from __future__ import annotations

import logging
import os
import socket
import sys

from celery.signals import worker_shutdown

from shared.config import get_settings
from shared.logging import configure_logging
from shared.messaging.celery_app import create_celery_app
from shared.db.session import make_engine, make_sessionmaker
from shared.messaging.contracts import queues_for_worker
from services.worker.status import TaskCounters, worker_heartbeat
from services.worker.tasks import WorkerState, register_tasks


def main() -> int:
    settings = get_settings()
    configure_logging("worker", level=settings.log_level)
    if settings.log_level.upper() != "DEBUG":  # one line per task received/succeeded: only when debugging
        for name in ("celery.app.trace", "celery.worker.strategy"):
            logging.getLogger(name).setLevel(logging.WARNING)
    dist = settings.distributed
    try:
        queues = queues_for_worker(dist.worker_type)
        app = create_celery_app(settings)
    except ValueError as exc:
        print(f"worker: {exc}", file=sys.stderr)
        return 2
    state = WorkerState(app, settings)
    register_tasks(app, state)
    hostname = f"{dist.worker_type}-{os.getpid()}@{socket.gethostname()}"
    engine = make_engine(settings.db.url)
    heartbeat = worker_heartbeat(settings, make_sessionmaker(engine), hostname=hostname, queues=queues,
                                 counters=TaskCounters(app).connect())
    worker_shutdown.connect(lambda **_: (heartbeat.stop(), state.close(), engine.dispose()), weak=False)
    heartbeat.start()
    app.worker_main([
        "worker", "--queues", ",".join(queues), "--pool", "threads", "--concurrency", str(dist.worker_concurrency),
        "--hostname", hostname, "--without-gossip", "--without-mingle", "--loglevel", settings.log_level,
    ])
    return 0


if __name__ == "__main__":
    sys.exit(main())
