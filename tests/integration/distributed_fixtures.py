"""Fixtures for the distributed-span tests (test_distributed_spans.py, test_coordinator_api.py).

What a test gets: an empty PostgreSQL database migrated to head, a unique key prefix on the machine's Redis
(deleted afterwards), the real SpanRuntime on both (shared.distributed.runtime.build_runtime) and an in-process
broker. The broker only queues what the runtime publishes; the test delivers the messages by calling the real step
functions (PLAN_SPAN -> plan_span, QUERY_SOURCE -> query_source on its own thread like a worker pool slot, with a
ScriptedPort as the "dimse" query port, SOURCE_FINISHED -> source_finished, FINALIZE_SPAN -> finalize_due).
Messages with a countdown wait aside until the test fires them.

Services: PostgreSQL at AXIOM_TEST_POSTGRES_URL (default postgres@127.0.0.1:5432, trust auth) and Redis at
AXIOM_TEST_REDIS_URL (default redis://127.0.0.1:6379, db 0); a test skips when one is unreachable (and fails under
AXIOM_REQUIRE_SERVICES=1). Each xdist worker creates and migrates one database (dropped at the end of the
session); each test starts with every table of it emptied (TRUNCATE ... RESTART IDENTITY), which is much cheaper
than a CREATE/DROP DATABASE per test (each writes the whole database to the WAL or forces a checkpoint).
"""

from __future__ import annotations

import os
import threading
import time
import uuid
from collections import deque
from dataclasses import dataclass
from typing import Any, Callable, Iterator, Sequence

import pytest
import redis
from sqlalchemy import create_engine, select, text
from sqlalchemy.engine import make_url
from sqlalchemy.pool import NullPool

from shared.config import DatabaseSettings, DistributedSettings, Settings
from shared.db.migrations import upgrade_to_head
from shared.db.models import Base, SpannerQueryLog, SpannerQueryResult
from shared.db.repo.sources import upsert_source
from shared.db.repo.spanner_configs import MappingSpec, replace_mappings, upsert_spanner_config
from shared.db.session import normalize_database_url
from shared.distributed.intake import Requester, accept_span
from shared.distributed.runtime import SpanRuntime, build_runtime
from shared.distributed.source_task import query_source
from shared.distributed.spans import finalize_due, plan_span, source_finished
from shared.messaging.contracts import FINALIZE_SPAN, PLAN_SPAN, QUERY_SOURCE, SOURCE_FINISHED
from tests.fakes.ports import Script, ScriptedPort
from tests.peers import require
from tests.peers.services import postgres_problem, redis_problem

ADMIN_URL = normalize_database_url(
    os.environ.get("AXIOM_TEST_POSTGRES_URL", "postgresql://postgres@127.0.0.1:5432/postgres"))
REDIS_URL = os.environ.get("AXIOM_TEST_REDIS_URL", "redis://127.0.0.1:6379").rstrip("/") + "/0"
RABBITMQ_URL = os.environ.get("AXIOM_TEST_RABBITMQ_URL", "amqp://guest:guest@127.0.0.1:5672//")
SETTLE_SECONDS = 10.0  # a drain that takes longer than this is a hang, reported as a failure


# --- services ---------------------------------------------------------------------------------------------------

def _admin_execute(statement: str) -> None:
    admin = create_engine(ADMIN_URL, isolation_level="AUTOCOMMIT")
    try:
        with admin.connect() as connection:
            connection.execute(text(statement))
    finally:
        admin.dispose()


def _database_url(name: str) -> str:
    return make_url(ADMIN_URL).set(database=name).render_as_string(hide_password=False)


