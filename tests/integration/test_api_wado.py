"""WADO-RS spanning retrieve (services.api.routes.wado) with FastAPI's TestClient on a migrated SQLite database and
PACS simulators: A (DIMSE, priority 1) and B (DIMSE + QIDO/WADO-RS, priority 2) with overlapping catalogs (B lacks
some optional study attributes on the shared studies), M (DIMSE without C-GET: C-MOVE to the API's storage AE),
a dead DIMSE source, X/Y holding the same study for the fallback test, and BIG (a study of 1 MiB instances) for
the client-disconnect test, served by uvicorn."""

from __future__ import annotations

import logging
import time
from io import BytesIO

import httpx
import pytest
from fastapi.testclient import TestClient
from pydicom import dcmread

from services.api.app import create_app
from services.pacs_sim import Catalog, PacsSimulator, generate_catalog, overlapping_catalogs
from shared.config import ScpSettings
from shared.db.repo.query_logs import get_query_log, list_query_logs
from shared.dicom.levels import QueryLevel
from shared.dicom.multipart import boundary_from_content_type, iter_multipart
from shared.retrieval_services import INTERNAL_REQUESTER
from tests.integration.api_fixtures import api_settings, bearer, migrated_sqlite, provision, served
from tests.peers import free_port
from tests.peers.studies import build_instance, study

PASSWORD = "alice-password-1"
ROOT = "/api/v1/spanner/wado"
DICOM_PARTS = 'multipart/related; type="application/dicom"'
CONFIGS = {  # name -> ([(source, priority)], extra config fields)
    "both": ([("A", 1), ("B", 2)], {}),
    "b-first": ([("A", 2), ("B", 1)], {}),
    "move": ([("M", 1)], {}),
    "with-dead": ([("A", 1), ("dead", 2)], {}),
    "only-dead": ([("dead", 1)], {}),
    "fallback": ([("X", 1), ("Y", 2)], {}),
    "no-wado": ([("A", 1)], {"supports_wado": False}),
    "walled": ([("A", 1)], {"allowed_client_networks": ["10.0.0.0/8"]}),
    "big": ([("BIG", 1)], {}),
}
BIG_INSTANCES, BIG_PIXELS = 32, 1024  # 32 instances of 1 MiB: far more than the spool, queue and socket buffers


@pytest.fixture(scope="module")
def catalogs():
    found = overlapping_catalogs(11, ["A", "B"], studies=6, patients=3, series_per_study=(1, 2),
                                 instances_per_series=(1, 3))
    found["M"] = generate_catalog(12, studies=1, series_per_study=2, instances_per_series=2)
    found["XY"] = generate_catalog(13, studies=1, series_per_study=1, instances_per_series=3)
    found["BIG"] = big_catalog()
    return found


def big_catalog() -> Catalog:
    catalog, spec = Catalog(), study(1)
    for number in range(1, BIG_INSTANCES + 1):
        instance = build_instance(spec, 1, number)
        instance.Rows = instance.Columns = BIG_PIXELS
        instance.PixelData = bytes([number]) * BIG_PIXELS**2
        catalog.add(instance)
    return catalog


@pytest.fixture(scope="module")
def world(tmp_path_factory, catalogs):
    """The database with a user, sources and configs, the simulators, and the API's storage port."""
    url, engine, factory = migrated_sqlite(tmp_path_factory.mktemp("wado"))
    store_port = free_port()
    with PacsSimulator("A", "PACS_A", catalogs["A"]) as a, \
            PacsSimulator("B", "PACS_B", catalogs["B"], http_port=0) as b, \
            PacsSimulator("M", "PACS_M", catalogs["M"],
                          move_destinations={"AXIOM_API": ("127.0.0.1", store_port)}) as m, \
            PacsSimulator("X", "PACS_X", catalogs["XY"]) as x, PacsSimulator("Y", "PACS_Y", catalogs["XY"]) as y, \
            PacsSimulator("BIG", "PACS_BIG", catalogs["BIG"]) as big:
        dimse = lambda sim, **more: ("dimse", {"ae_title": sim.ae_title, "host": "127.0.0.1",  # noqa: E731
                                              "port": sim.dimse_port, **more})
        connections = {
            "A": dimse(a), "B": ("dicomweb", {"base_url": b.http_url}), "M": dimse(m, supports_cget=False),
            "X": dimse(x), "Y": dimse(y), "BIG": dimse(big),
            "dead": ("dimse", {"ae_title": "DEAD", "host": "127.0.0.1", "port": free_port(), "connect_timeout": 1}),
        }
        ids = provision(factory, sources=connections, configs=CONFIGS, users={"alice": PASSWORD})
        yield url, ids, store_port, {"X": x}
    engine.dispose()


