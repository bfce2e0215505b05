"""The coordinator's HTTP API in the embedded mode (services.spanner_coordinator.embedded over shared.embedded_spans):
SQLite, spans run in this process against PACS simulators (services.pacs_sim), no RabbitMQ or Redis.

The GET view must be the distributed coordinator's: a finished query is compared with what
shared.distributed.intake.describe_span answers from the same database.
"""

from __future__ import annotations

import time
from types import SimpleNamespace

import pytest
from fastapi.testclient import TestClient

from services.pacs_sim import Faults, PacsSimulator, overlapping_catalogs
from services.spanner_coordinator.app import create_app
from shared.config import CoordinatorSettings, DatabaseSettings, DistributedSettings, Settings
from shared.db.models import Role
from shared.distributed.intake import describe_span
from shared.dicom.levels import QueryLevel
from shared.security import api_keys
from shared.security.api_keys import create_api_key
from shared.security.principal import Principal, PrincipalKind
from shared.security.tokens import issue_token
from tests.integration.api_fixtures import CHEAP, migrated_sqlite, provision

pytestmark = pytest.mark.integration
SECRET = "e" * 40
STUDY_UID = "0020000D"
NO_BROKER = DistributedSettings(RABBITMQ_URL=None, REDIS_URL=None)


class _NoLiveState:
    """The Redis side of a distributed runtime with nothing in it: describe_span then reads PostgreSQL/SQLite only."""

    def result(self, _query_id):
        return None

    def plan(self, _query_id):
        return None


@pytest.fixture(scope="module")
def catalogs():
    return overlapping_catalogs(11, ["A", "B"], studies=6, patients=3, shared_fraction=0.5)


@pytest.fixture(scope="module")
def world(tmp_path_factory, catalogs):
    """(client, factory, keys by name) on the embedded coordinator; config 'main' spans A and B, 'hung' spans A and
    an archive that never answers."""
    mp = pytest.MonkeyPatch()
    mp.setattr(api_keys, "default_hasher", lambda: CHEAP)
    url, engine, factory = migrated_sqlite(tmp_path_factory.mktemp("embedded"))
    with PacsSimulator("A", "PACS_A", catalogs["A"]) as a, PacsSimulator("B", "PACS_B", catalogs["B"]) as b, \
            PacsSimulator("H", "PACS_H", catalogs["A"], faults=Faults(hang=True)) as hung:
        dimse = {name: ("dimse", {"ae_title": sim.ae_title, "host": "127.0.0.1", "port": sim.dimse_port})
                 for name, sim in (("A", a), ("B", b), ("HUNG", hung))}
        provision(factory, sources=dimse, configs={"main": (["A", "B"], {}), "hung": (["A", "HUNG"], {})},
                  users={"carol": "carol-password-1"})
        keys = {}
        with factory.begin() as session:
            for name, role in (("admin-key", Role.ADMIN), ("alice-key", Role.USER), ("bob-key", Role.USER)):
                keys[name] = create_api_key(session, name=name, role=role, hasher=CHEAP)[1]
        settings = Settings(db=DatabaseSettings(DATABASE_URL=url), distributed=NO_BROKER,
                            coordinator=CoordinatorSettings(SECRET_KEY=SECRET, AXIOM_MAX_WAIT_SECONDS=5))
        app = create_app(settings, session_factory=factory, embedded=True)
        with TestClient(app) as client:
            yield client, factory, keys
    engine.dispose()
    mp.undo()


def submit(client, key: str, config: str = "main", keys=None):
    return client.post("/spanning-query", params={"spanner_config": config}, headers={"X-API-Key": key},
                       json=keys if keys is not None else {"PatientID": "", "StudyInstanceUID": ""})


def expected_studies(catalogs) -> list[str]:
    return sorted({str(r.StudyInstanceUID) for c in catalogs.values() for r in c.records(QueryLevel.STUDY)})


