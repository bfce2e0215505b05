"""/metrics on the API (a QIDO-RS span against a PACS simulator, SQLite) and on the coordinator (real PostgreSQL,
Redis and RabbitMQ), plus the RabbitMQ queue-depth probe: Prometheus text format 0.0.4, the span, source, request
and queue families, 401 without credentials, 200 with AXIOM_METRICS_TOKEN."""

from __future__ import annotations

import uuid

import pytest
from fastapi.testclient import TestClient
from kombu import Connection
from prometheus_client.parser import text_string_to_metric_families

from services.api.app import create_app
from services.pacs_sim import PacsSimulator, overlapping_catalogs
from services.spanner_coordinator.app import create_app as create_coordinator
from shared.config import DatabaseSettings, DistributedSettings, MetricsSettings, Settings
from shared.db.models import Role
from shared.messaging.celery_app import create_celery_app
from shared.metrics import QueueDepthCollector
from shared.security.api_keys import create_api_key
from tests.fakes.ports import Script, study
from tests.integration.api_fixtures import CHEAP, api_settings, bearer, migrated_sqlite, provision
from tests.integration.distributed_fixtures import RABBITMQ_URL, REDIS_URL
from tests.peers import free_port, require

TOKEN = "scrape-token-0123456789abcdef"
PASSWORD = "alice-password-1"
FORMAT = "text/plain; version=0.0.4; charset=utf-8"


def samples(text: str) -> dict[tuple[str, frozenset], float]:
    """(sample name, labels) -> value of a Prometheus text exposition (parsed by prometheus_client's parser)."""
    return {(s.name, frozenset(s.labels.items())): s.value
            for family in text_string_to_metric_families(text) for s in family.samples}


def value(found: dict, name: str, **labels: str) -> float:
    return found.get((name, frozenset(labels.items())), 0.0)


@pytest.fixture(scope="module")
def api_client(tmp_path_factory):
    """An API client (alice's bearer token not set by default) on a config of one simulator and a dead source."""
    url, engine, factory = migrated_sqlite(tmp_path_factory.mktemp("metrics"))
    catalogs = overlapping_catalogs(3, ["A"], studies=3, patients=2, series_per_study=(1, 1),
                                    instances_per_series=(1, 1))
    with PacsSimulator("A", "PACS_A", catalogs["A"]) as a:
        connections = {"A": ("dimse", {"ae_title": "PACS_A", "host": "127.0.0.1", "port": a.dimse_port}),
                       "dead": ("dimse", {"ae_title": "DEAD", "host": "127.0.0.1", "port": free_port(),
                                          "connect_timeout": 1})}
        ids = provision(factory, sources=connections, configs={"with-dead": (["A", "dead"], {})},
                        users={"alice": PASSWORD})
        settings = api_settings(url).model_copy(update={"metrics": MetricsSettings(AXIOM_METRICS_TOKEN=TOKEN)})
        with TestClient(create_app(settings)) as client:
            client.config_id, client.alice = ids["with-dead"], bearer(client, "alice", PASSWORD)
            yield client
    engine.dispose()


def scrape(client, headers: dict[str, str]) -> dict:
    answer = client.get("/metrics", headers=headers)
    assert answer.status_code == 200, answer.text
    assert answer.headers["content-type"] == FORMAT
    return samples(answer.text)


def test_api_metrics_need_the_scrape_token_or_a_credential(api_client):
    for headers in ({}, {"Authorization": "Bearer not-the-token-0123456789"}, {"Authorization": "Basic x"}):
        refused = api_client.get("/metrics", headers=headers)
        assert refused.status_code == 401 and refused.headers["WWW-Authenticate"] == "Bearer"
    scrape(api_client, {"Authorization": f"Bearer {TOKEN}"})
    scrape(api_client, api_client.alice)  # a user's access token, as on any route
    assert "/metrics" not in str(api_client.get("/api/v1/openapi.json", headers=api_client.alice).json()["paths"])