@pytest.fixture(scope="module")
def app(world, tmp_path_factory):
    url, _, store_port, _ = world
    settings = api_settings(url, AXIOM_API_HOST="127.0.0.1", AXIOM_API_STORE_PORT=store_port)
    settings.scp = ScpSettings(AXIOM_SPOOL_MAX_MB=2, AXIOM_SPOOL_DIR=tmp_path_factory.mktemp("spool"))
    return create_app(settings)


@pytest.fixture(scope="module")
def client(app, world):
    with TestClient(app) as client:
        client.headers.update(bearer(client, "alice", PASSWORD))
        client.ids, client.sims = world[1], world[3]
        yield client


def get(client, path: str, config: str | None = "both", headers: dict | None = None, **params):
    if config is not None:
        params["spanner_config_id"] = client.ids[config]
    return client.get(ROOT + path, params=params, headers=headers or {})


def parts(answer) -> dict[str, bytes]:
    """The instances of a multipart answer by SOP Instance UID (each part checked to be a DICOM file)."""
    assert answer.status_code == 200, answer.text
    content_type = answer.headers["content-type"]
    assert content_type.startswith(DICOM_PARTS + "; boundary=")
    found = {}
    for part in iter_multipart([answer.content], boundary_from_content_type(content_type)):
        assert part.content_type.startswith("application/dicom; transfer-syntax=1.2.840.10008.1.2")
        assert part.content[128:132] == b"DICM"
        found[dcmread(BytesIO(part.content)).SOPInstanceUID] = part.content
    return found


def sop_uids(catalogs, names, **where) -> set[str]:
    return {str(r.SOPInstanceUID) for name in names for r in catalogs[name].records(QueryLevel.IMAGE)
            if all(str(r.get(k)) == v for k, v in where.items())}


def shared_study(catalogs) -> str:
    return min(set(catalogs["A"].study_uids()) & set(catalogs["B"].study_uids()))


def only_a_study(catalogs) -> str:
    return min(set(catalogs["A"].study_uids()) - set(catalogs["B"].study_uids()))


def assert_same_instances(found: dict[str, bytes], catalog) -> None:
    """Each instance has the archive's elements and values (the encoding may differ: C-GET may use Implicit VR)."""
    for uid, data in found.items():
        got, original = dcmread(BytesIO(data)), catalog.dataset(uid)
        assert set(got.keys()) == set(original.keys()), uid
        assert all(got[tag].value == original[tag].value for tag in original.keys()), uid


def test_study_series_and_instance_are_streamed_from_the_holders(client, catalogs):
    study = only_a_study(catalogs)
    found = parts(get(client, f"/studies/{study}"))
    assert set(found) == sop_uids(catalogs, ["A"], StudyInstanceUID=study)
    assert_same_instances(found, catalogs["A"])
    record = next(r for r in catalogs["A"].records(QueryLevel.IMAGE) if r.StudyInstanceUID == study)
    series = parts(get(client, f"/studies/{study}/series/{record.SeriesInstanceUID}"))
    assert set(series) == sop_uids(catalogs, ["A"], SeriesInstanceUID=str(record.SeriesInstanceUID))
    one = parts(get(client, f"/studies/{study}/series/{record.SeriesInstanceUID}/instances/{record.SOPInstanceUID}",
                    headers={"Accept": DICOM_PARTS + "; transfer-syntax=*"}))
    assert list(one) == [record.SOPInstanceUID]


def test_a_study_held_by_two_sources_comes_once_per_instance(client, catalogs):
    study = shared_study(catalogs)
    found = parts(get(client, f"/studies/{study}", headers={"Accept": "*/*"}))
    assert set(found) == sop_uids(catalogs, ["A", "B"], StudyInstanceUID=study)


def test_a_source_without_c_get_is_fetched_by_c_move_to_the_api(client, catalogs):
    study = catalogs["M"].study_uids()[0]
    found = parts(get(client, f"/studies/{study}", config="move"))
    assert set(found) == sop_uids(catalogs, ["M"])
    assert_same_instances(found, catalogs["M"])


