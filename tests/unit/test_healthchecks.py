"""The container health probes of the Dockerfiles: services.listener.healthcheck (C-ECHO against real pynetdicom
SCPs on loopback) and services.worker.healthcheck (the worker's heartbeat row in a migrated SQLite database)."""

from __future__ import annotations

from datetime import timedelta

import pytest
from pynetdicom import AE, evt
from pynetdicom.sop_class import Verification

from services.listener import healthcheck as listener_probe
from services.worker import healthcheck as worker_probe
from shared.db.base import utc_now
from shared.db.models import ActualState, ServiceKind
from shared.db.repo.service_instances import ServiceIdentity, register_service
from tests.peers import free_port


def start_scp(*, ae_title: str = "SCP", require_called: bool = False, echo_status: int = 0x0000):
    ae = AE(ae_title=ae_title)
    ae.require_called_aet = require_called
    ae.add_supported_context(Verification)
    port = free_port()
    server = ae.start_server(("127.0.0.1", port), block=False,
                             evt_handlers=[(evt.EVT_C_ECHO, lambda event: echo_status)])
    return server, port


@pytest.fixture()
def scp_factory():
    servers = []

    def make(**kwargs):
        server, port = start_scp(**kwargs)
        servers.append(server)
        return port

    yield make
    for server in servers:
        server.shutdown()


def test_echo_success_is_healthy(scp_factory, capsys):
    port = scp_factory()
    code = listener_probe.main(["--port", str(port), "--called-ae", "SCP", "--timeout", "3"])
    assert code == 0
    assert capsys.readouterr().out.startswith("healthy: C-ECHO to SCP@127.0.0.1")


def test_a_permanent_rejection_proves_the_listener_is_up(scp_factory):
    port = scp_factory(ae_title="SCP", require_called=True)  # called AE not recognised: A-ASSOCIATE-RJ (1, 1, 7)
    outcome = listener_probe.echo_listener("127.0.0.1", port, called_ae="OTHER", timeout=3)
    assert outcome.healthy and "result 1" in outcome.detail and "reason 7" in outcome.detail


def test_an_echo_failure_status_is_unhealthy(scp_factory):
    port = scp_factory(echo_status=0x0211)  # Unrecognized Operation
    outcome = listener_probe.echo_listener("127.0.0.1", port, called_ae="SCP", timeout=3)
    assert not outcome.healthy and "0x0211" in outcome.detail


def test_nothing_listening_is_unhealthy(capsys):
    code = listener_probe.main(["--port", str(free_port()), "--timeout", "2"])
    assert code == 1
    assert "no association" in capsys.readouterr().out


def test_bad_arguments_are_refused_naming_the_option(capsys):
    with pytest.raises(SystemExit) as exc:
        listener_probe.main(["--port", "0"])
    assert exc.value.code == 2 and "--port" in capsys.readouterr().err


def test_the_listener_probe_defaults_come_from_the_settings(monkeypatch):
    monkeypatch.setenv("AXIOM_SCP_PORT", "11999")
    monkeypatch.setenv("AXIOM_SCP_AE_TITLE", "MY_SPANNER")
    args = listener_probe.parse_args([], listener_probe.ScpSettings())
    assert (args.port, args.called_ae, args.host) == (11999, "MY_SPANNER", "127.0.0.1")


@pytest.fixture()
def database(tmp_path):
    from shared.db.migrations import upgrade_to_head
    from shared.db.session import make_engine, make_sessionmaker

    url = f"sqlite:///{tmp_path / 'axiom.db'}"
    upgrade_to_head(url)
    engine = make_engine(url)
    yield url, make_sessionmaker(engine)
    engine.dispose()


def beat(factory, service_id: str, host: str, *, age_seconds: float = 0.0) -> None:
    """Register (or re-register) a worker row whose last heartbeat was `age_seconds` ago."""
    with factory.begin() as session:
        register_service(session, identity=ServiceIdentity(service_id, ServiceKind.WORKER, "w", host, 1),
                         heartbeat_seconds=5.0, actual_state=ActualState.RUNNING,
                         now=utc_now() - timedelta(seconds=age_seconds))


def test_worker_probe_is_healthy_only_with_a_fresh_heartbeat_from_its_own_host(database):
    url, factory = database
    assert worker_probe.worker_health(url, "box-1") == (False, "no worker registered from host 'box-1'")
    beat(factory, "worker:dimse-query-1@box-2", "box-2")  # another container's worker does not count
    assert not worker_probe.worker_health(url, "box-1")[0]
    beat(factory, "worker:dimse-query-1@box-1", "box-1", age_seconds=60)  # 60 s > 3 intervals of 5 s: stale
    healthy, detail = worker_probe.worker_health(url, "box-1")
    assert not healthy and detail == "worker:dimse-query-1@box-1=stale"
    beat(factory, "worker:dimse-query-1@box-1", "box-1")
    assert worker_probe.worker_health(url, "box-1") == (True, "worker:dimse-query-1@box-1=healthy")


def test_worker_probe_reports_an_unreadable_database(tmp_path, capsys, monkeypatch):
    monkeypatch.setenv("DATABASE_URL", f"sqlite:///{tmp_path / 'empty.db'}")  # no schema: no service_instances
    assert worker_probe.main(["--host", "box-1"]) == 1
    assert capsys.readouterr().out.startswith("unhealthy: cannot read service_instances: OperationalError")
