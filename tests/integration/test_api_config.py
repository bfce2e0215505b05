"""The configuration routes of the main API (/api/v1/config/...) with FastAPI's TestClient on a migrated SQLite
database: CRUD round trips of sources, destinations, spanner configs and their mappings; 409s naming the conflict;
422 naming the field; secrets masked; and `POST /spanner/{id}/test` against a running
simulated PACS (C-ECHO over DIMSE, QIDO-RS over HTTP) and a dead port."""

from __future__ import annotations

import time

import pytest
from fastapi.testclient import TestClient

from services.api.app import create_app
from services.pacs_sim import Faults, PacsSimulator, generate_catalog
from shared.db.models import Source
from shared.provisioning.secrets import MASK
from shared.security import api_keys
from tests.integration.api_fixtures import (
    CHEAP,
    PASSWORDS,
    api_settings,
    database_with_users,
)
from tests.integration.api_fixtures import bearer as token_header
from tests.peers import free_port

CONFIG = "/api/v1/config"


@pytest.fixture()
def client(tmp_path, monkeypatch):
    monkeypatch.setattr(api_keys, "default_hasher", lambda: CHEAP)
    url, engine, factory = database_with_users(tmp_path)
    with TestClient(create_app(api_settings(url))) as client:
        client.admin, client.user = bearer(client, "root"), bearer(client, "alice")
        yield client
    engine.dispose()


def bearer(client, username: str) -> dict[str, str]:
    return token_header(client, username, PASSWORDS[username])


def dimse_source(name: str = "pacs-a", port: int = 104, **connection) -> dict:
    return {"name": name, "description": "a DIMSE archive",
            "connection": {"kind": "dimse", "ae_title": "PACS_A", "host": "pacs-a.example", "port": port,
                           **connection}}


def web_source(name: str = "web-a", url: str = "https://web.example/dicom-web", **auth) -> dict:
    return {"name": name, "connection": {"kind": "dicomweb", "base_url": url,
                                         "auth": auth or {"type": "basic", "username": "u", "password": "hunter22"}}}


def create(client, path: str, body: dict) -> dict:
    answer = client.post(f"{CONFIG}{path}", json=body, headers=client.admin)
    assert answer.status_code == 201, answer.text
    return answer.json()


def field_locs(answer) -> list[list]:
    assert answer.status_code == 422, answer.text
    return [error["loc"] for error in answer.json()["detail"]]


# -- sources -------------------------------------------------------------------------------------------------------


def test_source_crud_round_trip_and_filtered_views(client):
    dimse = create(client, "/sources", dimse_source())
    assert dimse["kind"] == "dimse" and dimse["connection"]["calling_ae_title"] == "AXIOM"
    web = create(client, "/sources", web_source())
    assert [s["name"] for s in client.get(f"{CONFIG}/sources", headers=client.user).json()] == ["pacs-a", "web-a"]
    assert [s["id"] for s in client.get(f"{CONFIG}/dimse-qr-sources", headers=client.user).json()] == [dimse["id"]]
    assert [s["id"] for s in client.get(f"{CONFIG}/dicomweb-sources", headers=client.user).json()] == [web["id"]]

    changed = dimse_source("pacs-renamed", port=11112, calling_ae_title="AXIOM_TEST")
    replaced = client.put(f"{CONFIG}/sources/{dimse['id']}", json=changed, headers=client.admin)
    assert replaced.status_code == 200, replaced.text
    got = client.get(f"{CONFIG}/sources/{dimse['id']}", headers=client.user).json()
    assert got["name"] == "pacs-renamed" and got["connection"]["port"] == 11112
    assert got["connection"]["calling_ae_title"] == "AXIOM_TEST"

    assert client.delete(f"{CONFIG}/sources/{dimse['id']}", headers=client.admin).status_code == 204
    assert client.get(f"{CONFIG}/sources/{dimse['id']}", headers=client.user).status_code == 404
    assert client.delete(f"{CONFIG}/sources/{dimse['id']}", headers=client.admin).status_code == 404


