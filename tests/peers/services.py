"""The distributed mode as real processes for end-to-end tests: coordinator and workers on their own infrastructure.

`DistributedStack` gives one test module an isolated deployment on the machine's shared servers:

* PostgreSQL: its own database (`axiom_e2e_<random>`, migrated to head), dropped afterwards (WITH FORCE);
* Redis: its own database index 1..15, claimed with a key in index 0 (`axiom-test:redis-db-claim:<n>`, SET NX with
  an expiry) so concurrent runs (pytest-xdist workers, other checkouts) never share one; FLUSHDB before and after;
* RabbitMQ: its own vhost (`rabbitmqctl add_vhost`, permissions for guest), deleted afterwards;
* processes started exactly as deployed (`python -m services.spanner_coordinator`, `python -m services.worker`) with
  that environment, each in its own process group (so kill -9 and teardown reach every child), its stdout and
  stderr in `<workdir>/<name>.log`.

`wait_ready()` waits for the coordinator's /health to answer 200 and for every worker to be consuming (its Celery
remote-control queue and the task queues have its consumers, per `rabbitmqctl list_consumers -p VHOST`).
`tails_on_failure(config)` adds the tail of every process log to the report of a failing test.

Missing servers skip the test with the reason (`tests.peers.require`); under AXIOM_REQUIRE_SERVICES=1 they fail it.
Tests that apply broker policies (`axiom broker setup`, `axiom stack up`) also need RabbitMQ's management API
(`require_broker_management`; `rabbitmq-plugins enable rabbitmq_management`, as .ci/run does).
Overrides: AXIOM_TEST_POSTGRES_URL, AXIOM_TEST_REDIS_URL, AXIOM_TEST_RABBITMQ_HOST / _PORT / _USER / _PASSWORD,
AXIOM_TEST_RABBITMQ_MANAGEMENT_URL (default http://<host>:15672).
"""

from __future__ import annotations

import os
import secrets
import shutil
import signal
import socket
import subprocess
import sys
import time
import uuid
from contextlib import contextmanager
from pathlib import Path
from typing import Callable, Iterator, Mapping

import httpx
import pytest
import redis
from sqlalchemy import create_engine, text
from sqlalchemy.engine import make_url
from sqlalchemy.exc import OperationalError

from shared.db.session import make_engine, make_sessionmaker, normalize_database_url, session_scope
from tests.peers import free_port, require

REPO = Path(__file__).resolve().parents[2]
POSTGRES_ADMIN_URL = normalize_database_url(
    os.environ.get("AXIOM_TEST_POSTGRES_URL", "postgresql://postgres@127.0.0.1:5432/postgres"))
REDIS_SERVER_URL = os.environ.get("AXIOM_TEST_REDIS_URL", "redis://127.0.0.1:6379").rstrip("/")
RABBITMQ_HOST = os.environ.get("AXIOM_TEST_RABBITMQ_HOST", "127.0.0.1")
RABBITMQ_PORT = int(os.environ.get("AXIOM_TEST_RABBITMQ_PORT", "5672"))
RABBITMQ_USER = os.environ.get("AXIOM_TEST_RABBITMQ_USER", "guest")
RABBITMQ_PASSWORD = os.environ.get("AXIOM_TEST_RABBITMQ_PASSWORD", "guest")
RABBITMQ_MANAGEMENT_URL = os.environ.get("AXIOM_TEST_RABBITMQ_MANAGEMENT_URL",
                                         f"http://{RABBITMQ_HOST}:15672").rstrip("/")
REDIS_INDEXES = tuple(range(1, 16))
REDIS_CLAIM_PREFIX = "axiom-test:redis-db-claim:"
REDIS_CLAIM_SECONDS = 2 * 3600
# Variables of the deployment that must come from the stack, never from the developer's shell.
STACK_VARIABLES = ("DATABASE_URL", "REDIS_URL", "RABBITMQ_URL", "SECRET_KEY", "WORKER_TYPE", "WORKER_CONCURRENCY",
                   "AXIOM_COORDINATOR_PORT", "AXIOM_COORDINATOR_HOST", "AXIOM_REDIS_PREFIX", "LOG_LEVEL",
                   "AXIOM_INSTANCE_ID", "AXIOM_DATA_DIR")