def test_the_next_holder_serves_when_the_first_is_dead(client, catalogs, caplog):
    study = catalogs["XY"].study_uids()[0]
    expected = sop_uids(catalogs, ["XY"])
    assert set(parts(get(client, f"/studies/{study}", config="fallback"))) == expected  # X serves; locate cached
    client.sims["X"].stop()
    with caplog.at_level(logging.WARNING, logger="shared.retrieval"):
        assert set(parts(get(client, f"/studies/{study}", config="fallback"))) == expected
    assert any(getattr(r, "event", None) == "retrieve_holder_failed" and getattr(r, "source", None) == "X"
               for r in caplog.records)


def test_nothing_found_is_404_and_a_failed_locate_502(client, catalogs):
    assert get(client, "/studies/1.2.3.999").status_code == 404
    assert get(client, "/studies/1.2.3.999/metadata").status_code == 404
    partial = get(client, f"/studies/{only_a_study(catalogs)}", config="with-dead")
    assert set(parts(partial)) == sop_uids(catalogs, ["A"], StudyInstanceUID=only_a_study(catalogs))
    failed = get(client, "/studies/1.2.3.999", config="only-dead")
    assert failed.status_code == 502 and "locate failed" in failed.json()["detail"]
    assert "dead" in failed.json()["detail"]


@pytest.mark.parametrize("accept", [
    "application/dicom+json", "image/jpeg", DICOM_PARTS + "; transfer-syntax=1.2.840.10008.1.2.4.50",
    'multipart/related; type="application/octet-stream"', DICOM_PARTS + "; q=0",
])
def test_an_unsupported_accept_is_406(client, accept):
    refused = get(client, "/studies/1.2.3.999", headers={"Accept": accept})
    assert refused.status_code == 406 and 'type="application/dicom"' in refused.json()["detail"]


def test_metadata_accept(client):
    refused = get(client, "/studies/1.2.3.999/metadata", headers={"Accept": DICOM_PARTS})
    assert refused.status_code == 406 and "application/dicom+json" in refused.json()["detail"]
    for accept in ("application/dicom+json", "application/json", "*/*"):
        assert get(client, "/studies/1.2.3.999/metadata", headers={"Accept": accept}).status_code == 404


@pytest.mark.parametrize("path,named", [
    ("/studies/1.02", "study"), ("/studies/1.2.x/metadata", "study"), ("/studies/1.2/series/%2E%2E", "series"),
    ("/studies/1.2/series/1.3/instances/" + "1" * 65, "sop"),
])
def test_a_bad_uid_is_400_naming_it(client, path, named):
    refused = get(client, path)
    assert refused.status_code == 400 and f"path parameter {named}" in refused.json()["detail"], refused.text


def test_config_choice_and_client_allowlist(client):
    assert get(client, "/studies/1.2.3", config=None).status_code == 400  # several configs serve WADO-RS
    refused = get(client, "/studies/1.2.3", config="no-wado")
    assert refused.status_code == 400 and "supports_wado" in refused.json()["detail"]
    walled = get(client, "/studies/1.2.3", config="walled")
    assert walled.status_code == 403 and "allowed networks of spanner config 'walled'" in walled.json()["detail"]
    assert get(client, "/studies/1.2.3/metadata", config="walled").status_code == 403


def test_cors_lets_a_configured_viewer_origin_use_the_wado_root(world):
    viewer = "https://viewer.example.org"
    app = create_app(api_settings(world[0], AXIOM_CORS_ORIGINS=viewer))
    with TestClient(app) as browser:
        preflight = browser.options(f"{ROOT}/studies/1.2.3", headers={
            "Origin": viewer, "Access-Control-Request-Method": "GET",
            "Access-Control-Request-Headers": "authorization, accept"})
        assert preflight.status_code == 200 and preflight.headers["access-control-allow-origin"] == viewer
        other = browser.options(f"{ROOT}/studies/1.2.3", headers={
            "Origin": "https://elsewhere.example.org", "Access-Control-Request-Method": "GET"})
        assert "access-control-allow-origin" not in other.headers


def test_every_route_needs_authentication(app, client):
    with TestClient(app) as anonymous:
        for path in ("/studies/1.2", "/studies/1.2/series/1.3", "/studies/1.2/series/1.3/instances/1.4",
                     "/studies/1.2/metadata", "/studies/1.2/series/1.3/metadata",
                     "/studies/1.2/series/1.3/instances/1.4/metadata"):
            refused = anonymous.get(ROOT + path)
            assert refused.status_code == 401 and refused.headers["WWW-Authenticate"] == "Bearer"


