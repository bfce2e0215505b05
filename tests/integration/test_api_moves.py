"""Tracked C-MOVE jobs (services.api.routes.moves) with FastAPI's TestClient over a migrated SQLite database: the
PACS simulator holds the studies, pynetdicom storage SCPs (tests.integration.test_dimse_retrieve.Receiver) are the
Move Destinations, and each job runs through the real retrieval service (DIRECT: the simulator C-MOVEs to the
destination; PROXY: the spanner C-GETs and forwards). What arrived at the destination is counted."""

from __future__ import annotations

import logging
import time
from typing import Iterator

import pytest
from fastapi.testclient import TestClient

from services.api.app import create_app
from services.pacs_sim import PacsSimulator, generate_catalog
from shared.db.models import MoveJob, MoveJobStatus
from shared.db.repo.destinations import upsert_destination
from shared.db.repo.move_jobs import create_move_job, get_move_job
from shared.db.repo.query_logs import get_query_log
from shared.db.repo.sources import upsert_source
from shared.db.repo.spanner_configs import MappingSpec, get_spanner_config, replace_mappings, upsert_spanner_config
from shared.dicom.levels import QueryLevel
from shared.retrieval.model import CmoveStrategy
from shared.security import api_keys
from tests.integration.api_fixtures import CHEAP, PASSWORDS, api_settings, bearer, database_with_users
from tests.integration.test_dimse_retrieve import Receiver
from tests.peers import free_port

pytestmark = pytest.mark.integration
CMOVE = "/api/v1/spanner/services/cmove"
SLOW_SECONDS = 0.5  # per instance at the slow destination: a 6-instance move takes ~3 s unless cancelled


class World:
    """The simulator A, the destinations DEST and SLOWDEST, the database with users, sources and configs."""

    def __init__(self, tmp) -> None:
        self.catalog = generate_catalog(5, patients=2, studies=4, series_per_study=2, instances_per_series=3)
        self.dest, self.slow = Receiver("DEST").start(), Receiver("SLOWDEST").start()
        self.slow.delay = SLOW_SECONDS
        self.pacs = PacsSimulator("A", "PACS_A", self.catalog, move_destinations=self.routes()).start()
        self.url, self.engine, self.sessions = database_with_users(tmp)
        with self.sessions.begin() as session:
            upsert_destination(session, ae_title="DEST", host="127.0.0.1", port=self.dest.port)
            upsert_destination(session, ae_title="SLOWDEST", host="127.0.0.1", port=self.slow.port)
            upsert_destination(session, ae_title="OFFDEST", host="127.0.0.1", port=free_port(), is_enabled=False)
        self.ids = {name: self.config(name, {"A": self.pacs.dimse_port}, **fields) for name, fields in [
            ("direct", {"cmove_strategy": CmoveStrategy.DIRECT}), ("proxy", {"cmove_strategy": CmoveStrategy.PROXY}),
            ("off", {"is_enabled": False}), ("no-move", {"supports_cmove": False})]}

    def routes(self) -> dict[str, tuple[str, int]]:
        return {"DEST": ("127.0.0.1", self.dest.port), "SLOWDEST": ("127.0.0.1", self.slow.port)}

    def config(self, name: str, sources: dict[str, int], **fields) -> int:
        """A spanner config over DIMSE sources (name -> port of a simulator whose AE title is PACS_<name>)."""
        with self.sessions.begin() as session:
            for source, port in sources.items():
                upsert_source(session, name=source, kind="dimse", connection={
                    "ae_title": f"PACS_{source}", "host": "127.0.0.1", "port": port, "connect_timeout": 2})
            config = upsert_spanner_config(session, name=name, query_timeout_seconds=10, **fields).row
            replace_mappings(session, config=config, mappings=[
                MappingSpec(source=source, priority=index) for index, source in enumerate(sources)])
            session.flush()
            return config.id

    def study(self, index: int) -> tuple[str, set[str]]:
        """The UID of study `index` and its SOP Instance UIDs."""
        uid = self.catalog.study_uids()[index]
        return uid, {r.SOPInstanceUID for r in self.catalog.records(QueryLevel.IMAGE) if r.StudyInstanceUID == uid}

    def close(self) -> None:
        self.pacs.stop()
        self.dest.stop()
        self.slow.stop()
        self.engine.dispose()