# --- are the servers there? ----------------------------------------------------------------------------------------


def postgres_problem() -> str | None:
    """Why PostgreSQL cannot be used (None when it can)."""
    engine = create_engine(POSTGRES_ADMIN_URL, connect_args={"connect_timeout": 3})
    try:
        with engine.connect():
            return None
    except OperationalError as exc:
        shown = make_url(POSTGRES_ADMIN_URL).render_as_string()
        return f"PostgreSQL is not reachable at {shown}: {str(exc).splitlines()[0]}"
    finally:
        engine.dispose()


def redis_problem() -> str | None:
    client = redis.Redis.from_url(f"{REDIS_SERVER_URL}/0", socket_connect_timeout=2, socket_timeout=2)
    try:
        client.ping()
        return None
    except redis.RedisError as exc:
        return f"Redis is not reachable at {REDIS_SERVER_URL}: {exc}"
    finally:
        client.close()


def rabbitmq_problem() -> str | None:
    try:
        with socket.create_connection((RABBITMQ_HOST, RABBITMQ_PORT), timeout=2):
            pass
    except OSError as exc:
        return f"RabbitMQ is not reachable at {RABBITMQ_HOST}:{RABBITMQ_PORT}: {exc}"
    if shutil.which("rabbitmqctl") is None:
        return "rabbitmqctl is not installed (needed to create a vhost per test module)"
    try:
        rabbitmqctl("list_vhosts", timeout=30)
    except RuntimeError as exc:
        return f"rabbitmqctl does not work here (run as root or with the Erlang cookie): {exc}"
    return None


def rabbitmq_management_problem() -> str | None:
    """Why RabbitMQ's management HTTP API cannot be used with the test user (None when it can)."""
    try:
        response = httpx.get(f"{RABBITMQ_MANAGEMENT_URL}/api/overview", auth=(RABBITMQ_USER, RABBITMQ_PASSWORD),
                             timeout=3)
    except httpx.HTTPError as exc:
        return (f"RabbitMQ's management API is not reachable at {RABBITMQ_MANAGEMENT_URL} ({exc}): "
                "rabbitmq-plugins enable rabbitmq_management")
    if response.status_code != 200:
        return f"RabbitMQ's management API at {RABBITMQ_MANAGEMENT_URL} answered {response.status_code} for user " \
               f"{RABBITMQ_USER!r}"
    return None


def require_broker_management() -> None:
    """Skip (or fail under AXIOM_REQUIRE_SERVICES=1) unless RabbitMQ, rabbitmqctl and its management API work."""
    for problem in (rabbitmq_problem(), rabbitmq_management_problem()):
        require(problem is None, problem or "")


def require_stack_services() -> None:
    """Skip (or fail under AXIOM_REQUIRE_SERVICES=1) unless PostgreSQL, Redis and RabbitMQ (+ rabbitmqctl) work."""
    for problem in (postgres_problem(), redis_problem(), rabbitmq_problem()):
        require(problem is None, problem or "")


def rabbitmqctl(*args: str, timeout: float = 60.0) -> str:
    """Run `rabbitmqctl -q ARGS...`; its stdout, or RuntimeError with its output."""
    try:
        proc = subprocess.run(["rabbitmqctl", "-q", *args], capture_output=True, text=True, timeout=timeout)
    except (OSError, subprocess.TimeoutExpired) as exc:
        raise RuntimeError(f"rabbitmqctl {' '.join(args)}: {exc}") from None
    if proc.returncode != 0:
        raise RuntimeError(f"rabbitmqctl {' '.join(args)} exited {proc.returncode}: "
                           f"{(proc.stderr or proc.stdout).strip()[-500:]}")
    return proc.stdout


