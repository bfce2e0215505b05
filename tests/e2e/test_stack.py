"""`axiom stack up` for real: the repository's compose files as local processes on PostgreSQL, Redis and RabbitMQ.

Own infrastructure (tests.peers.services): an EMPTY database (the stack's `migrate` step must create the schema),
a Redis index and a RabbitMQ vhost. The stack runs with `--scale dimse-query-worker=2` and a port offset that makes
8001/8002/11114 free loopback ports. Checked: both HTTP services' /health, the services status listing the two
query workers and the listener healthy (their heartbeats), a spanning query through the coordinator against a PACS
simulator, a C-ECHO to the listener, and SIGINT stopping the stack with every child gone and exit code 0. The
one-shot `broker-setup` (`axiom broker setup`, a process) must have put the queue-limit policy into the stack's
vhost through RabbitMQ's management API, which this test therefore needs too.
"""

from __future__ import annotations

import json
import os
import random
import re
import secrets
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path

import httpx
import pytest
from pynetdicom import AE

from services.pacs_sim import PacsSimulator
from services.pacs_sim.catalog import generate_catalog
from shared.db.models import Role
from shared.db.session import make_engine, make_sessionmaker, session_scope
from shared.security.api_keys import create_api_key
from tests.peers.services import (
    RABBITMQ_MANAGEMENT_URL, RABBITMQ_PASSWORD, RABBITMQ_USER, STACK_VARIABLES, PostgresDatabase, RabbitVhost,
    RedisIndex, require_broker_management, require_stack_services,
)

pytestmark = pytest.mark.integration
REPO = Path(__file__).resolve().parents[2]
PORTS = (8001, 8002, 11114)
SCP_AE = "STACK_SPAN"
VERIFICATION = "1.2.840.10008.1.1"


def free_offset() -> int:
    """An offset that makes every published port of the compose files a free loopback port."""
    for _ in range(200):
        offset = random.randrange(20000, 50000)
        try:
            for port in PORTS:
                with socket.socket() as sock:
                    sock.bind(("127.0.0.1", port + offset))
            return offset
        except OSError:
            continue
    raise AssertionError("no free port offset found")


@pytest.fixture()
def infrastructure(tmp_path):
    require_stack_services()
    require_broker_management()
    database, redis_index, vhost = PostgresDatabase("axiom_stack"), RedisIndex(), RabbitVhost("axiom-stack")
    try:
        database.create(migrate=False)  # migrating it is the stack's job
        redis_index.claim()
        vhost.create()
        env = {k: v for k, v in os.environ.items() if k not in STACK_VARIABLES}
        env.pop("AXIOM_RABBITMQ_MANAGEMENT_URL", None)
        if "AXIOM_TEST_RABBITMQ_MANAGEMENT_URL" in os.environ:
            env["AXIOM_RABBITMQ_MANAGEMENT_URL"] = RABBITMQ_MANAGEMENT_URL
        env.update(DATABASE_URL=database.url, REDIS_URL=redis_index.url, RABBITMQ_URL=vhost.url,
                   SECRET_KEY=secrets.token_hex(32), AXIOM_HEARTBEAT_SECONDS="1", LOG_LEVEL="WARNING",
                   AXIOM_DATA_DIR=str(tmp_path / "data"), WORKER_CONCURRENCY="2", COLUMNS="160")
        yield env
    finally:
        for step in (vhost.delete, redis_index.release, database.drop):
            try:
                step()
            except Exception:  # keep tearing down
                pass


def wait_until(check, timeout: float, what: str, log: Path):
    deadline = time.monotonic() + timeout
    last = None
    while time.monotonic() < deadline:
        try:
            last = check()
            if last:
                return last
        except (httpx.TransportError, AssertionError) as exc:
            last = exc
        time.sleep(0.3)
    raise AssertionError(f"timed out waiting for {what} (last: {last!r})\n{log.read_text()[-4000:]}")


def started_pids(log: Path) -> dict[str, int]:
    """label -> pid from the stack's `[stack] <label> started (pid N)` lines."""
    pids = {}
    for line in log.read_text().splitlines():
        if line.startswith("[stack]") and " started (pid " in line:
            words = line.split("|", 1)[1].split()
            pids[words[0]] = int(line.split("(pid ")[1].split(")")[0])
    return pids


def alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    return True


def healthy_services(api: httpx.Client, pids: dict[str, int]):
    body = api.get("/api/v1/spanner/services/status").json()
    by_pid = {entry["pid"]: entry for entry in body["services"] if entry["health"] == "healthy"}
    wanted = ("dimse-query-worker-1", "dimse-query-worker-2", "dimse-scp-listener")
    return all(pids.get(label) in by_pid for label in wanted) and by_pid


