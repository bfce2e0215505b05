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
from shared.db.repo.sources import upsert_source
from shared.db.repo.spanner_configs import MappingSpec, replace_mappings, upsert_spanner_config
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


def provision(factory, *, sources: dict[str, tuple[str, dict]],
              configs: dict[str, tuple[list, dict]], users: dict[str, str] | None = None) -> dict[str, int]:
    """Users (name -> password, role user, CHEAP hashes), sources (name -> (kind, connection)) and spanner configs
    (name -> (mapped sources, config fields); a mapped source is a name, or (name, priority)) in one transaction;
    the config ids by name. Configs time out after 10 s unless their fields say otherwise."""
    ids = {}
    with factory.begin() as session:
        for username, password in (users or {}).items():
            create_user(session, username=username, password=password, hasher=CHEAP)
        for name, (kind, connection) in sources.items():
            upsert_source(session, name=name, kind=kind, connection=connection)
        for name, (mapped, fields) in configs.items():
            config = upsert_spanner_config(session, name=name, **{"query_timeout_seconds": 10, **fields}).row
            specs = [MappingSpec(source=m) if isinstance(m, str) else MappingSpec(source=m[0], priority=m[1])
                     for m in mapped]
            replace_mappings(session, config=config, mappings=specs)
            session.flush()
            ids[name] = config.id
    return ids


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