# --- one process ----------------------------------------------------------------------------------------------------


class ServiceProcess:
    """One service process in its own process group, stdout+stderr appended to `log_path`."""

    def __init__(self, name: str, argv: list[str], env: Mapping[str, str], log_path: Path) -> None:
        self.name, self.argv, self.env, self.log_path = name, list(argv), dict(env), log_path
        self.popen: subprocess.Popen | None = None

    def start(self) -> "ServiceProcess":
        with open(self.log_path, "ab") as log:
            self.popen = subprocess.Popen(self.argv, env=self.env, cwd=REPO, stdin=subprocess.DEVNULL, stdout=log,
                                          stderr=subprocess.STDOUT, start_new_session=True)
        return self

    @property
    def pid(self) -> int:
        if self.popen is None:
            raise RuntimeError(f"{self.name} was never started")
        return self.popen.pid

    @property
    def running(self) -> bool:
        return self.popen is not None and self.popen.poll() is None

    def signal_group(self, sig: int) -> None:
        """Send `sig` to the whole process group (the leader and anything it started)."""
        if self.popen is None:
            return
        try:
            os.killpg(self.popen.pid, sig)
        except (ProcessLookupError, PermissionError):
            pass

    def kill(self) -> None:
        """kill -9 of the process group; returns once the leader is reaped."""
        self.signal_group(signal.SIGKILL)
        if self.popen is not None:
            self.popen.wait(10)

    def stop(self, grace: float = 5.0) -> None:
        """SIGTERM to the group, SIGKILL after `grace` seconds (and always to stragglers of the group)."""
        if self.popen is None:
            return
        if self.popen.poll() is None:
            self.signal_group(signal.SIGTERM)
            try:
                self.popen.wait(grace)
            except subprocess.TimeoutExpired:
                pass
        self.signal_group(signal.SIGKILL)
        try:
            self.popen.wait(10)
        except subprocess.TimeoutExpired:
            pass

    def log_text(self) -> str:
        try:
            return self.log_path.read_text(encoding="utf-8", errors="replace")
        except OSError:
            return ""

    def tail(self, lines: int = 40) -> str:
        return "\n".join(self.log_text().splitlines()[-lines:])

    def describe(self) -> str:
        if self.popen is None:
            return f"{self.name}: not started"
        code = self.popen.poll()
        return f"{self.name} (pid {self.popen.pid}, {'running' if code is None else f'exited {code}'})"


# --- the isolated infrastructure ---------------------------------------------------------------------------------


class PostgresDatabase:
    """A uniquely named, migrated database on the PostgreSQL server, dropped by `drop()`."""

    def __init__(self, prefix: str = "axiom_e2e") -> None:
        self.name = f"{prefix}_{uuid.uuid4().hex[:12]}"
        self.url = make_url(POSTGRES_ADMIN_URL).set(database=self.name).render_as_string(hide_password=False)
        self._created = False

    def create(self, *, migrate: bool = True) -> str:
        """Create the database (and migrate it to the head revision unless `migrate` is false); its URL."""
        from shared.db.migrations import upgrade_to_head

        admin = create_engine(POSTGRES_ADMIN_URL, isolation_level="AUTOCOMMIT")
        try:
            with admin.connect() as connection:
                connection.execute(text(f'CREATE DATABASE "{self.name}"'))
        finally:
            admin.dispose()
        self._created = True
        if migrate:
            upgrade_to_head(self.url)
        return self.url

    def drop(self) -> None:
        if not self._created:
            return
        admin = create_engine(POSTGRES_ADMIN_URL, isolation_level="AUTOCOMMIT")
        try:
            with admin.connect() as connection:
                connection.execute(text(f'DROP DATABASE IF EXISTS "{self.name}" WITH (FORCE)'))
            self._created = False
        finally:
            admin.dispose()


