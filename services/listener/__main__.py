"""`python -m services.listener`: the spanning DIMSE SCP on AXIOM_SCP_HOST:AXIOM_SCP_PORT (0.0.0.0:11114),
configured by environment only. The embedded SQLite database is migrated on start; a server database must be at the
newest revision already (`axiom db upgrade` or the compose `migrate` service). It registers as
`listener:<AXIOM_INSTANCE_ID>`, heartbeats every AXIOM_HEARTBEAT_SECONDS and stops/starts serving as operators ask
(a stop persisted before this start applies on the first heartbeat)."""

from __future__ import annotations

import signal
import sys
import threading

from services.listener.app import Listener
from shared.config import get_settings
from shared.db.migrations import is_up_to_date, upgrade_to_head
from shared.logging import configure_logging


def main() -> int:
    settings = get_settings()
    configure_logging("listener", level=settings.log_level)
    url = settings.db.url
    if not is_up_to_date(url):
        if not settings.db.embedded:
            print("listener: the database is not at the newest schema revision: run `axiom db upgrade`",
                  file=sys.stderr)
            return 2
        settings.db.data_dir.mkdir(parents=True, exist_ok=True)
        upgrade_to_head(url)
    try:
        listener = Listener(settings).start()
    except (ValueError, OSError) as exc:
        print(f"listener: {exc}", file=sys.stderr)
        return 2
    heartbeat = listener.heartbeat().start()  # applies the desired state operators set through the API
    stop = threading.Event()
    for signum in (signal.SIGTERM, signal.SIGINT):
        signal.signal(signum, lambda *_: stop.set())
    stop.wait()
    heartbeat.stop()
    listener.stop()
    return 0


if __name__ == "__main__":
    sys.exit(main())