def test_source_secrets_are_masked_and_a_masked_value_keeps_the_stored_secret(client):
    created = create(client, "/sources", web_source())
    assert created["connection"]["auth"] == {"type": "basic", "username": "u", "password": MASK, "token": None,
                                             "header": "X-API-Key"}
    for path in ("/sources", "/dicomweb-sources", f"/sources/{created['id']}"):
        assert "hunter22" not in client.get(f"{CONFIG}{path}", headers=client.admin).text
    body = web_source(url="https://web2.example/dicom-web", type="basic", username="u", password=MASK)
    assert client.put(f"{CONFIG}/sources/{created['id']}", json=body, headers=client.admin).status_code == 200
    with client.app.state.session_factory() as session:
        stored = session.get(Source, created["id"])
        assert stored.connection_data["auth"]["password"] == "hunter22"
        assert stored.connection_data["base_url"] == "https://web2.example/dicom-web"
    fresh = client.post(f"{CONFIG}/sources", json=web_source("web-b", type="bearer", token=MASK), headers=client.admin)
    assert field_locs(fresh) == [["body", "connection", "auth", "token"]]


def test_source_conflicts_and_validation_errors_name_the_field(client):
    first = create(client, "/sources", dimse_source())
    duplicate = client.post(f"{CONFIG}/sources", json=dimse_source(), headers=client.admin)
    assert duplicate.status_code == 409 and "'pacs-a'" in duplicate.json()["detail"]
    other = create(client, "/sources", dimse_source("pacs-b"))
    rename = client.put(f"{CONFIG}/sources/{other['id']}", json=dimse_source("pacs-a"), headers=client.admin)
    assert rename.status_code == 409 and "'pacs-a'" in rename.json()["detail"]
    assert field_locs(client.post(f"{CONFIG}/sources", json=dimse_source("c", port=70000), headers=client.admin)) \
        == [["body", "connection", "dimse", "port"]]
    assert field_locs(client.post(f"{CONFIG}/sources", json=dimse_source("bad name!"), headers=client.admin)) \
        == [["body", "name"]]
    bad_url = web_source("w", url="ftp://x")
    assert field_locs(client.post(f"{CONFIG}/sources", json=bad_url, headers=client.admin)) \
        == [["body", "connection", "dicomweb", "base_url"]]
    loop = dimse_source("loop", port=11114, ae_title="AXIOM_SPANNER", host="127.0.0.1")
    refused = client.post(f"{CONFIG}/sources", json=loop, headers=client.admin)
    assert field_locs(refused) == [["body", "connection"]] and "own SCP" in refused.text
    assert client.get(f"{CONFIG}/sources/{first['id']}", headers=client.user).json()["connection"]["port"] == 104


def test_a_source_in_use_cannot_be_deleted_and_the_error_names_the_configs(client):
    source = create(client, "/sources", dimse_source())
    for name in ("cardiology", "radiology"):
        config = create(client, "/spanner", {"name": name})
        create(client, f"/spanner/{config['id']}/sources", {"source_id": source["id"]})
    refused = client.delete(f"{CONFIG}/sources/{source['id']}", headers=client.admin)
    assert refused.status_code == 409
    assert "cardiology" in refused.json()["detail"] and "radiology" in refused.json()["detail"]


# -- destinations --------------------------------------------------------------------------------------------------