def _preferred_redis_indexes() -> list[int]:
    """1..15, starting at one derived from the pytest-xdist worker id (gw0 -> 1, gw1 -> 2, ...)."""
    worker = os.environ.get("PYTEST_XDIST_WORKER", "gw0")
    digits = "".join(ch for ch in worker if ch.isdigit())
    start = int(digits) % len(REDIS_INDEXES) if digits else 0
    return list(REDIS_INDEXES[start:] + REDIS_INDEXES[:start])


class RedisIndex:
    """A Redis database index no other run uses: claimed in index 0 with SET NX EX, flushed before and after."""

    def __init__(self) -> None:
        self.index: int | None = None
        self._token = f"{socket.gethostname()}:{os.getpid()}:{uuid.uuid4().hex}"
        self._claims = redis.Redis.from_url(f"{REDIS_SERVER_URL}/0", decode_responses=True, socket_timeout=5)

    @property
    def url(self) -> str:
        if self.index is None:
            raise RuntimeError("no Redis index claimed")
        return f"{REDIS_SERVER_URL}/{self.index}"

    def claim(self) -> int:
        for index in _preferred_redis_indexes():
            if self._claims.set(f"{REDIS_CLAIM_PREFIX}{index}", self._token, nx=True, ex=REDIS_CLAIM_SECONDS):
                self.index = index
                self.flush()
                return index
        raise RuntimeError(f"every Redis index {REDIS_INDEXES[0]}..{REDIS_INDEXES[-1]} is claimed by another run "
                           f"(keys {REDIS_CLAIM_PREFIX}* in index 0)")

    def client(self, **kwargs) -> redis.Redis:
        return redis.Redis.from_url(self.url, **{"decode_responses": True, "socket_timeout": 5, **kwargs})

    def flush(self) -> None:
        client = self.client()
        try:
            client.flushdb()
        finally:
            client.close()

    def release(self) -> None:
        if self.index is None:
            return
        try:
            self.flush()
        finally:
            key = f"{REDIS_CLAIM_PREFIX}{self.index}"
            if self._claims.get(key) == self._token:
                self._claims.delete(key)
            self.index = None
            self._claims.close()


class RabbitVhost:
    """A RabbitMQ vhost of its own for one stack, with full permissions for the test user."""

    def __init__(self, prefix: str = "axiom-e2e") -> None:
        self.name = f"{prefix}-{uuid.uuid4().hex[:12]}"
        self._created = False

    @property
    def url(self) -> str:
        return f"amqp://{RABBITMQ_USER}:{RABBITMQ_PASSWORD}@{RABBITMQ_HOST}:{RABBITMQ_PORT}/{self.name}"

    def create(self) -> None:
        rabbitmqctl("add_vhost", self.name)
        self._created = True
        rabbitmqctl("set_permissions", "-p", self.name, RABBITMQ_USER, ".*", ".*", ".*")

    def delete(self) -> None:
        if self._created:
            rabbitmqctl("delete_vhost", self.name)
            self._created = False

    def close_all_connections(self, explanation: str = "test") -> None:
        """Drop every client connection of this vhost (and only of this vhost)."""
        rabbitmqctl("close_all_connections", "-p", self.name, explanation)

    def consumers(self) -> list[tuple[str, str]]:
        """(queue name, channel pid) of every consumer in the vhost."""
        out = rabbitmqctl("list_consumers", "-p", self.name, "-s", "queue_name", "channel_pid", timeout=30)
        rows = []
        for line in out.splitlines():
            fields = line.split("\t")
            if len(fields) >= 2 and fields[0] and not fields[0].startswith("queue_name"):
                rows.append((fields[0], fields[1]))
        return rows


# --- the deployment -------------------------------------------------------------------------------------------------


