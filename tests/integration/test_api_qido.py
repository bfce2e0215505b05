"""QIDO-RS spanning search (services.api.routes.qido) with FastAPI's TestClient on a migrated SQLite database and
two PACS simulators with overlapping catalogs: A over DIMSE only, B over QIDO-RS only (B lacks some optional study
attributes on the shared studies), plus a dead DIMSE source for the Warning and failure paths. The real
dicomweb-client library searches through the endpoint served by uvicorn."""

from __future__ import annotations

import pytest
from dicomweb_client.api import DICOMwebClient
from fastapi.testclient import TestClient
from sqlalchemy import select

from services.api.app import create_app
from services.api.routes import qido
from services.pacs_sim import PacsSimulator, overlapping_catalogs
from shared.db.models import SpannerQueryLog
from shared.dicom.levels import QueryLevel
from tests.integration.api_fixtures import api_settings, bearer, migrated_sqlite, provision, served
from tests.peers import free_port

PASSWORD = "alice-password-1"
ROOT = "/api/v1/spanner/qido"
STUDY_UID, SERIES_UID, SOP_UID = "0020000D", "0020000E", "00080018"
CONFIGS = {  # name -> (sources, extra config fields)
    "both": (["A", "B"], {}),
    "with-dead": (["A", "B", "dead"], {}),
    "only-dead": (["dead"], {}),
    "no-qido": (["A"], {"supports_qido": False}),
    "off": (["A"], {"is_enabled": False}),
    "walled": (["A"], {"allowed_client_networks": ["10.0.0.0/8"]}),
}


@pytest.fixture(scope="module")
def catalogs():
    return overlapping_catalogs(7, ["A", "B"], studies=8, patients=4, series_per_study=(1, 3),
                                instances_per_series=(1, 2))


@pytest.fixture(scope="module")
def world(tmp_path_factory, catalogs):
    """The migrated database with users, sources and configs, and the running simulators; config ids by name."""
    url, engine, factory = migrated_sqlite(tmp_path_factory.mktemp("qido"))
    with PacsSimulator("A", "PACS_A", catalogs["A"]) as a, \
            PacsSimulator("B", "PACS_B", catalogs["B"], http_port=0) as b:
        connections = {
            "A": ("dimse", {"ae_title": "PACS_A", "host": "127.0.0.1", "port": a.dimse_port}),
            "B": ("dicomweb", {"base_url": b.http_url}),
            "dead": ("dimse", {"ae_title": "DEAD", "host": "127.0.0.1", "port": free_port(), "connect_timeout": 1}),
        }
        ids = provision(factory, sources=connections, configs=CONFIGS, users={"alice": PASSWORD})
        yield url, factory, ids
    engine.dispose()


@pytest.fixture(scope="module")
def app(world):
    url, _, _ = world
    return create_app(api_settings(url))


@pytest.fixture(scope="module")
def client(app, world):
    with TestClient(app) as client:
        client.headers.update(bearer(client, "alice", PASSWORD))
        client.ids, client.factory = world[2], world[1]
        yield client


def search(client, path: str, config: str | None = "both", **params):
    if config is not None:
        params["spanner_config_id"] = client.ids[config]
    return client.get(ROOT + path, params=params)


def uids(answer, tag: str) -> list[str]:
    assert answer.status_code == 200, answer.text
    assert answer.headers["content-type"] == "application/dicom+json"
    return [match[tag]["Value"][0] for match in answer.json()]


def union(catalogs, level: QueryLevel, keyword: str, **where: str) -> set[str]:
    return {str(r.get(keyword)) for c in catalogs.values() for r in c.records(level)
            if all(str(r.get(k)) == v for k, v in where.items())}


def shared_study(catalogs) -> str:
    return min(set(catalogs["A"].study_uids()) & set(catalogs["B"].study_uids()))