def test_destination_crud_and_duplicate_ae_title(client):
    created = create(client, "/destinations", {"ae_title": " VIEWER ", "host": "viewer.example", "port": 11112})
    assert created["ae_title"] == "VIEWER" and created["is_enabled"] is True
    duplicate = client.post(f"{CONFIG}/destinations", json={"ae_title": "VIEWER", "host": "x", "port": 1},
                            headers=client.admin)
    assert duplicate.status_code == 409 and "'VIEWER'" in duplicate.json()["detail"]
    assert field_locs(client.post(f"{CONFIG}/destinations", json={"ae_title": "A\\B", "host": "x", "port": 1},
                                  headers=client.admin)) == [["body", "ae_title"]]
    assert field_locs(client.post(f"{CONFIG}/destinations", json={"ae_title": "W", "host": "x", "port": 0},
                                  headers=client.admin)) == [["body", "port"]]
    other = create(client, "/destinations", {"ae_title": "WORKSTATION", "host": "ws", "port": 104})
    clash = client.put(f"{CONFIG}/destinations/{other['id']}", json={"ae_title": "VIEWER", "host": "ws", "port": 104},
                       headers=client.admin)
    assert clash.status_code == 409
    moved = client.put(f"{CONFIG}/destinations/{created['id']}",
                       json={"ae_title": "VIEWER2", "host": "viewer2.example", "port": 4242, "is_enabled": False},
                       headers=client.admin)
    assert moved.status_code == 200 and moved.json()["ae_title"] == "VIEWER2" and moved.json()["port"] == 4242
    listed = client.get(f"{CONFIG}/destinations", headers=client.user).json()
    assert [(d["ae_title"], d["is_enabled"]) for d in listed] == [("VIEWER2", False), ("WORKSTATION", True)]
    assert client.delete(f"{CONFIG}/destinations/{created['id']}", headers=client.admin).status_code == 204
    assert client.get(f"{CONFIG}/destinations/{created['id']}", headers=client.user).status_code == 404


# -- spanner configs and mappings ----------------------------------------------------------------------------------


def test_spanner_config_crud_with_every_column(client):
    body = {"name": "cardio", "description": "cardiology archives", "max_concurrent_sources": 4,
            "query_timeout_seconds": 12.5, "failure_strategy": "minimum_threshold", "minimum_success_threshold": 2,
            "deduplication_strategy": "FIRST_WINS", "cmove_strategy": "HYBRID", "supports_dimse_scp": True,
            "supports_qido": False, "supports_wado": True, "supports_cmove": False, "supports_cget": True,
            "scp_ae_title": " CARDIO_SCP ", "allowed_calling_ae_titles": ["OHIF", "MODALITY1"],
            "cache_ttl_seconds": 60, "is_enabled": True}
    created = create(client, "/spanner", body)
    expected = {**body, "failure_strategy": "MINIMUM_THRESHOLD", "scp_ae_title": "CARDIO_SCP", "sources": []}
    assert {k: created[k] for k in expected} == expected
    assert client.get(f"{CONFIG}/spanner/{created['id']}", headers=client.user).json() == created
    assert client.get(f"{CONFIG}/spanner/", headers=client.user).json() == [created]  # the spelling
    replaced = client.put(f"{CONFIG}/spanner/{created['id']}", json={"name": "cardiology"}, headers=client.admin)
    assert replaced.status_code == 200, replaced.text
    assert replaced.json()["name"] == "cardiology" and replaced.json()["scp_ae_title"] is None  # omitted: default
    assert replaced.json()["cmove_strategy"] == "PROXY"
    assert client.delete(f"{CONFIG}/spanner/{created['id']}", headers=client.admin).status_code == 204
    assert client.get(f"{CONFIG}/spanner", headers=client.user).json() == []