class DistributedStack:
    """Coordinator and workers on their own database, Redis index and vhost (module doc)."""

    def __init__(self, workdir: Path, *, log_level: str = "INFO", worker_log_level: str | None = None) -> None:
        self.workdir = Path(workdir)
        self.workdir.mkdir(parents=True, exist_ok=True)
        self.database = PostgresDatabase()
        self.redis_index = RedisIndex()
        self.vhost = RabbitVhost()
        self.secret_key = secrets.token_hex(32)
        self.log_level = log_level
        self.worker_log_level = worker_log_level or log_level
        self.coordinator: ServiceProcess | None = None
        self.coordinator_port: int | None = None
        self.listener: ServiceProcess | None = None
        self.listener_port: int | None = None
        self.workers: list[ServiceProcess] = []
        self.retired: list[ServiceProcess] = []  # killed or stopped workers (their logs still count)
        self.api_key: str | None = None
        self._count = 0

    # -- setup / teardown --------------------------------------------------------------------------------------
    def setup(self) -> "DistributedStack":
        """Database (migrated) and an admin API key, Redis index, vhost."""
        self.database.create()
        self.redis_index.claim()
        self.vhost.create()
        self.api_key = self._create_api_key()
        return self

    def _create_api_key(self) -> str:
        from shared.db.models import Role
        from shared.security.api_keys import create_api_key

        engine = make_engine(self.database.url)
        try:
            with session_scope(make_sessionmaker(engine)) as session:
                _row, key = create_api_key(session, name="e2e-admin", role=Role.ADMIN, created_by="tests")
        finally:
            engine.dispose()
        return key

    def close(self) -> None:
        """Stop every process (process groups), then remove the vhost, the Redis index and the database."""
        errors = []
        processes = [*self.workers, *(p for p in (self.coordinator, self.listener) if p is not None)]
        for process in processes:  # SIGTERM to all first: they shut down in parallel
            process.signal_group(signal.SIGTERM)
        for process in processes:
            try:
                process.stop(grace=3.0)
            except Exception as exc:  # keep tearing down
                errors.append(f"{process.name}: {exc}")
        for step in (self.vhost.delete, self.redis_index.release, self.database.drop):
            try:
                step()
            except Exception as exc:
                errors.append(f"{getattr(step, '__qualname__', step)}: {exc}")
        if errors:
            raise RuntimeError("teardown of the distributed stack: " + "; ".join(errors))

    # -- environment and processes ------------------------------------------------------------------------------
    def env(self, **extra: str) -> dict[str, str]:
        """The deployment's environment (os.environ without any stack variable of the developer's shell)."""
        base = {k: v for k, v in os.environ.items() if k not in STACK_VARIABLES}
        base.update({
            "DATABASE_URL": self.database.url, "REDIS_URL": self.redis_index.url, "RABBITMQ_URL": self.vhost.url,
            "SECRET_KEY": self.secret_key, "LOG_LEVEL": self.log_level, "PYTHONUNBUFFERED": "1",
            "PYTHONFAULTHANDLER": "1",  # SIGABRT dumps every thread's stack to the log (see _dump_stacks)
            "AXIOM_DATA_DIR": str(self.workdir / "data"),
        })
        base.update(extra)
        return base

    def _process(self, name: str, module: str, env: Mapping[str, str]) -> ServiceProcess:
        return ServiceProcess(name, [sys.executable, "-m", module], env, self.workdir / f"{name}.log")

    def start_coordinator(self) -> ServiceProcess:
        self.coordinator_port = free_port()
        env = self.env(AXIOM_COORDINATOR_HOST="127.0.0.1", AXIOM_COORDINATOR_PORT=str(self.coordinator_port))
        self.coordinator = self._process("coordinator", "services.spanner_coordinator", env).start()
        return self.coordinator

    def start_listener(self, timeout: float = 30.0) -> ServiceProcess:
        """`python -m services.listener` (the spanning DIMSE SCP) on a free loopback port, in the distributed mode
        (the stack's environment names RabbitMQ and Redis); returns once the port accepts connections."""
        self.listener_port = free_port()
        env = self.env(AXIOM_SCP_HOST="127.0.0.1", AXIOM_SCP_PORT=str(self.listener_port),
                       AXIOM_INSTANCE_ID="e2e-listener")
        self.listener = self._process("listener", "services.listener", env).start()
        deadline = time.monotonic() + timeout
        while True:
            try:
                socket.create_connection(("127.0.0.1", self.listener_port), timeout=0.5).close()
                return self.listener
            except OSError:
                if time.monotonic() > deadline or not self.listener.running:
                    raise AssertionError(f"listener not listening in time\n{self.listener.tail()}")
                time.sleep(0.1)

    def start_worker(self, *, worker_type: str = "all", concurrency: int = 4) -> ServiceProcess:
        self._count += 1
        env = self.env(WORKER_TYPE=worker_type, WORKER_CONCURRENCY=str(concurrency),
                       LOG_LEVEL=self.worker_log_level, AXIOM_INSTANCE_ID=f"e2e-worker-{self._count}")
        worker = self._process(f"worker-{self._count}", "services.worker", env).start()
        self.workers.append(worker)
        return worker

    def kill_worker(self, worker: ServiceProcess) -> None:
        """kill -9 (the whole process group) and forget it as a live worker."""
        worker.kill()
        self.workers.remove(worker)
        self.retired.append(worker)

    def run_cli(self, *args: str, timeout: float = 60.0) -> subprocess.CompletedProcess:
        """`axiom ARGS...` with the deployment's environment; AssertionError with its output when it fails."""
        proc = subprocess.run([sys.executable, "-m", "services.cli.main", *args], env=self.env(COLUMNS="160"),
                              cwd=REPO, capture_output=True, text=True, timeout=timeout)
        if proc.returncode != 0:
            raise AssertionError(f"axiom {' '.join(args)} exited {proc.returncode}:\n{proc.stdout}\n{proc.stderr}")
        return proc

    # -- readiness --------------------------------------------------------------------------------------------
    @property
    def base_url(self) -> str:
        return f"http://127.0.0.1:{self.coordinator_port}"

    def wait_ready(self, timeout: float = 60.0) -> None:
        """The coordinator answers /health 200 and every live worker consumes (AssertionError with logs if not)."""
        deadline = time.monotonic() + timeout
        self.wait_healthy(deadline)
        self.wait_consuming(deadline=deadline)

    def wait_healthy(self, deadline: float) -> None:
        last = "no answer"
        with httpx.Client(base_url=self.base_url, timeout=3.0) as client:
            while time.monotonic() < deadline:
                self._check_alive()
                try:
                    response = client.get("/health")
                    if response.status_code == 200:
                        return
                    last = f"{response.status_code} {response.text[:300]}"
                except httpx.TransportError as exc:
                    last = repr(exc)
                time.sleep(0.2)
        self._dump_stacks([self.coordinator] if self.coordinator else [])
        raise AssertionError(f"coordinator /health not 200 in time (last: {last})\n{self.tails()}")

    def wait_consuming(self, workers: list[ServiceProcess] | None = None, *, deadline: float | None = None) -> None:
        """Every worker has its remote-control queue consumer, and dimse_tasks has one consumer per live worker."""
        workers = list(self.workers if workers is None else workers)
        deadline = deadline or time.monotonic() + 60.0
        missing: list[str] = []
        while time.monotonic() < deadline:
            self._check_alive()
            consumers = self.vhost.consumers()
            queues = [queue for queue, _channel in consumers]
            missing = [w.name for w in workers if not any(f"-{w.pid}@" in q
                                                         for q in queues)]
            if not missing and queues.count("dimse_tasks") == len(self.workers):
                return
            time.sleep(0.3)
        self._dump_stacks(workers)
        raise AssertionError(f"workers not consuming in time: {missing or 'consumer count'} "
                             f"(consumers: {self.vhost.consumers()})\n{self.tails()}")

    @staticmethod
    def _dump_stacks(processes: list[ServiceProcess]) -> None:
        """A process that is not ready in time: SIGABRT makes it write every thread's stack (PYTHONFAULTHANDLER)
        to its log before it dies, so the failure report shows where it was stuck."""
        for process in processes:
            if process.running:
                os.kill(process.pid, signal.SIGABRT)
        for process in processes:
            if process.popen is not None:
                try:
                    process.popen.wait(3)
                except subprocess.TimeoutExpired:
                    pass

    def _check_alive(self) -> None:
        dead = [p.describe() for p in [self.coordinator, *self.workers] if p is not None and not p.running]
        if dead:
            raise AssertionError(f"service process exited: {', '.join(dead)}\n{self.tails()}")

    # -- use ------------------------------------------------------------------------------------------------------
    def client(self, timeout: float = 30.0) -> httpx.Client:
        """An HTTP client for the coordinator with the admin API key."""
        return httpx.Client(base_url=self.base_url, headers={"X-API-Key": self.api_key or ""}, timeout=timeout)

    def redis(self) -> redis.Redis:
        """A client on the stack's Redis index (str responses)."""
        return self.redis_index.client()

    def worker_with_local_port(self, port: int) -> ServiceProcess | None:
        """The live worker holding a TCP socket whose local port is `port` (Linux /proc), or None."""
        inodes = _socket_inodes(port)
        for worker in self.workers:
            if inodes and _holds_socket(worker.pid, inodes):
                return worker
        return None

    def all_processes(self) -> list[ServiceProcess]:
        return [p for p in [self.coordinator, self.listener, *self.workers, *self.retired] if p is not None]

    def tails(self, lines: int = 30) -> str:
        return "\n".join(f"----- {p.describe()}: last {lines} lines of {p.log_path} -----\n{p.tail(lines)}"
                         for p in self.all_processes())

    @contextmanager
    def tails_on_failure(self, config: pytest.Config, *, when: Callable[[pytest.Item], bool] = lambda item: True,
                         lines: int = 30) -> Iterator[None]:
        """While active, a failing test's report gets a section with every process's log tail."""
        plugin = _TailsPlugin(self, when, lines)
        name = f"axiom-stack-tails-{id(plugin)}"
        config.pluginmanager.register(plugin, name)
        try:
            yield
        finally:
            config.pluginmanager.unregister(name=name)