def test_the_back_end_is_chosen_from_the_settings(tmp_path):
    embedded = Settings(db=DatabaseSettings(DATABASE_URL=None), distributed=NO_BROKER,
                        coordinator=CoordinatorSettings(SECRET_KEY=SECRET))
    _, engine, factory = migrated_sqlite(tmp_path)
    app = create_app(embedded, session_factory=factory)
    with TestClient(app) as client:
        assert client.get("/health").json()["mode"] == "embedded"
    assert hasattr(app.state, "spans") and not hasattr(app.state, "runtime")
    engine.dispose()
    with pytest.raises(ValueError, match="SECRET_KEY"):
        create_app(embedded.model_copy(update={"coordinator": CoordinatorSettings(SECRET_KEY="short")}))
    with pytest.raises(ValueError, match="REDIS_URL"):  # a broker without Redis is the distributed mode, incomplete
        create_app(embedded.model_copy(update={"distributed": DistributedSettings(
            RABBITMQ_URL="amqp://guest:guest@127.0.0.1:5672//", REDIS_URL=None)}))


def test_a_query_is_accepted_then_completes_with_the_merged_results(world, catalogs):
    client, _, keys = world
    headers = {"X-API-Key": keys["admin-key"]}
    accepted = submit(client, keys["admin-key"])
    assert accepted.status_code == 202
    query_id = accepted.json()["query_id"]
    assert accepted.headers["Location"] == f"/spanning-query/{query_id}" == accepted.json()["status_url"]
    done = client.get(accepted.headers["Location"], headers=headers, params={"wait": 5}).json()
    assert done["status"] == "completed" and done["spanner_config"] == "main" and done["requested_by"] == "admin-key"
    assert [(s["source"], s["status"]) for s in done["sources"]] == [("A", "ok"), ("B", "ok")]
    assert (done["sources_queried"], done["sources_responded"]) == (2, 2)
    expected = expected_studies(catalogs)
    assert done["total_results"] == len(expected) < done["raw_results"]  # shared studies merged once
    page = client.get(accepted.headers["Location"], headers=headers, params={"offset": 2, "limit": 3}).json()
    assert [m[STUDY_UID]["Value"][0] for m in page["results"]] == \
        [m[STUDY_UID]["Value"][0] for m in done["results"]][2:5]
    assert sorted(m[STUDY_UID]["Value"][0] for m in done["results"]) == expected


def test_the_view_is_the_distributed_coordinators_for_the_same_query(world):
    client, factory, keys = world
    headers = {"X-API-Key": keys["admin-key"]}
    query_id = submit(client, keys["admin-key"]).json()["query_id"]
    embedded = client.get(f"/spanning-query/{query_id}", headers=headers, params={"wait": 5, "limit": 4}).json()
    distributed = describe_span(SimpleNamespace(session_factory=factory, store=_NoLiveState()), query_id, limit=4)
    assert embedded == distributed and embedded["status"] == "completed"


def test_wait_returns_when_the_query_ends_and_gives_up_after_wait(world):
    client, _, keys = world
    headers = {"X-API-Key": keys["admin-key"]}
    quick = submit(client, keys["admin-key"]).json()["query_id"]
    started = time.monotonic()
    assert client.get(f"/spanning-query/{quick}", headers=headers, params={"wait": 5}).json()["status"] == \
        "completed"
    assert time.monotonic() - started < 4
    hung = submit(client, keys["admin-key"], "hung").json()["query_id"]
    started = time.monotonic()
    running = client.get(f"/spanning-query/{hung}", headers=headers, params={"wait": 0.5}).json()
    assert 0.4 < time.monotonic() - started < 3 and running["status"] in ("accepted", "running")
    assert client.delete(f"/spanning-query/{hung}", headers=headers).status_code == 200