def test_spanner_config_conflicts_and_validation(client):
    first = create(client, "/spanner", {"name": "a", "scp_ae_title": "SPAN_A"})
    same_name = client.post(f"{CONFIG}/spanner", json={"name": "a"}, headers=client.admin)
    assert same_name.status_code == 409 and "'a'" in same_name.json()["detail"]
    same_title = client.post(f"{CONFIG}/spanner", json={"name": "b", "scp_ae_title": "SPAN_A"}, headers=client.admin)
    assert same_title.status_code == 409 and "'SPAN_A'" in same_title.json()["detail"] \
        and "'a'" in same_title.json()["detail"]
    second = create(client, "/spanner", {"name": "b"})
    clash = client.put(f"{CONFIG}/spanner/{second['id']}", json={"name": "b", "scp_ae_title": "SPAN_A"},
                       headers=client.admin)
    assert clash.status_code == 409
    keep = client.put(f"{CONFIG}/spanner/{first['id']}", json={"name": "a", "scp_ae_title": "SPAN_A"},
                      headers=client.admin)
    assert keep.status_code == 200
    for body, loc in [({"name": "c", "failure_strategy": "SOMETIMES"}, ["body", "failure_strategy"]),
                      ({"name": "c", "max_concurrent_sources": 0}, ["body", "max_concurrent_sources"]),
                      ({"name": "c", "allowed_calling_ae_titles": ["OK", "BAD\\AE"]},
                       ["body", "allowed_calling_ae_titles", 1]),
                      ({"name": "c", "sources": [{"source": "x"}]}, ["body", "sources"]),
                      ({"name": "c", "colour": "blue"}, ["body", "colour"])]:
        assert field_locs(client.post(f"{CONFIG}/spanner", json=body, headers=client.admin)) == [loc], body
    assert client.get(f"{CONFIG}/spanner/9999", headers=client.user).status_code == 404


def test_mappings_add_list_remove(client):
    config = create(client, "/spanner", {"name": "span"})
    a, b = create(client, "/sources", dimse_source("pacs-a")), create(client, "/sources", web_source("web-b"))
    path = f"/spanner/{config['id']}/sources"
    added = create(client, path, {"source_id": a["id"], "priority": 20, "timeout_seconds": 5, "max_retries": 2,
                                  "additional_query_filters": {"InstitutionName": "CARDIO*"}})
    assert added == {"source_id": a["id"], "source": "pacs-a", "kind": "dimse", "priority": 20,
                     "timeout_seconds": 5.0, "max_retries": 2, "is_enabled": True,
                     "additional_query_filters": {"InstitutionName": "CARDIO*"}}
    create(client, path, {"source_id": b["id"], "priority": 10})
    listed = client.get(f"{CONFIG}{path}", headers=client.user).json()
    assert [m["source"] for m in listed] == ["web-b", "pacs-a"]  # by priority
    assert client.get(f"{CONFIG}/spanner/{config['id']}", headers=client.user).json()["sources"] == listed
    again = client.post(f"{CONFIG}{path}", json={"source_id": a["id"]}, headers=client.admin)
    assert again.status_code == 409 and "'pacs-a'" in again.json()["detail"] and "'span'" in again.json()["detail"]
    assert field_locs(client.post(f"{CONFIG}{path}", json={"source_id": 999}, headers=client.admin)) \
        == [["body", "source_id"]]
    assert field_locs(client.post(f"{CONFIG}{path}", json={"source_id": a["id"], "max_retries": 11},
                                  headers=client.admin)) == [["body", "max_retries"]]
    assert client.delete(f"{CONFIG}{path}/{a['id']}", headers=client.admin).status_code == 204
    assert client.delete(f"{CONFIG}{path}/{a['id']}", headers=client.admin).status_code == 404
    assert [m["source"] for m in client.get(f"{CONFIG}{path}", headers=client.user).json()] == ["web-b"]
    assert client.delete(f"{CONFIG}/sources/{a['id']}", headers=client.admin).status_code == 204  # no longer used
    assert client.post(f"{CONFIG}/spanner/999/sources", json={"source_id": b["id"]},
                       headers=client.admin).status_code == 404


