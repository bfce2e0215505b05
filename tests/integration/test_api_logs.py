"""GET /api/v1/spanner/services/logs: the query log through the API, filtered, and each user's own queries only."""

from __future__ import annotations

from datetime import datetime, timedelta, timezone

import pytest
from fastapi.testclient import TestClient

from services.api.app import create_app
from shared.db.models import QueryLogStatus
from shared.db.repo.query_logs import start_query_log
from shared.security import api_keys
from tests.integration.api_fixtures import (
    CHEAP,
    PASSWORDS,
    api_settings,
    bearer,
    database_with_users,
)

LOGS = "/api/v1/spanner/services/logs"


@pytest.fixture()
def client(tmp_path, monkeypatch):
    monkeypatch.setattr(api_keys, "default_hasher", lambda: CHEAP)
    url, engine, factory = database_with_users(tmp_path)
    with factory.begin() as session:
        for number, (user, status) in enumerate([("alice", QueryLogStatus.RUNNING), ("bob", QueryLogStatus.FAILED),
                                                 ("alice", QueryLogStatus.ACCEPTED)]):
            log = start_query_log(session, query_id=f"{number:032x}", config_id=None, query_type="QIDO",
                                  level="STUDY", filters={}, requester_user=user, requester_ae_title="WS1",
                                  client_address="10.0.0.7", status=status)
            log.started_at = datetime(2026, 11, 23, 12, number, tzinfo=timezone.utc)
    with TestClient(create_app(api_settings(url))) as client:
        client.admin = bearer(client, "root", PASSWORDS["root"])
        client.user = bearer(client, "alice", PASSWORDS["alice"])
        yield client
    engine.dispose()


def ids(answer) -> list[str]:
    assert answer.status_code == 200, answer.text
    return [row["query_id"][-1] for row in answer.json()]


def test_an_admin_sees_every_query_newest_first_with_its_fields(client):
    answer = client.get(LOGS, headers=client.admin)
    assert ids(answer) == ["2", "1", "0"]
    row = answer.json()[1]
    assert (row["status"], row["query_type"], row["requester_user"], row["requester_ae_title"],
            row["client_address"]) == ("failed", "QIDO", "bob", "WS1", "10.0.0.7")


def test_a_user_sees_only_their_own_queries(client):
    assert ids(client.get(LOGS, headers=client.user)) == ["2", "0"]


def test_filters_by_status_time_and_limit(client):
    assert ids(client.get(LOGS, headers=client.admin, params={"status": "failed"})) == ["1"]
    since = datetime(2026, 11, 23, 12, 1, tzinfo=timezone.utc).isoformat()
    assert ids(client.get(LOGS, headers=client.admin, params={"since": since})) == ["2", "1"]
    assert ids(client.get(LOGS, headers=client.admin, params={"limit": 1})) == ["2"]
    later = (datetime.now(timezone.utc) + timedelta(days=1)).isoformat()
    assert ids(client.get(LOGS, headers=client.admin, params={"since": later})) == []


@pytest.mark.parametrize("params, field", [({"limit": 0}, "limit"), ({"limit": 1001}, "limit"),
                                           ({"status": "done"}, "status"), ({"since": "yesterday"}, "since"),
                                           ({"spanner_config_id": 10**20}, "spanner_config_id")])
def test_bad_filters_are_422_naming_the_parameter(client, params, field):
    answer = client.get(LOGS, headers=client.admin, params=params)
    assert answer.status_code == 422 and answer.json()["detail"][0]["loc"] == ["query", field]


def test_the_log_needs_credentials(client):
    answer = client.get(LOGS)
    assert answer.status_code == 401 and answer.headers["www-authenticate"] == "Bearer"