def test_delete_cancels_a_span_on_a_hung_source(world, catalogs):
    client, factory, keys = world
    headers = {"X-API-Key": keys["admin-key"]}
    query_id = submit(client, keys["admin-key"], "hung").json()["query_id"]
    deadline = time.monotonic() + 5
    while True:  # A answers at once; HUNG never does
        live = client.get(f"/spanning-query/{query_id}", headers=headers).json()
        if {s["source"]: s["status"] for s in live["sources"]}.get("A") == "ok" or time.monotonic() > deadline:
            break
        time.sleep(0.05)
    assert live["status"] == "running"
    assert {s["source"]: s["status"] for s in live["sources"]} == {"A": "ok", "HUNG": "running"}
    distributed_pending = describe_span(SimpleNamespace(session_factory=factory, store=_NoLiveState()), query_id)
    assert set(live) == set(distributed_pending)  # the running view has the distributed one's fields
    started = time.monotonic()
    cancelled = client.delete(f"/spanning-query/{query_id}", headers=headers)
    assert cancelled.status_code == 200 and cancelled.json()["status"] == "cancelled"
    assert time.monotonic() - started < 3
    final = client.get(f"/spanning-query/{query_id}", headers=headers).json()
    assert final["status"] == "cancelled"
    assert {s["source"]: s["status"] for s in final["sources"]} == {"A": "ok", "HUNG": "cancelled"}
    again = client.delete(f"/spanning-query/{query_id}", headers=headers)
    assert again.status_code == 200 and again.json()["status"] == "cancelled"
    done = submit(client, keys["admin-key"]).json()["query_id"]
    client.get(f"/spanning-query/{done}", headers=headers, params={"wait": 5})
    refused = client.delete(f"/spanning-query/{done}", headers=headers)
    assert refused.status_code == 409 and "already finished (completed)" in refused.json()["detail"]


def test_a_user_sees_and_cancels_only_its_own_queries(world):
    client, _, keys = world
    alices = submit(client, keys["alice-key"]).json()["query_id"]
    path = f"/spanning-query/{alices}"
    assert client.get(path, headers={"X-API-Key": keys["alice-key"]}, params={"wait": 5}).status_code == 200
    for method in (client.get, client.delete):
        refused = method(path, headers={"X-API-Key": keys["bob-key"]})
        assert refused.status_code == 404 and alices in refused.json()["detail"]
    assert client.get(path, headers={"X-API-Key": keys["admin-key"]}).json()["requested_by"] == "alice-key"
    assert client.get(path, headers={"Authorization": f"Bearer {keys['alice-key']}"}).status_code == 200


def test_a_users_access_token_works_and_a_forged_one_does_not(world):
    """The token the main API issues to user `carol` (same SECRET_KEY, same users table) is accepted."""
    client, _, keys = world
    token = issue_token(Principal(name="carol", role=Role.USER, kind=PrincipalKind.USER), SECRET, 60)
    accepted = client.post("/spanning-query", params={"spanner_config": "main"}, json={},
                           headers={"Authorization": f"Bearer {token}"})
    assert accepted.status_code == 202
    path = accepted.headers["Location"]
    view = client.get(path, headers={"Authorization": f"Bearer {token}"}, params={"wait": 5}).json()
    assert view["requested_by"] == "carol" and view["status"] == "completed"
    assert client.get(path, headers={"X-API-Key": keys["bob-key"]}).status_code == 404
    forged = issue_token(Principal(name="carol", role=Role.ADMIN, kind=PrincipalKind.USER), "f" * 40, 60)
    assert client.get(path, headers={"Authorization": f"Bearer {forged}"}).status_code == 401


def test_every_route_but_health_needs_credentials_and_bad_requests_name_the_field(world):
    client, _, keys = world
    health = client.get("/health")
    assert health.status_code == 200 and health.json()["checks"] == {"db": "ok"}
    assert health.json()["mode"] == "embedded"
    assert client.post("/spanning-query?spanner_config=main", json={}).status_code == 401
    assert client.get("/spanning-query/" + "0" * 32).status_code == 401
    assert client.delete("/spanning-query/" + "0" * 32).status_code == 401
    assert client.get("/openapi.json").status_code == 401
    assert client.get("/spanning-query/" + "0" * 32, headers={"X-API-Key": "nope"}).status_code == 401
    admin = {"X-API-Key": keys["admin-key"]}
    assert client.get("/spanning-query/" + "0" * 32, headers=admin).status_code == 404
    for params, body, status, needle in (
            ({"spanner_config": "nope"}, {}, 404, "spanner_config: no spanner config 'nope'"),
            ({"spanner_config": "main", "query_level": "VOLUME"}, {}, 422, "query_level"),
            ({"spanner_config": "main", "query_type": "C-MOVE"}, {}, 422, "query_type: C-MOVE"),
            ({"spanner_config": "main"}, {"NoSuchKeyword": "1"}, 422, "NoSuchKeyword"),
            ({}, {}, 422, "spanner_config_id or spanner_config")):
        answer = client.post("/spanning-query", params=params, json=body, headers=admin)
        assert answer.status_code == status and needle in answer.json()["detail"], answer.text