def test_values_the_database_cannot_take_are_422_naming_the_field(client):
    """Found by tests/integration/test_api_schemathesis.py: each of these was a 500 (SQLite integer overflow,
    PostgreSQL refusing NUL, UTF-8 refusing a lone surrogate, a socket timeout overflow in the probe)."""
    huge = 10**20
    for path in (f"/sources/{huge}", f"/destinations/{huge}", f"/spanner/{huge}", f"/spanner/{huge}/sources"):
        assert field_locs(client.get(CONFIG + path, headers=client.admin)) == [["path", "id"]], path
    config = create(client, "/spanner", {"name": "limits"})
    source = create(client, "/sources", dimse_source())
    assert field_locs(client.delete(f"{CONFIG}/spanner/{config['id']}/sources/{huge}", headers=client.admin)) \
        == [["path", "source_id"]]
    raw_bodies = [  # JSON text: json.loads takes NaN and Infinity
        ("/sources", '{"name": "s1", "description": "a\\u0000b", "connection": {"kind": "dimse", "ae_title": "A", '
                     '"host": "h", "port": 1}}', ["body", "description"]),
        ("/sources", '{"name": "s2", "description": "\\ud800", "connection": {"kind": "dimse", "ae_title": "A", '
                     '"host": "h", "port": 1}}', ["body", "description"]),
        ("/sources", '{"name": "s3", "connection": {"kind": "dimse", "ae_title": "A", "host": "h\\u0000", "port": 1}}',
         ["body", "connection", "dimse", "host"]),
        ("/sources", '{"name": "s4", "connection": {"kind": "dimse", "ae_title": "A", "host": "h", "port": 1, '
                     '"connect_timeout": Infinity}}', ["body", "connection", "dimse", "connect_timeout"]),
        ("/sources", '{"name": "s5", "connection": {"kind": "dimse", "ae_title": "A", "host": "h", "port": 1, '
                     '"dimse_timeout": 1e300}}', ["body", "connection", "dimse", "dimse_timeout"]),
        ("/spanner", '{"name": "c1", "minimum_success_threshold": 100000000000000000000}',
         ["body", "minimum_success_threshold"]),
        ("/spanner", '{"name": "c2", "query_timeout_seconds": NaN}', ["body", "query_timeout_seconds"]),
        (f"/spanner/{config['id']}/sources", f'{{"source_id": {huge}}}', ["body", "source_id"]),
        (f"/spanner/{config['id']}/sources", f'{{"source_id": {source["id"]}, "timeout_seconds": NaN}}',
         ["body", "timeout_seconds"]),
        (f"/spanner/{config['id']}/sources", f'{{"source_id": {source["id"]}, "priority": {huge}}}',
         ["body", "priority"]),
        (f"/spanner/{config['id']}/sources", f'{{"source_id": {source["id"]}, '
                                             f'"additional_query_filters": {{"PatientID": "\\u0000"}}}}',
         ["body", "additional_query_filters"]),
    ]
    for path, body, loc in raw_bodies:
        answer = client.post(CONFIG + path, content=body, headers={**client.admin, "Content-Type": "application/json"})
        assert field_locs(answer) == [loc], (path, body)
    assert [s["name"] for s in client.get(f"{CONFIG}/sources", headers=client.admin).json()] == ["pacs-a"]


# -- /test ---------------------------------------------------------------------------------------------------------