def test_stack_up_runs_the_compose_topology_and_stops_on_sigint(infrastructure, tmp_path):
    env, offset, log = infrastructure, free_offset(), tmp_path / "stack.log"
    api_url, coordinator_url = f"http://127.0.0.1:{8001 + offset}", f"http://127.0.0.1:{8002 + offset}"
    catalog = generate_catalog(5, studies=4, patients=2, series_per_study=1, instances_per_series=1)
    with PacsSimulator("stack-sim", "STACK_SIM", catalog).start() as sim, open(log, "w") as out:
        stack = subprocess.Popen([sys.executable, "-m", "services.cli.main", "stack", "up", "--scale",
                                  "dimse-query-worker=2", "--port-offset", str(offset), "--no-color"], cwd=REPO,
                                 env=env, stdout=out, stderr=subprocess.STDOUT, start_new_session=True)
        pids: dict[str, int] = {}
        try:
            for url in (api_url, coordinator_url):
                wait_until(lambda: httpx.get(f"{url}/health", timeout=2).status_code == 200, 45, f"{url}/health", log)
            assert_broker_policy(env, log)
            pids = started_pids(log)
            assert set(pids) == {"api", "spanner-coordinator", "dimse-query-worker-1", "dimse-query-worker-2",
                                 "spanning-aggregator", "dimse-scp-listener"}, log.read_text()[-3000:]
            key = provision(env, sim, log)
            with httpx.Client(base_url=api_url, headers={"X-API-Key": key}, timeout=10) as api:
                services = wait_until(lambda: healthy_services(api, pids), 30, "healthy workers and listener", log)
            workers = [services[pids[f"dimse-query-worker-{n}"]] for n in (1, 2)]
            assert all(w["kind"] == "worker" and w["details"]["queues"] == ["dimse_tasks"] for w in workers), workers
            assert services[pids["dimse-scp-listener"]]["kind"] == "listener"
            assert_span(coordinator_url, key, catalog)
            assert_echo(11114 + offset)
        finally:
            if stack.poll() is None:
                stack.send_signal(signal.SIGINT)
            try:
                code = stack.wait(30)
            except subprocess.TimeoutExpired:
                os.killpg(stack.pid, signal.SIGKILL)
                for pid in started_pids(log).values():
                    if alive(pid):
                        os.kill(pid, signal.SIGKILL)
                raise
    text_out = log.read_text()
    assert code == 0, text_out[-4000:]
    assert not [label for label, pid in started_pids(log).items() if alive(pid)], text_out[-3000:]
    assert "did not stop" not in text_out and "| stopped: api (" in text_out


def assert_broker_policy(env: dict[str, str], log: Path) -> None:
    """The one-shot broker-setup ran before the services (its output is in the log) and left the policy of
    deploy/rabbitmq/definitions.json in the stack's vhost."""
    vhost = env["RABBITMQ_URL"].rsplit("/", 1)[1]
    text = log.read_text()
    applied = re.search(r"^broker-setup +\| created +policy spanning-limits$", text, re.M)
    started = re.search(r"^\[stack\] +\| api started \(pid", text, re.M)
    assert applied and started and applied.start() < started.start(), text[-3000:]
    answer = httpx.get(f"{RABBITMQ_MANAGEMENT_URL}/api/policies/{vhost}", auth=(RABBITMQ_USER, RABBITMQ_PASSWORD),
                       timeout=10)
    assert [(p["name"], p["definition"]) for p in answer.json()] == [
        ("spanning-limits", {"max-length": 10000, "overflow": "reject-publish"})], answer.text


def provision(env: dict[str, str], sim: PacsSimulator, log: Path) -> str:
    """The simulator as a source and a spanner config answered on SCP_AE (`axiom config apply`), and an admin key."""
    config = Path(env["AXIOM_DATA_DIR"]) / "axiom.yaml"
    config.parent.mkdir(parents=True, exist_ok=True)
    config.write_text(json.dumps({
        "sources": [{"name": "sim", "kind": "dimse", "ae_title": sim.ae_title, "host": "127.0.0.1",
                     "port": sim.dimse_port}],
        "spanner_configs": [{"name": "stack", "scp_ae_title": SCP_AE, "query_timeout_seconds": 20,
                             "sources": [{"source": "sim", "priority": 1}]}]}))
    applied = subprocess.run([sys.executable, "-m", "services.cli.main", "config", "apply", str(config)], cwd=REPO,
                             env=env, capture_output=True, text=True, timeout=60)
    assert applied.returncode == 0, applied.stdout + applied.stderr + log.read_text()[-2000:]
    engine = make_engine(env["DATABASE_URL"])
    try:
        with session_scope(make_sessionmaker(engine)) as session:
            _row, key = create_api_key(session, name="stack-e2e", role=Role.ADMIN, created_by="tests")
    finally:
        engine.dispose()
    return key


def assert_span(coordinator_url: str, key: str, catalog) -> None:
    with httpx.Client(base_url=coordinator_url, headers={"X-API-Key": key}, timeout=30) as client:
        accepted = client.post("/spanning-query", params={"spanner_config": "stack", "query_level": "STUDY"},
                               json={"PatientID": None, "StudyInstanceUID": None})
        assert accepted.status_code == 202, accepted.text
        query_id = accepted.json()["query_id"]
        deadline = time.monotonic() + 25
        while True:
            view = client.get(f"/spanning-query/{query_id}", params={"wait": 5, "limit": 100}).json()
            if view["status"] in ("completed", "partial", "failed", "cancelled") or time.monotonic() > deadline:
                break
    assert view["status"] == "completed", view
    found = {match["0020000D"]["Value"][0] for match in view["results"]}
    assert found == set(catalog.study_uids())


def assert_echo(port: int) -> None:
    """A C-ECHO on SCP_AE succeeds. The listener re-reads the configs every 2 s (services/listener/gate.py), so an
    association in the first seconds after `config apply` may still be refused: try for a few seconds."""
    ae = AE(ae_title="STACK_TEST")
    ae.add_requested_context(VERIFICATION)
    deadline = time.monotonic() + 6
    try:
        while True:
            assoc = ae.associate("127.0.0.1", port, ae_title=SCP_AE)
            if assoc.is_established or time.monotonic() > deadline:
                break
            time.sleep(0.5)
        assert assoc.is_established, "the listener refused the association"
        try:
            assert int(assoc.send_c_echo().Status) == 0
        finally:
            assoc.release()
    finally:
        ae.shutdown()
