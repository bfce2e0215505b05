"""What the main API's tests (test_api_*.py) share: cheap password hashing, settings, a migrated SQLite database and
a bearer header from the real token route."""

from __future__ import annotations

import threading
import time
from contextlib import contextmanager
from pathlib import Path
from typing import Iterator

import uvicorn

from argon2 import PasswordHasher

from shared.config import ApiSettings, DatabaseSettings, Settings
from shared.db.migrations import upgrade_to_head
from shared.db.models import Role
from shared.db.session import make_engine, make_sessionmaker
from shared.security.users import create_user

# Hashes made in tests are cheap; verifying them must not use the production cost (argon2 64 MiB) either: tests
# patch shared.security.api_keys.default_hasher with this too.
CHEAP = PasswordHasher(time_cost=1, memory_cost=8, parallelism=1)
SECRET = "s" * 40
PASSWORDS = {"root": "root-password-1", "alice": "alice-password-1"}  # root is an admin, alice a user


def api_settings(url: str | None, **api: object) -> Settings:
    """Settings for create_app on `url` with a valid SECRET_KEY (and any other AXIOM_* API variable)."""
    return Settings(db=DatabaseSettings(DATABASE_URL=url), api=ApiSettings(**{"SECRET_KEY": SECRET, **api}))


def migrated_sqlite(directory: Path):
    """(url, engine, session factory) of a new SQLite database at the head revision in `directory`."""
    url = f"sqlite:///{Path(directory) / 'axiom.db'}"
    upgrade_to_head(url)
    engine = make_engine(url)
    return url, engine, make_sessionmaker(engine)


def database_with_users(directory: Path):
    """migrated_sqlite with the users of PASSWORDS (hashed with CHEAP); patch api_keys.default_hasher to CHEAP
    too, so logging in does not pay the production cost."""
    url, engine, factory = migrated_sqlite(directory)
    with factory.begin() as session:
        create_user(session, username="root", password=PASSWORDS["root"], role=Role.ADMIN, hasher=CHEAP)
        create_user(session, username="alice", password=PASSWORDS["alice"], hasher=CHEAP)
    return url, engine, factory


def bearer(client, username: str, password: str) -> dict[str, str]:
    """The Authorization header of a token from POST /api/v1/auth/token."""
    answer = client.post("/api/v1/auth/token", data={"username": username, "password": password})
    assert answer.status_code == 200, answer.text
    return {"Authorization": f"Bearer {answer.json()['access_token']}"}


@contextmanager
def served(app, port: int, **config: object) -> Iterator[str]:
    """`app` under a real uvicorn server on 127.0.0.1:`port` (in a thread) for clients that need HTTP on a socket
    (dicomweb-client, streaming); yields its base URL and stops the server afterwards."""
    server = uvicorn.Server(uvicorn.Config(app, host="127.0.0.1", port=port, log_level="warning", **config))
    thread = threading.Thread(target=server.run, daemon=True)
    thread.start()
    try:
        deadline = time.monotonic() + 10
        while not server.started:
            assert time.monotonic() < deadline and thread.is_alive(), "uvicorn did not start"
            time.sleep(0.02)
        yield f"http://127.0.0.1:{port}"
    finally:
        server.should_exit = True
        thread.join(timeout=10)