@pytest.fixture(scope="session")
def migrated_template() -> Iterator[str]:
    """The name of a database migrated to head (shared.db.migrations.upgrade_to_head), one per xdist worker,
    dropped at the end of the session."""
    require(postgres_problem() is None, postgres_problem() or "")
    name = f"axiom_dist_{uuid.uuid4().hex[:12]}"
    _admin_execute(f'CREATE DATABASE "{name}"')
    try:
        upgrade_to_head(_database_url(name))
        yield name
    finally:
        _admin_execute(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')


def empty_tables(url: str) -> None:
    """Delete every row of every table of the models (ids restart at 1); the schema stays at head."""
    tables = ", ".join(f'"{table.name}"' for table in Base.metadata.sorted_tables)
    engine = create_engine(url, poolclass=NullPool)
    try:
        with engine.begin() as connection:
            connection.execute(text("SET LOCAL lock_timeout = '10s'"))  # a stuck connection fails, never hangs
            connection.execute(text(f"TRUNCATE {tables} RESTART IDENTITY CASCADE"))
    finally:
        engine.dispose()


@pytest.fixture()
def database_url(migrated_template: str) -> str:
    """An empty database at the head revision: the worker's migrated database, emptied before the test (as good
    as a fresh one, without the ~0.5-2 s a CREATE/DROP DATABASE costs per test on a busy machine)."""
    url = _database_url(migrated_template)
    empty_tables(url)
    return url


def delete_keys(client: redis.Redis, prefix: str) -> int:
    """Delete every Redis key under `prefix` (SCAN, never KEYS); how many were deleted."""
    pattern = "".join("\\" + c if c in "*?[]\\" else c for c in prefix) + "*"
    keys = list(client.scan_iter(match=pattern, count=500))
    return client.delete(*keys) if keys else 0


@pytest.fixture()
def redis_prefix() -> Iterator[str]:
    """A key prefix of its own on Redis db 0; every key under it is deleted afterwards."""
    require(redis_problem() is None, redis_problem() or "")
    prefix = f"axiom-test:{uuid.uuid4().hex}:"
    yield prefix
    client = redis.Redis.from_url(REDIS_URL)
    try:
        delete_keys(client, prefix)
    finally:
        client.close()


def distributed_env(database_url: str, redis_prefix: str) -> dict[str, str]:
    """The environment a coordinator or worker of this test would run with."""
    return {"DATABASE_URL": database_url, "REDIS_URL": REDIS_URL, "RABBITMQ_URL": RABBITMQ_URL,
            "AXIOM_REDIS_PREFIX": redis_prefix, "SECRET_KEY": "test-secret-" + "k" * 32}


# --- clock and broker -------------------------------------------------------------------------------------------

class ShiftedClock:
    """The wall clock plus an offset the test moves (`clock.advance(31)`): time flows, and deadlines, cool-downs
    and retentions can be reached without waiting for them."""

    def __init__(self) -> None:
        self.offset = 0.0

    def __call__(self) -> float:
        return time.time() + self.offset

    def advance(self, seconds: float) -> None:
        self.offset += seconds


@dataclass(frozen=True)
class Message:
    """One published task."""

    name: str
    args: tuple[Any, ...]
    countdown: float | None


class InProcessBroker:
    """A stand-in for RabbitMQ with the runtime's `publish(task_name, args, countdown)`: messages without a
    countdown wait in `ready`, the others in `delayed` (the test decides when they are due); `sent` keeps every
    message in publishing order. Set `down` to an exception to make publishing raise it."""

    def __init__(self) -> None:
        self._ready: deque[Message] = deque()
        self._delayed: list[Message] = []
        self._sent: list[Message] = []
        self._changed = threading.Condition()
        self.down: Exception | None = None

    def publish(self, task_name: str, args: Sequence[Any], countdown: float | None) -> None:
        if self.down is not None:
            raise self.down
        message = Message(task_name, tuple(args), countdown)
        with self._changed:
            self._sent.append(message)
            (self._delayed if countdown else self._ready).append(message)
            self._changed.notify_all()

    def take(self, timeout: float) -> Message | None:
        """The next ready message, waiting up to `timeout` for one."""
        with self._changed:
            if not self._ready:
                self._changed.wait(timeout)
            return self._ready.popleft() if self._ready else None

    def ready(self) -> list[Message]:
        with self._changed:
            return list(self._ready)

    def delayed(self) -> list[Message]:
        with self._changed:
            return list(self._delayed)

    def sent(self, name: str | None = None) -> list[Message]:
        """Every message published so far (of task `name`), in order."""
        with self._changed:
            return [m for m in self._sent if name is None or m.name == name]

    def drop_ready(self) -> list[Message]:
        """Lose the ready messages (a broker that dropped them); returns them."""
        with self._changed:
            lost = list(self._ready)
            self._ready.clear()
            return lost

    def release_delayed(self) -> int:
        """Make every delayed message due now; how many."""
        with self._changed:
            count = len(self._delayed)
            self._ready.extend(self._delayed)
            self._delayed.clear()
            self._changed.notify_all()
            return count


# --- the harness ------------------------------------------------------------------------------------------------

class SpanHarness:
    """The runtime, its broker and the scripted "dimse" port, plus the database set-up the tests need."""

    def __init__(self, runtime: SpanRuntime, broker: InProcessBroker, port: ScriptedPort,
                 clock: ShiftedClock) -> None:
        self.rt, self.broker, self.port, self.clock = runtime, broker, port, clock
        self.ports = {"dimse": port}
        self._threads: list[threading.Thread] = []
        self._errors: list[BaseException] = []

    # database set-up --------------------------------------------------------------------------------------------
    def add_config(self, name: str, scripts: dict[str, Script], *, priorities: dict[str, int] | None = None,
                   timeouts: dict[str, float] | None = None, **fields: Any) -> int:
        """A spanner config over one "dimse" source per script (dummy connections, AE title = source name; the
        ScriptedPort answers by source name), with per-source priorities and timeouts; returns the config id."""
        self.port.scripts.update(scripts)
        with self.rt.session_factory.begin() as session:
            for source in scripts:
                upsert_source(session, name=source, kind="dimse",
                              connection={"ae_title": source, "host": "127.0.0.1", "port": 1})
            config, _ = upsert_spanner_config(session, name=name, **fields)
            replace_mappings(session, config=config, mappings=[
                MappingSpec(source=source, priority=(priorities or {}).get(source, 100),
                            timeout_seconds=(timeouts or {}).get(source)) for source in scripts])
            return config.id

    def accept(self, config_id: int, keys: dict[str, Any] | None = None, *, level: str = "STUDY",
               user: str | None = "tester") -> str:
        """accept_span for a C-FIND; the query id."""
        return accept_span(self.rt, config_id=config_id, config_name=None, query_type="C-FIND", query_level=level,
                           keys={} if keys is None else keys, requester=Requester(user=user))["query_id"]

    def query_log(self, query_id: str) -> SpannerQueryLog:
        with self.rt.session_factory() as session:
            return session.scalar(select(SpannerQueryLog).where(SpannerQueryLog.query_id == query_id))

    def kept_result(self, query_id: str) -> SpannerQueryResult | None:
        with self.rt.session_factory() as session:
            return session.get(SpannerQueryResult, query_id)

    def flush_redis(self) -> int:
        """Lose this test's Redis state (span keys, result cache, source health); how many keys went."""
        return delete_keys(self.rt.store.redis, self.rt.store._prefix)

    # delivering messages -----------------------------------------------------------------------------------------
    def deliver(self, message: Message) -> None:
        """Run the step a message stands for; QUERY_SOURCE on a thread of its own."""
        name, args = message.name, message.args
        if name == PLAN_SPAN:
            plan_span(self.rt, *args)
        elif name == QUERY_SOURCE:
            thread = threading.Thread(target=self._run_source, args=args, daemon=True, name=f"source-{args[1]}")
            self._threads.append(thread)
            thread.start()
        elif name == SOURCE_FINISHED:
            source_finished(self.rt, *args)
        elif name == FINALIZE_SPAN:
            finalize_due(self.rt, *args)
        else:
            raise AssertionError(f"unknown task {name!r}")

    def _run_source(self, query_id: str, source: str) -> None:
        try:
            query_source(self.rt, self.ports, query_id, source)
        except BaseException as exc:  # surfaced by drain/join_sources: a crashing step must fail the test
            self._errors.append(exc)

    def step(self) -> Message:
        """Deliver exactly the next ready message (it must exist); returns it."""
        message = self.broker.take(timeout=0)
        assert message is not None, "no ready message"
        self.deliver(message)
        return message

    def running_sources(self) -> int:
        self._check_errors()
        return sum(1 for thread in self._threads if thread.is_alive())

    def drain(self, *, wait_sources: bool = True, timeout: float = SETTLE_SECONDS) -> None:
        """Deliver ready messages until none is left and (with `wait_sources`) every source task has returned.
        Delayed messages stay aside (`fire_delayed`)."""
        give_up = time.monotonic() + timeout
        while True:
            message = self.broker.take(timeout=0.01)
            if message is not None:
                self.deliver(message)
                continue
            settled = not wait_sources or self.running_sources() == 0  # threads publish before they end
            if settled and not self.broker.ready():
                self._check_errors()
                return
            if time.monotonic() > give_up:
                raise AssertionError(f"the span did not settle within {timeout} s "
                                     f"({self.running_sources()} source tasks still running)")

    def fire_delayed(self, **drain: Any) -> int:
        """Deliver the delayed messages now (the test moved the clock, or waited), then drain; how many fired."""
        count = self.broker.release_delayed()
        self.drain(**drain)
        return count

    def join_sources(self, timeout: float) -> bool:
        """Wait up to `timeout` for every source task to return; True when they all did."""
        give_up = time.monotonic() + timeout
        for thread in self._threads:
            thread.join(max(0.0, give_up - time.monotonic()))
        return self.running_sources() == 0

    def wait_for(self, condition: Callable[[], Any], timeout: float = 10.0, what: str = "condition") -> Any:
        """Poll `condition` until it is truthy (its value), or fail after `timeout`."""
        give_up = time.monotonic() + timeout
        while True:
            value = condition()
            if value:
                return value
            self._check_errors()
            if time.monotonic() > give_up:
                raise AssertionError(f"timed out waiting for {what}")
            time.sleep(0.01)

    def _check_errors(self) -> None:
        if self._errors:
            raise self._errors[0]

    def close(self) -> None:
        for thread in self._threads:
            thread.join(timeout=0)  # source tasks are daemons; a hung one is cancelled by the span's stop flag
        self.rt.close()


def make_harness(database_url: str, redis_prefix: str) -> SpanHarness:
    """A harness on the runtime build_runtime makes from this environment, with a ShiftedClock and the broker."""
    broker, clock = InProcessBroker(), ShiftedClock()
    settings = Settings(db=DatabaseSettings(DATABASE_URL=database_url),
                        distributed=DistributedSettings(REDIS_URL=REDIS_URL, RABBITMQ_URL=RABBITMQ_URL,
                                                        AXIOM_REDIS_PREFIX=redis_prefix))
    runtime = build_runtime(settings, broker.publish)
    runtime.clock = clock
    return SpanHarness(runtime, broker, ScriptedPort(), clock)


@pytest.fixture()
def harness(database_url: str, redis_prefix: str) -> Iterator[SpanHarness]:
    """A SpanHarness on a fresh database and Redis prefix (see the module doc)."""
    made = make_harness(database_url, redis_prefix)
    try:
        yield made
    finally:
        made.close()