def test_the_probe_reaches_a_running_pacs_over_dimse_and_qido_and_reports_a_dead_port(client):
    catalog = generate_catalog(3, patients=1, studies=2, series_per_study=1, instances_per_series=1)
    with PacsSimulator("SIM", "SIM_PACS", catalog, http_port=0) as sim:
        live_dimse = create(client, "/sources", dimse_source("sim-dimse", port=sim.dimse_port, ae_title="SIM_PACS",
                                                             host="127.0.0.1", calling_ae_title="AXIOM_PROBE"))
        live_web = create(client, "/sources", web_source("sim-web", url=sim.http_url, type="none"))
        dead = create(client, "/sources", dimse_source("dead", port=free_port(), host="127.0.0.1",
                                                       connect_timeout=2))
        dead_web = create(client, "/sources", web_source("dead-web", url=f"http://127.0.0.1:{free_port()}",
                                                         type="none"))
        config = create(client, "/spanner", {"name": "probe", "query_timeout_seconds": 10})
        for priority, source in enumerate((live_dimse, live_web, dead, dead_web)):
            create(client, f"/spanner/{config['id']}/sources", {"source_id": source["id"], "priority": priority})
        answer = client.post(f"{CONFIG}/spanner/{config['id']}/test", headers=client.admin)
    assert answer.status_code == 200, answer.text
    body = answer.json()
    assert (body["name"], body["total"], body["reachable"]) == ("probe", 4, 2)
    probes = {p["source"]: p for p in body["sources"]}
    for name in ("sim-dimse", "sim-web"):
        assert probes[name]["reachable"] is True and probes[name]["error"] is None, probes[name]
        assert 0 < probes[name]["latency_ms"] < 10_000
    assert probes["dead"]["reachable"] is False and "refused" in probes["dead"]["error"]
    assert probes["dead-web"]["reachable"] is False and "ConnectError" in probes["dead-web"]["error"]
    assert [p["kind"] for p in body["sources"]] == ["dimse", "dicomweb", "dimse", "dicomweb"]


def test_the_probe_of_a_config_without_sources_is_empty(client):
    config = create(client, "/spanner", {"name": "empty"})
    answer = client.post(f"{CONFIG}/spanner/{config['id']}/test", headers=client.admin)
    assert answer.status_code == 200 and answer.json()["sources"] == [] and answer.json()["total"] == 0


def test_a_duplicate_that_slips_past_the_check_is_still_409(client, monkeypatch):
    from services.api.routes import config_sources, config_spanner
    monkeypatch.setattr(config_sources, "_check_name_free", lambda *args, **kwargs: None)
    monkeypatch.setattr(config_spanner, "_check_unique", lambda *args, **kwargs: None)
    first = create(client, "/sources", dimse_source("pacs-a"))
    raced = client.post(f"{CONFIG}/sources", json=dimse_source("pacs-a", port=1), headers=client.admin)
    assert raced.status_code == 409 and "'pacs-a'" in raced.json()["detail"]
    other = create(client, "/sources", dimse_source("pacs-b"))
    renamed = client.put(f"{CONFIG}/sources/{other['id']}", json=dimse_source("pacs-a"), headers=client.admin)
    assert renamed.status_code == 409 and "'pacs-a'" in renamed.json()["detail"]
    create(client, "/spanner", {"name": "a", "scp_ae_title": "SPAN_A"})
    same_title = client.post(f"{CONFIG}/spanner", json={"name": "b", "scp_ae_title": "SPAN_A"}, headers=client.admin)
    assert same_title.status_code == 409
    kept = client.get(f"{CONFIG}/sources/{first['id']}", headers=client.user).json()
    assert kept["name"] == "pacs-a" and kept["connection"]["port"] == 104  # not overwritten by the raced POST


def test_a_hung_source_is_reported_at_the_configs_deadline(client):
    catalog = generate_catalog(4, patients=1, studies=1, series_per_study=1, instances_per_series=1)
    with PacsSimulator("HUNG", "HUNG", catalog, http_port=0, faults=Faults(hang=True)) as sim:
        hung = create(client, "/sources", web_source("hung-web", url=sim.http_url, type="none"))
        config = create(client, "/spanner", {"name": "hung", "query_timeout_seconds": 1})
        create(client, f"/spanner/{config['id']}/sources", {"source_id": hung["id"]})
        started = time.monotonic()
        answer = client.post(f"{CONFIG}/spanner/{config['id']}/test", headers=client.admin)
        elapsed = time.monotonic() - started
    assert answer.status_code == 200 and elapsed < 5
    [probe] = answer.json()["sources"]
    assert probe["reachable"] is False and "deadline of 1 s" in probe["error"]