def test_studies_are_the_merged_union_each_once(client, catalogs):
    answer = search(client, "/studies")
    found = uids(answer, STUDY_UID)
    assert sorted(found) == sorted(union(catalogs, QueryLevel.STUDY, "StudyInstanceUID"))
    assert "Warning" not in answer.headers
    for match in answer.json():
        uid = match[STUDY_UID]["Value"][0]
        assert match["00081190"] == {"vr": "UR", "Value": [f"http://testserver/api/v1/spanner/wado/studies/{uid}"]}
        assert "00100010" in match and "00080054" not in match and "00080052" not in match
        assert match["00081030"].get("Value"), "MOST_COMPLETE keeps A's StudyDescription on the shared studies"
    with client.factory() as session:
        log = session.scalars(select(SpannerQueryLog).order_by(SpannerQueryLog.id.desc())).first()
    assert (log.query_type.value, log.query_level, log.requester_user, log.client_address) == \
        ("QIDO", "STUDY", "alice", "testclient")
    assert log.deduplicated_result_count == len(found)


def test_matching_by_keyword_and_tag(client, catalogs):
    record = catalogs["B"].records(QueryLevel.STUDY)[0]
    family = str(record.PatientName).split("^")[0]
    expected = union(catalogs, QueryLevel.STUDY, "StudyInstanceUID", PatientID=str(record.PatientID))
    assert set(uids(search(client, "/studies", PatientName=f"{family}*", **{"00100020": record.PatientID}),
                    STUDY_UID)) == expected
    two = sorted(expected | {shared_study(catalogs)})
    assert sorted(uids(search(client, "/studies", StudyInstanceUID=",".join(two)), STUDY_UID)) == two


def test_series_and_instances_nested_and_flat(client, catalogs):
    study = shared_study(catalogs)
    series = union(catalogs, QueryLevel.SERIES, "SeriesInstanceUID", StudyInstanceUID=study)
    nested = search(client, f"/studies/{study}/series")
    assert sorted(uids(nested, SERIES_UID)) == sorted(series)
    assert all(m[STUDY_UID]["Value"] == [study] for m in nested.json())
    one = min(series)
    assert nested.json()[0]["00081190"]["Value"][0].endswith(f"/studies/{study}/series/{one}")
    assert sorted(uids(search(client, "/series", StudyInstanceUID=study), SERIES_UID)) == sorted(series)
    sops = union(catalogs, QueryLevel.IMAGE, "SOPInstanceUID", SeriesInstanceUID=one)
    assert sorted(uids(search(client, f"/studies/{study}/series/{one}/instances"), SOP_UID)) == sorted(sops)
    flat = search(client, "/instances", StudyInstanceUID=study, SeriesInstanceUID=one)
    assert sorted(uids(flat, SOP_UID)) == sorted(sops)
    assert all(m[SERIES_UID]["Value"] == [one] for m in flat.json())
    assert set(uids(search(client, f"/studies/{study}/instances"), SOP_UID)) == \
        union(catalogs, QueryLevel.IMAGE, "SOPInstanceUID", StudyInstanceUID=study)


def test_includefield_adds_attributes(client, catalogs):
    study = shared_study(catalogs)
    plain = search(client, f"/studies/{study}/series").json()
    assert all("00080020" not in m for m in plain)
    for include in (["StudyDate"], ["00080020"], ["SeriesDescription,StudyDate"]):
        answer = search(client, f"/studies/{study}/series", includefield=include).json()
        assert all(m["00080020"].get("Value") for m in answer), include
    repeated = client.get(f"{ROOT}/studies/{study}/series?includefield=StudyDate&includefield=RetrieveAETitle"
                          f"&spanner_config_id={client.ids['both']}").json()
    assert all(m["00080020"].get("Value") and m["00080054"]["Value"] for m in repeated)
    everything = search(client, f"/studies/{study}/series", includefield="all").json()
    assert all("00080060" in m and "00080054" in m for m in everything)


def test_limit_and_offset_page_the_merged_answer(client):
    full = uids(search(client, "/studies"), STUDY_UID)
    assert uids(search(client, "/studies", limit=3), STUDY_UID) == full[:3]
    assert uids(search(client, "/studies", limit=2, offset=3), STUDY_UID) == full[3:5]
    assert uids(search(client, "/studies", offset=len(full) - 1), STUDY_UID) == full[-1:]
    assert search(client, "/studies", offset=len(full)).status_code == 204


def test_no_match_is_204(client):
    empty = search(client, "/studies", PatientID="NOBODY-HERE")
    assert empty.status_code == 204 and empty.content == b""