def test_a_qido_span_shows_in_the_api_metrics(api_client):
    token = {"Authorization": f"Bearer {TOKEN}"}
    before = scrape(api_client, token)
    answer = api_client.get("/api/v1/spanner/qido/studies", headers=api_client.alice,
                            params={"spanner_config_id": api_client.config_id})
    assert answer.status_code == 200 and "Warning" in answer.headers  # the dead source failed: a partial span
    after = scrape(api_client, token)

    def grew(name: str, **labels: str) -> float:
        return value(after, name, **labels) - value(before, name, **labels)

    assert grew("axiom_spans_total", status="partial", query_type="QIDO") == 1
    assert grew("axiom_span_duration_seconds_count", query_type="QIDO") == 1
    assert grew("axiom_span_duration_seconds_sum", query_type="QIDO") > 0
    assert grew("axiom_source_query_duration_seconds_count", source="A") == 1
    assert grew("axiom_source_query_duration_seconds_count", source="dead") == 1
    assert grew("axiom_source_failures_total", source="dead", status="failed") == 1
    assert grew("axiom_source_failures_total", source="A", status="failed") == 0
    assert grew("axiom_dicomweb_requests_total", service="qido-rs", code="200") == 1


@pytest.fixture()
def coordinator(harness):
    """A coordinator app on the test's runtime, with AXIOM_METRICS_TOKEN, and an admin API key."""
    url = harness.rt.session_factory.kw["bind"].url.render_as_string(hide_password=False)
    settings = Settings(db=DatabaseSettings(DATABASE_URL=url),
                        distributed=DistributedSettings(REDIS_URL=REDIS_URL, RABBITMQ_URL=RABBITMQ_URL,
                                                        AXIOM_REDIS_PREFIX=harness.rt.store._prefix),
                        coordinator={"SECRET_KEY": "s" * 40}, metrics=MetricsSettings(AXIOM_METRICS_TOKEN=TOKEN))
    app = create_coordinator(settings, runtime=harness.rt, celery_app=create_celery_app(settings))
    harness.add_config("main", {"A": Script(matches=[study("1.2.1"), study("1.2.2")]),
                                "B": Script(query_failure="refused")})
    with harness.rt.session_factory.begin() as session:
        admin = create_api_key(session, name="admin-key", role=Role.ADMIN, hasher=CHEAP)[1]
    with TestClient(app) as client:
        yield client, harness, admin


def test_coordinator_metrics_count_every_distributed_span_and_show_the_broker(coordinator):
    client, harness, admin = coordinator
    assert client.get("/metrics").status_code == 401
    accepted = client.post("/spanning-query", params={"spanner_config": "main", "query_level": "STUDY"},
                           json={"StudyInstanceUID": ""}, headers={"X-API-Key": admin})
    assert accepted.status_code == 202
    harness.drain()
    found = scrape(client, {"Authorization": f"Bearer {TOKEN}"})
    assert value(found, "axiom_spans_total", status="partial", query_type="C-FIND") == 1
    assert value(found, "axiom_span_duration_seconds_count", query_type="C-FIND") == 1
    assert value(found, "axiom_span_duration_seconds_bucket", query_type="C-FIND", le="+Inf") == 1
    assert value(found, "axiom_source_query_duration_seconds_count", source="A") == 1
    assert value(found, "axiom_source_failures_total", source="B", status="failed") == 1
    assert value(found, "axiom_broker_up") == 1
    assert client.get("/metrics", headers={"X-API-Key": admin}).status_code == 200  # any credential, as elsewhere


def test_queue_depth_comes_from_a_passive_declare_and_a_dead_broker_says_so():
    require(_rabbitmq_up(), f"RabbitMQ is not reachable at {RABBITMQ_URL}")
    name = f"axiom_test_depth_{uuid.uuid4().hex[:8]}"
    with Connection(RABBITMQ_URL) as connection:
        queue = connection.SimpleQueue(name)
        try:
            for index in range(3):
                queue.put({"n": index})
            collector = QueueDepthCollector(lambda: Connection(RABBITMQ_URL), [name, name + "_missing"])
            families = {family.name: family for family in collector.collect()}
            depth = {s.labels["queue"]: s.value for s in families["axiom_queue_depth"].samples}
            assert depth == {name: 3.0} and families["axiom_broker_up"].samples[0].value == 1.0
        finally:
            queue.queue.delete()
            queue.close()
    dead = QueueDepthCollector(lambda: Connection(f"amqp://guest:guest@127.0.0.1:{free_port()}//"), [name],
                               timeout=1.0)
    families = {family.name: family for family in dead.collect()}
    assert set(families) == {"axiom_broker_up"} and families["axiom_broker_up"].samples[0].value == 0.0


def _rabbitmq_up() -> bool:
    try:
        with Connection(RABBITMQ_URL, connect_timeout=2) as connection:
            connection.ensure_connection(max_retries=1, timeout=2)
        return True
    except Exception:
        return False