@pytest.fixture(scope="module")
def world(tmp_path_factory) -> Iterator[World]:
    built = World(tmp_path_factory.mktemp("moves"))
    try:
        yield built
    finally:
        built.close()


@pytest.fixture(scope="module")
def client(world) -> Iterator[TestClient]:
    patch = pytest.MonkeyPatch()
    patch.setattr(api_keys, "default_hasher", lambda: CHEAP)
    try:
        with TestClient(create_app(api_settings(world.url))) as client:
            client.admin = bearer(client, "root", PASSWORDS["root"])
            client.user = bearer(client, "alice", PASSWORDS["alice"])
            yield client
    finally:
        patch.undo()


@pytest.fixture(autouse=True)
def clean_destinations(world) -> None:
    world.dest.reset()
    world.slow.reset()
    world.slow.delay = SLOW_SECONDS


def start(client, world, config: str, study: str, destination: str = "DEST", **more) -> dict:
    body = {"study_uid": study, "destination_ae": destination, "spanner_config_id": world.ids[config], **more}
    answer = client.post(CMOVE, json=body, headers=client.admin)
    assert answer.status_code == 202, answer.text
    job = answer.json()
    assert answer.headers["Location"] == f"http://testserver{CMOVE}/{job['id']}"
    assert job["status"] in ("queued", "running") and job["requested_by"] == "root"
    return job


def finished(client, job_id: str, timeout: float = 15.0) -> dict:
    deadline = time.monotonic() + timeout
    while True:
        answer = client.get(f"{CMOVE}/{job_id}", headers=client.admin)
        assert answer.status_code == 200, answer.text
        job = answer.json()
        if job["status"] not in ("queued", "running"):
            return job
        assert time.monotonic() < deadline, f"job still {job['status']} after {timeout} s: {job}"
        time.sleep(0.05)


def arrived(receiver: Receiver) -> list[str]:
    return [str(ds.SOPInstanceUID) for ds in receiver.received]


# -- moving ----------------------------------------------------------------------------------------------------


@pytest.mark.parametrize("config, strategy, index", [("direct", None, 0), ("proxy", None, 1),
                                                     ("direct", "PROXY", 2), ("proxy", "HYBRID", 3)])
def test_a_move_delivers_every_instance_of_the_study(client, world, config, strategy, index, caplog):
    caplog.set_level(logging.INFO, logger="shared.retrieval")
    uid, instances = world.study(index)
    job = start(client, world, config, uid, **({"move_strategy": strategy} if strategy else {}))
    done = finished(client, job["id"])
    assert (done["status"], done["dimse_status"], done["error_comment"]) == ("completed", "0x0000", None)
    assert (done["completed"], done["failed"], done["warning"], done["remaining"]) == (len(instances), 0, 0, 0)
    assert done["move_strategy"] == (strategy or world_strategy(config))
    assert sorted(arrived(world.dest)) == sorted(instances)  # each instance once
    assert done["started_at"] and done["finished_at"] and done["duration_seconds"] >= 0
    assert done["spanner_config_name"] == config and done["failed_uids"] == []
    located = [r for r in caplog.records if getattr(r, "event", None) == "retrieve_located"]
    (event,) = [r for r in located if r.query_id == job["id"]]  # the job's events carry its id
    with world.sessions() as session:  # its locate: the admin's C-MOVE in the query log
        log = get_query_log(session, query_id=event.locate_query_id)
        assert (log.query_type.value, log.requester_user, log.client_address) == ("C-MOVE", "root", "testclient")
        assert (log.spanner_config_id, log.status.value) == (world.ids[config], "completed")


def world_strategy(config: str) -> str:
    return {"direct": "DIRECT", "proxy": "PROXY"}[config]