@pytest.mark.parametrize("params,named", [
    ({"Foo": "1"}, "Foo"), ({"StudyDate": "2020"}, "StudyDate"), ({"limit": "-1"}, "limit"),
    ({"offset": "x"}, "offset"), ({"includefield": "NoSuchAttribute"}, "includefield"),
    ({"fuzzymatching": "maybe"}, "fuzzymatching"), ({"StudyInstanceUID": "1.02"}, "StudyInstanceUID"),
    ({"spanner_config_id": "abc"}, "spanner_config_id"),
])
def test_bad_parameters_are_400_naming_them(client, params, named):
    answer = client.get(f"{ROOT}/studies", params={"spanner_config_id": client.ids["both"], **params})
    assert answer.status_code == 400 and named in answer.json()["detail"], answer.text


def test_config_choice(client):
    several = search(client, "/studies", config=None)
    assert several.status_code == 400 and "spanner_config_id" in several.json()["detail"]
    assert client.get(f"{ROOT}/studies?spanner_config_id=9999").status_code == 404
    for name, reason in (("no-qido", "supports_qido"), ("off", "disabled")):
        refused = search(client, "/studies", config=name)
        assert refused.status_code == 400 and reason in refused.json()["detail"]
    assert client.get(f"{ROOT}/studies/1.2.3/series?StudyInstanceUID=1.2.4"
                      f"&spanner_config_id={client.ids['both']}").status_code == 400


def test_a_client_outside_the_configs_allowed_networks_is_403(client):
    refused = search(client, "/studies", config="walled")  # the test client's address is not in 10.0.0.0/8
    assert refused.status_code == 403 and "allowed networks of spanner config 'walled'" in refused.json()["detail"]


def test_failed_sources_are_named_in_a_warning_and_a_failed_span_is_502(client, catalogs):
    partial = search(client, "/studies", config="with-dead")
    assert sorted(uids(partial, STUDY_UID)) == sorted(union(catalogs, QueryLevel.STUDY, "StudyInstanceUID"))
    warnings = partial.headers.get_list("Warning")
    assert len(warnings) == 1 and warnings[0].startswith('299 axiom "source dead ')
    nothing = search(client, "/studies", config="with-dead", PatientID="NOBODY-HERE")
    assert nothing.status_code == 204 and "source dead" in nothing.headers["Warning"]
    failed = search(client, "/studies", config="only-dead")
    assert failed.status_code == 502 and failed.headers["content-type"] == "application/json"
    body = failed.json()
    assert "failed" in body["detail"] and body["sources"][0]["source"] == "dead"
    assert body["sources"][0]["status"] != "ok"


def test_fuzzymatching_is_accepted_and_said_to_be_ignored(client):
    answer = search(client, "/studies", fuzzymatching="true")
    assert answer.status_code == 200
    assert answer.headers["Warning"] == f'299 axiom "{qido.FUZZY_WARNING}"'
    assert "Warning" not in search(client, "/studies", fuzzymatching="false").headers


def test_every_route_needs_authentication(app, client):
    with TestClient(app) as anonymous:
        for path in ("/studies", "/series", "/instances", "/studies/1.2/series", "/studies/1.2/instances",
                     "/studies/1.2/series/1.3/instances"):
            refused = anonymous.get(ROOT + path)
            assert refused.status_code == 401 and refused.headers["WWW-Authenticate"] == "Bearer"


def test_dicomweb_client_searches_through_the_endpoint(app, client, catalogs):
    with served(app, free_port()) as base:
        dicomweb = DICOMwebClient(url=f"{base}{ROOT}",
                                  headers={"Authorization": client.headers["Authorization"]})
        extra = {"spanner_config_id": str(client.ids["both"])}
        studies = dicomweb.search_for_studies(additional_params=extra)
        assert sorted(s[STUDY_UID]["Value"][0] for s in studies) == \
            sorted(union(catalogs, QueryLevel.STUDY, "StudyInstanceUID"))
        study = shared_study(catalogs)
        series = dicomweb.search_for_series(study_instance_uid=study, fields=["StudyDate"], additional_params=extra)
        assert {s[SERIES_UID]["Value"][0] for s in series} == \
            union(catalogs, QueryLevel.SERIES, "SeriesInstanceUID", StudyInstanceUID=study)
        assert all(s["00080020"]["Value"] for s in series)
        assert dicomweb.search_for_studies(search_filters={"PatientID": "NOBODY-HERE"}, additional_params=extra) == []