def test_metadata_is_one_object_per_instance_from_the_first_holder(client, catalogs):
    study = shared_study(catalogs)
    expected = sop_uids(catalogs, ["A", "B"], StudyInstanceUID=study)
    by_priority = {}
    for config in ("both", "b-first"):  # A (DIMSE: retrieved and converted) or B (DICOMweb metadata) first
        answer = get(client, f"/studies/{study}/metadata", config=config)
        assert answer.status_code == 200 and answer.headers["content-type"] == "application/dicom+json", answer.text
        objects = answer.json()
        assert sorted(o["00080018"]["Value"][0] for o in objects) == sorted(expected)
        assert not any(tag in o for o in objects for tag in ("7FE00010", "00020010"))
        assert all(o["0020000D"]["Value"] == [study] for o in objects)
        by_priority[config] = objects
    # B lacks StudyDescription on the shared studies: whose objects were chosen shows in it
    assert all(o.get("00081030", {}).get("Value") for o in by_priority["both"])
    assert not any(o.get("00081030", {}).get("Value") for o in by_priority["b-first"])
    series = by_priority["both"][0]["0020000E"]["Value"][0]
    one_series = get(client, f"/studies/{study}/series/{series}/metadata").json()
    assert {o["00080018"]["Value"][0] for o in one_series} == sop_uids(catalogs, ["A", "B"], SeriesInstanceUID=series)
    sop = one_series[0]["00080018"]["Value"][0]
    one = get(client, f"/studies/{study}/series/{series}/instances/{sop}/metadata", config="b-first").json()
    assert [o["00080018"]["Value"][0] for o in one] == [sop]


def test_the_query_log_names_the_caller_of_every_locate(client, catalogs, caplog):
    """The locates of a WADO-RS retrieve and of a metadata request (its own, and the retrieval of the instances no
    DICOMweb holder described: A is DIMSE) are WADO queries of the user from the client's address."""
    caplog.set_level(logging.INFO, logger="shared.retrieval")
    study = only_a_study(catalogs)
    assert parts(get(client, f"/studies/{study}"))
    assert get(client, f"/studies/{study}/metadata").status_code == 200
    located = [r for r in caplog.records if getattr(r, "event", None) == "retrieve_located"]
    assert len(located) == 2 and {r.query_level for r in located} == {"STUDY", "IMAGE"}
    with client.app.state.session_factory() as session:
        for event in located:  # a locate reused from the cache (30 s) names the row of the first one
            log = get_query_log(session, query_id=event.locate_query_id)
            assert (log.query_type.value, log.requester_user, log.client_address) == ("WADO", "alice", "testclient")
        assert list_query_logs(session, requester_user=INTERNAL_REQUESTER["user"]) == []


def test_a_client_that_goes_away_cancels_the_retrieval(app, client, catalogs, caplog):
    """The client reads one part and disconnects: the retrieval is cancelled (the source gets C-CANCEL) while the
    source still has most of the study; memory and spool stay bounded meanwhile (the source waits on the spool)."""
    study_uid = catalogs["BIG"].study_uids()[0]
    with served(app, free_port(), lifespan="off") as base, caplog.at_level(logging.INFO):
        url = f"{base}{ROOT}/studies/{study_uid}"
        with httpx.stream("GET", url, params={"spanner_config_id": client.ids["big"]},
                          headers={"Authorization": client.headers["Authorization"]}, timeout=30) as answer:
            assert answer.status_code == 200
            next(answer.iter_bytes(BIG_PIXELS**2 + 4096))
        ended = wait_for_event(caplog, "retrieve_completed", study_uid=study_uid)
        streamed = wait_for_event(caplog, "wado_retrieve_cancelled", study_uid=study_uid)
    assert ended.status == "0xFE00" and ended.completed < BIG_INSTANCES  # cancelled mid-way
    assert streamed.query_id == ended.query_id and streamed.parts < BIG_INSTANCES


def wait_for_event(caplog, event: str, timeout: float = 15.0, **fields) -> logging.LogRecord:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        for record in caplog.records:
            if getattr(record, "event", None) == event and all(getattr(record, k, None) == v
                                                                for k, v in fields.items()):
                return record
        time.sleep(0.05)
    seen = [(getattr(r, "event", None), getattr(r, "status", None)) for r in caplog.records]
    raise AssertionError(f"no {event} event with {fields} within {timeout} s; seen: {seen[-20:]}")