def test_a_dead_holder_falls_back_to_the_next_one_or_counts_the_failures(client, world, tmp_path):
    """X is the preferred holder; both configs locate while it is up (the locate is reused for 30 s, PS3.4
    C.4.2.2), then X dies: the move falls back to A, or, with X the only holder, every sub-operation fails."""
    uid, instances = world.study(3)
    with PacsSimulator("X", "PACS_X", world.catalog, move_destinations=world.routes()) as ghost:
        world.ids["pair"] = world.config("pair", {"X": ghost.dimse_port, "A": world.pacs.dimse_port},
                                         cmove_strategy=CmoveStrategy.DIRECT)
        world.ids["lonely"] = world.config("lonely", {"X": ghost.dimse_port}, cmove_strategy=CmoveStrategy.DIRECT)
        for config in ("pair", "lonely"):
            assert finished(client, start(client, world, config, uid)["id"])["status"] == "completed"
    assert len(arrived(world.dest)) == 2 * len(instances)
    world.dest.reset()
    fallback = finished(client, start(client, world, "pair", uid)["id"])
    assert (fallback["status"], fallback["completed"], fallback["failed"]) == ("completed", len(instances), 0)
    assert sorted(arrived(world.dest)) == sorted(instances)  # from A
    failed = finished(client, start(client, world, "lonely", uid)["id"])
    assert (failed["status"], failed["dimse_status"]) == ("failed", "0xA702")
    assert (failed["completed"], failed["failed"], failed["remaining"]) == (0, len(instances), 0)
    assert "X failed" in failed["error_comment"]


def test_a_running_move_is_cancelled_and_a_finished_one_cannot_be(client, world):
    uid, instances = world.study(0)
    job = start(client, world, "direct", uid, destination="SLOWDEST")
    deadline = time.monotonic() + 10
    while client.get(f"{CMOVE}/{job['id']}", headers=client.admin).json()["status"] != "running":
        assert time.monotonic() < deadline
        time.sleep(0.02)
    answer = client.delete(f"{CMOVE}/{job['id']}", headers=client.admin)
    assert answer.status_code == 200, answer.text
    cancelled = answer.json()
    assert (cancelled["status"], cancelled["dimse_status"]) == ("cancelled", "0xFE00")
    assert cancelled["completed"] < len(instances) and len(arrived(world.slow)) < len(instances)
    again = client.delete(f"{CMOVE}/{job['id']}", headers=client.admin)
    assert again.status_code == 409 and "already finished (cancelled)" in again.json()["detail"]


def test_jobs_are_listed_newest_first_and_filtered_by_status(client, world):
    uid, _ = world.study(1)
    first = finished(client, start(client, world, "direct", uid)["id"])
    newest = finished(client, start(client, world, "direct", uid)["id"])
    listed = client.get(CMOVE, params={"limit": 2}, headers=client.admin).json()
    assert [job["id"] for job in listed] == [newest["id"], first["id"]]
    completed = client.get(CMOVE, params={"status": "completed"}, headers=client.admin).json()
    assert {first["id"], newest["id"]} <= {job["id"] for job in completed}
    assert {job["status"] for job in completed} == {"completed"}
    failed = client.get(CMOVE, params={"status": "failed"}, headers=client.admin).json()
    assert all(job["status"] == "failed" for job in failed) and newest["id"] not in {job["id"] for job in failed}
    assert client.get(CMOVE, params={"status": "lost"}, headers=client.admin).status_code == 422
    assert client.get(CMOVE, params={"limit": 0}, headers=client.admin).status_code == 422


# -- refusals --------------------------------------------------------------------------------------------------


def post(client, world, headers=None, **changes) -> tuple[int, object]:
    body = {"study_uid": world.study(0)[0], "destination_ae": "DEST", "spanner_config_id": world.ids["direct"],
            **changes}
    answer = client.post(CMOVE, json=body, headers=client.admin if headers is None else headers)
    return answer.status_code, answer.json()


def field_of(detail) -> list:
    return [error["loc"] for error in detail["detail"]]