class _TailsPlugin:
    def __init__(self, stack: DistributedStack, when: Callable[[pytest.Item], bool], lines: int) -> None:
        self.stack, self.when, self.lines = stack, when, lines

    @pytest.hookimpl(hookwrapper=True)
    def pytest_runtest_makereport(self, item: pytest.Item, call):
        outcome = yield
        report = outcome.get_result()
        if report.failed and self.when(item):
            report.sections.append(("distributed stack logs", self.stack.tails(self.lines)))


def _socket_inodes(local_port: int) -> set[str]:
    inodes: set[str] = set()
    for table in ("/proc/net/tcp", "/proc/net/tcp6"):
        try:
            rows = Path(table).read_text().splitlines()[1:]
        except OSError:
            continue
        for row in rows:
            fields = row.split()
            if len(fields) > 9 and int(fields[1].rsplit(":", 1)[1], 16) == local_port:
                inodes.add(fields[9])
    return inodes


def _holds_socket(pid: int, inodes: set[str]) -> bool:
    try:
        fds = os.listdir(f"/proc/{pid}/fd")
    except OSError:
        return False
    for fd in fds:
        try:
            target = os.readlink(f"/proc/{pid}/fd/{fd}")
        except OSError:
            continue
        if target.startswith("socket:[") and target[8:-1] in inodes:
            return True
    return False