def test_bad_requests_name_the_field(client, world):
    status, detail = post(client, world, destination_ae="NOWHERE")
    assert status == 422 and field_of(detail) == [["body", "destination_ae"]] and "NOWHERE" in str(detail)
    assert post(client, world, destination_ae="OFFDEST")[0] == 422  # a disabled destination is not resolved
    assert field_of(post(client, world, destination_ae="A" * 17)[1]) == [["body", "destination_ae"]]
    for bad in ("1.2.abc", "1.2.3\\1.2.4", "", "1." + "2" * 70):
        status, detail = post(client, world, study_uid=bad)
        assert status == 422 and field_of(detail) == [["body", "study_uid"]], bad
    assert field_of(post(client, world, move_strategy="TELEPORT")[1]) == [["body", "move_strategy"]]
    assert field_of(post(client, world, extra=1)[1]) == [["body", "extra"]]
    assert field_of(post(client, world, spanner_config_id=2**40)[1]) == [["body", "spanner_config_id"]]
    status, detail = post(client, world, spanner_config_id=9999)
    assert status == 404 and "9999" in detail["detail"]
    for config in ("off", "no-move"):
        status, detail = post(client, world, spanner_config_id=world.ids[config])
        assert status == 400 and detail["detail"].startswith("spanner_config_id: "), detail
    assert client.get(f"{CMOVE}/0123", headers=client.admin).status_code == 404
    assert client.get(f"{CMOVE}/{'0' * 32}", headers=client.admin).status_code == 404
    assert client.delete(f"{CMOVE}/0123", headers=client.admin).status_code == 404
    with world.sessions() as session:
        assert session.query(MoveJob).filter(MoveJob.destination_ae.in_(["NOWHERE", "OFFDEST"])).count() == 0


def test_every_move_route_is_admin_only(client, world):
    paths = {path: sorted(item) for path, item in
             client.get("/api/v1/openapi.json", headers=client.admin).json()["paths"].items() if "/cmove" in path}
    assert paths == {CMOVE: ["get", "post"], CMOVE + "/{job_id}": ["delete", "get"]}
    calls = [("post", CMOVE), ("get", CMOVE), ("get", f"{CMOVE}/x"), ("delete", f"{CMOVE}/x")]
    for method, path in calls:
        assert client.request(method, path, json={}).status_code == 401, (method, path)
        assert client.request(method, path, json={}, headers={"Authorization": "Bearer nope"}).status_code == 401
        assert client.request(method, path, json={}, headers=client.user).status_code == 403, (method, path)
    status, _ = post(client, world, headers=client.user)
    assert status == 403


# -- restarts --------------------------------------------------------------------------------------------------


def test_jobs_left_open_are_interrupted_at_start_and_running_ones_at_shutdown(client, world):
    settings = api_settings(world.url)
    settings.instance_id = "restarted"
    with world.sessions.begin() as session:
        config = get_spanner_config(session, id=world.ids["direct"])
        stale = [create_move_job(session, config=config, study_uid="1.2.3", destination_ae="DEST", strategy=s,
                                 instance_id=instance, requested_by="root").id
                 for s, instance in [(CmoveStrategy.DIRECT, "restarted"), (CmoveStrategy.PROXY, "elsewhere")]]
        session.get(MoveJob, stale[0]).status = MoveJobStatus.RUNNING
    uid, instances = world.study(2)
    with TestClient(create_app(settings)) as restarted:
        with world.sessions() as session:
            mine, other = (get_move_job(session, job_id=job_id) for job_id in stale)
            assert (mine.status, other.status) == (MoveJobStatus.INTERRUPTED, MoveJobStatus.QUEUED)
            assert "stopped before it finished" in mine.error_comment and mine.finished_at is not None
        headers = bearer(restarted, "root", PASSWORDS["root"])
        conflict = restarted.delete(f"{CMOVE}/{stale[1]}", headers=headers)
        assert conflict.status_code == 409 and "elsewhere" in conflict.json()["detail"]
        body = {"study_uid": uid, "destination_ae": "SLOWDEST", "spanner_config_id": world.ids["direct"]}
        running = restarted.post(CMOVE, json=body, headers=headers).json()
        deadline = time.monotonic() + 10
        while not world.slow.received:  # the move is under way when the API stops
            assert time.monotonic() < deadline
            time.sleep(0.02)
    with world.sessions() as session:
        job = get_move_job(session, job_id=running["id"])
        assert job.status is MoveJobStatus.INTERRUPTED and "shutting down" in job.error_comment
        assert job.completed < len(instances) and job.instance_id == "restarted"
        session.get(MoveJob, stale[1]).status = MoveJobStatus.FAILED  # not left open for the other tests
        session.commit()
