"""The distributed mode end to end: coordinator and workers as real processes on PostgreSQL, Redis and RabbitMQ.

One deployment per module (tests.peers.services.DistributedStack: its own database, Redis index and vhost), with
`python -m services.spanner_coordinator` and two `python -m services.worker` (WORKER_TYPE=all, concurrency 4).
Archives: four in-process PACS simulators cut from one master catalog (overlapping studies; one slow, one slow
for the kill test, one that never answers) and a real Orthanc holding the shared test studies plus two of the
simulators' studies. Sources and spanner configs are applied with `axiom config apply`; each scenario has its own
spanner config. Every span asks for every study (STUDY level, universal matching), so the expected answer is the
union of the configured archives' study UIDs, and each study's RetrieveAETitle names exactly its holders.
"""

from __future__ import annotations

import json
import threading
import time
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from typing import Iterator

import pytest

from pydicom import Dataset
from pynetdicom import AE

from services.pacs_sim import Faults, PacsSimulator
from shared.dicom.levels import STUDY_ROOT_FIND
from services.pacs_sim.catalog import generate_catalog, instance_dataset, overlapping_catalogs
from tests.peers import free_port, require
from tests.peers.orthanc import OrthancPeer, orthanc_available
from tests.peers.services import DistributedStack, require_stack_services
from tests.peers.studies import ARCHIVE_A, build_instances, study_uid

pytestmark = pytest.mark.integration

SEED = 41
QUERY = {"PatientID": None, "PatientName": None, "StudyInstanceUID": None, "StudyDate": None}
UID_TAG, RETRIEVE_AE_TAG = "0020000D", "00080054"
SLOW_LATENCY = 1.5  # sim-s: every query in flight long enough to drop the broker connections under it
KILL_LATENCY = 2.5  # sim-k: long enough to find and kill the worker running it
HUNG_DEADLINE = 3.0
FINAL = {"completed", "partial", "failed", "cancelled"}
LOST = "consumer: Connection to broker lost. Trying to re-establish the connection..."  # Celery's warning
SIMULATORS = {  # source name -> (AE title, catalog part, faults)
    "sim-a": ("PACS_A", "A", Faults()),
    "sim-b": ("PACS_B", "B", Faults()),
    "sim-s": ("PACS_S", "S", Faults(latency=SLOW_LATENCY)),
    "sim-k": ("PACS_K", "K", Faults(latency=KILL_LATENCY)),
    "sim-h": ("PACS_H", None, Faults(hang=True)),
}
ORTHANC_AE = "ORTHANC_E2E"
CONFIGS = {  # spanner config -> (sources, query_timeout_seconds)
    "e2e-merge": (("sim-a", "sim-b", "orthanc"), 20),
    "e2e-kill": (("sim-a", "sim-k"), 30),
    "e2e-flap": (("sim-a", "sim-s"), 30),
    "e2e-flush": (("sim-a", "sim-b"), 20),
    "e2e-hung": (("sim-a", "sim-b", "sim-h"), HUNG_DEADLINE),
    "e2e-cancel": (("sim-a", "sim-h"), 30),
    "e2e-scp": (("sim-a", "sim-b", "orthanc"), 20),  # answered on the listener's AE title SCP_AE
}
SCP_AE = "E2E_SPAN"


class FindTracker:
    """Wraps a simulator's C-FIND handler: which C-FINDs are in progress, and the calling TCP port of each (so a
    test can tell which worker process asked)."""

    def __init__(self, simulator: PacsSimulator) -> None:
        self._lock = threading.Lock()
        self._active: dict[int, int] = {}
        self.started: list[int] = []  # calling ports, in arrival order
        self.ended_at: list[float] = []
        original = simulator.dimse.on_find

        def on_find(event):
            token = id(object()) ^ time.monotonic_ns()
            with self._lock:
                self._active[token] = event.assoc.requestor.port
                self.started.append(event.assoc.requestor.port)
            try:
                yield from original(event)
            finally:
                with self._lock:
                    del self._active[token]
                    self.ended_at.append(time.monotonic())

        simulator.dimse.on_find = on_find  # before start(): the handlers are bound then

    @property
    def active(self) -> int:
        with self._lock:
            return len(self._active)

    def wait(self, condition, timeout: float, what: str) -> None:
        deadline = time.monotonic() + timeout
        while not condition():
            assert time.monotonic() < deadline, f"timed out waiting for {what}"
            time.sleep(0.02)


@dataclass
class World:
    stack: DistributedStack
    simulators: dict[str, PacsSimulator]
    trackers: dict[str, FindTracker]
    holdings: dict[str, set[str]]  # source name -> study UIDs it holds
    ae_titles: dict[str, str] = field(default_factory=dict)  # source name -> AE title (its RetrieveAETitle)

    def expected(self, config: str, *, answering: tuple[str, ...] | None = None) -> dict[str, set[str]]:
        """Study UID -> AE titles of the holders, over the config's sources (or only those `answering`)."""
        sources = answering if answering is not None else CONFIGS[config][0]
        holders: dict[str, set[str]] = {}
        for source in sources:
            for uid in self.holdings[source]:
                holders.setdefault(uid, set()).add(self.ae_titles[source])
        return holders


def _catalogs():
    parts = overlapping_catalogs(SEED, ["A", "B", "S", "K"], studies=16, shared_fraction=0.5, patients=8,
                                 series_per_study=1, instances_per_series=1)
    return parts, generate_catalog(SEED + 1, studies=3, patients=2, series_per_study=1, instances_per_series=1)


def _config_yaml(world: World, orthanc: OrthancPeer) -> str:
    sources = [{"name": name, "kind": "dimse", "ae_title": sim.ae_title, "host": "127.0.0.1",
                "port": sim.dimse_port} for name, sim in world.simulators.items()]
    sources.append({"name": "orthanc", "kind": "dimse", "ae_title": ORTHANC_AE, "host": "127.0.0.1",
                    "port": orthanc.dicom_port})
    configs = [{"name": name, "failure_strategy": "BEST_EFFORT", "deduplication_strategy": "MOST_COMPLETE",
                "query_timeout_seconds": timeout, "sources": [{"source": s, "priority": i + 1}
                                                               for i, s in enumerate(names)]}
               for name, (names, timeout) in CONFIGS.items()]
    configs[list(CONFIGS).index("e2e-scp")]["scp_ae_title"] = SCP_AE
    return json.dumps({"sources": sources, "spanner_configs": configs}, indent=1)  # JSON is YAML


@pytest.fixture(scope="module")
def world(tmp_path_factory: pytest.TempPathFactory, request: pytest.FixtureRequest) -> Iterator[World]:
    require_stack_services()
    require(orthanc_available(), "Orthanc with the DICOMweb plugin is not installed")
    workdir = tmp_path_factory.mktemp("distributed")
    stack = DistributedStack(workdir)
    parts, hung_catalog = _catalogs()
    simulators, trackers = {}, {}
    for name, (ae_title, part, faults) in SIMULATORS.items():
        simulators[name] = PacsSimulator(name, ae_title, parts[part] if part else hung_catalog, faults=faults)
        trackers[name] = FindTracker(simulators[name])
    orthanc = OrthancPeer("ORTHANC_E2E", ORTHANC_AE, free_port(), free_port(), workdir)
    # Orthanc also holds one study shared by every simulator and one of sim-a's own studies (as real files).
    a_uids, b_uids = set(parts["A"].study_uids()), set(parts["B"].study_uids())
    shared_uid, a_own_uid = sorted(a_uids & b_uids)[0], sorted(a_uids - b_uids)[0]
    extra = [instance_dataset(r) for r in parts["A"].instances() if r.StudyInstanceUID in (shared_uid, a_own_uid)]
    try:
        stack.setup()
        stack.start_coordinator()
        stack.start_worker()
        stack.start_worker()
        for simulator in simulators.values():
            simulator.start()
        orthanc.start()
        orthanc.load(build_instances(ARCHIVE_A) + extra)
        holdings = {name: set(sim.catalog.study_uids()) for name, sim in simulators.items()}
        holdings["orthanc"] = {study_uid(n) for n in ARCHIVE_A} | {shared_uid, a_own_uid}
        assert orthanc.statistics()["CountStudies"] == len(holdings["orthanc"])
        world = World(stack, simulators, trackers, holdings,
                      {**{n: s.ae_title for n, s in simulators.items()}, "orthanc": ORTHANC_AE})
        config_file = workdir / "axiom.yaml"
        config_file.write_text(_config_yaml(world, orthanc))
        applied = stack.run_cli("config", "apply", str(config_file))
        assert f"{len(SIMULATORS) + 1 + len(CONFIGS)} created, 0 updated, 0 unchanged" in applied.stdout
        stack.wait_ready(timeout=60)
        stack.start_listener()
        with stack.tails_on_failure(request.config, when=lambda item: item.module is request.module):
            yield world
    finally:
        try:
            stack.close()  # processes first: they hold associations to the archives
        finally:
            orthanc.stop()
            for simulator in simulators.values():
                simulator.stop()


# --- helpers ---------------------------------------------------------------------------------------------------------


def submit(client, config: str) -> str:
    response = client.post("/spanning-query", params={"spanner_config": config, "query_level": "STUDY"}, json=QUERY)
    assert response.status_code == 202, response.text
    assert response.json()["status"] == "accepted"
    return response.json()["query_id"]


def view(client, query_id: str, **params) -> dict:
    response = client.get(f"/spanning-query/{query_id}", params={"limit": 1000, **params})
    assert response.status_code == 200, response.text
    return response.json()


def wait_final(client, query_id: str, timeout: float) -> dict:
    """Long-poll until the query is finished; AssertionError with its last view when it is not within `timeout`."""
    deadline = time.monotonic() + timeout
    while True:
        left = deadline - time.monotonic()
        current = view(client, query_id, wait=max(0.0, min(left, 5.0)))
        if current["status"] in FINAL:
            return current
        assert left > 0, f"query {query_id} not finished within {timeout} s: {json.dumps(current)[:2000]}"


def holders(result_view: dict) -> dict[str, set[str]]:
    """Study UID -> RetrieveAETitle values of the merged results (each study exactly once)."""
    found: dict[str, set[str]] = {}
    for match in result_view["results"]:
        uid = match[UID_TAG]["Value"][0]
        assert uid not in found, f"study {uid} answered twice (not deduplicated)"
        found[uid] = set(match.get(RETRIEVE_AE_TAG, {}).get("Value", []))
    return found


def statuses(result_view: dict) -> dict[str, str]:
    return {source["source"]: source["status"] for source in result_view["sources"]}


def assert_all_ok(result_view: dict, world: World, config: str) -> None:
    sources = {s["source"]: s for s in result_view["sources"]}
    assert set(sources) == set(CONFIGS[config][0])
    for name, source in sources.items():
        assert (source["status"], source["error"]) == ("ok", None), source
        assert source["match_count"] == len(world.holdings[name]), source
    assert result_view["status"] == "completed", result_view["error"]
    assert holders(result_view) == world.expected(config)
    assert result_view["total_results"] == len(world.expected(config))


def log_events(process, event: str) -> list[dict]:
    """The JSON log lines of `process` whose event is (or, for a library message, starts with) `event`."""
    found = []
    for line in process.log_text().splitlines():
        if line.startswith("{") and event in line:
            record = json.loads(line)
            if str(record.get("event", "")).startswith(event):
                found.append(record)
    return found


def outcome_attempt(world: World, query_id: str, source: str) -> int:
    with world.stack.redis() as client:
        raw = client.get(f"axiom:span:{query_id}:outcome:{source}")
    assert raw is not None, f"no recorded outcome for {source}"
    return json.loads(raw)["attempt"]


# --- scenarios -------------------------------------------------------------------------------------------------------


def test_span_completes_with_merged_deduplicated_results(world):
    expected = world.expected("e2e-merge")
    # the archives really overlap: studies held by two and by three archives
    assert {len(aes) for aes in expected.values()} == {1, 2, 3}
    with world.stack.client() as client:
        final = wait_final(client, submit(client, "e2e-merge"), timeout=20)
    assert_all_ok(final, world, "e2e-merge")
    assert final["raw_results"] == sum(len(world.holdings[s]) for s in CONFIGS["e2e-merge"][0])
    assert final["sources_queried"] == final["sources_responded"] == 3


def test_killed_worker_task_is_redelivered_and_the_query_completes(world):
    stack, tracker = world.stack, world.trackers["sim-k"]
    before = len(tracker.started)
    try:
        _kill_mid_query(world, stack, tracker, before)
    finally:  # back to two workers for the scenarios that follow, whatever happened
        while len(stack.workers) < 2:
            stack.start_worker()
        stack.wait_consuming()


def _kill_mid_query(world: World, stack: DistributedStack, tracker: FindTracker, before: int) -> None:
    with stack.client() as client:
        query_id = submit(client, "e2e-kill")
        tracker.wait(lambda: len(tracker.started) > before, 10, "sim-k's C-FIND")
        victim = stack.worker_with_local_port(tracker.started[before])
        assert victim is not None, "no worker holds the association that queries sim-k"
        survivor = next(w for w in stack.workers if w is not victim)
        stack.kill_worker(victim)  # kill -9 while sim-k is still thinking (KILL_LATENCY)
        assert view(client, query_id)["status"] in ("accepted", "running")
        tracker.wait(lambda: len(tracker.started) > before + 1, 10, "sim-k queried again (redelivery)")
        assert stack.worker_with_local_port(tracker.started[before + 1]) is survivor
        final = wait_final(client, query_id, timeout=20)
    assert_all_ok(final, world, "e2e-kill")
    assert outcome_attempt(world, query_id, "sim-k") == 2  # the dead attempt's (absent) answers are not used
    finished = [(e["source"], e["attempt"], e["status"]) for e in log_events(survivor, "source_query_finished")
                if e["query_id"] == query_id]
    assert ("sim-k", 2, "ok") in finished, finished


def test_dropped_broker_connections_lose_no_query(world):
    stack, tracker = world.stack, world.trackers["sim-s"]
    deadline_s = CONFIGS["e2e-flap"][1]
    lost = {w.name: len(log_events(w, LOST)) for w in stack.workers}
    with stack.client() as client:
        before = tracker.active
        in_flight = [submit(client, "e2e-flap") for _ in range(4)]
        tracker.wait(lambda: tracker.active >= before + 4, 10, "four queries in flight at sim-s")
        stack.vhost.close_all_connections("test")  # coordinator's and workers' connections, this vhost only
        submitted_after = time.monotonic()
        after = [submit(client, "e2e-flap") for _ in range(2)]
        finals = {query_id: wait_final(client, query_id, timeout=deadline_s + 5) for query_id in in_flight + after}
    for worker in stack.workers:  # the drop really reached every worker (and they reconnected)
        assert len(log_events(worker, LOST)) > lost[worker.name], worker.name
    for query_id, final in finals.items():
        assert_all_ok(final, world, "e2e-flap")
        # recovered, not rescued: a span whose messages were stuck is only finalised by the deadline sweep (it is
        # then `completed` too when every source had answered, but after the whole deadline)
        assert final["execution_time_ms"] < deadline_s * 1000 / 2, (query_id, final["execution_time_ms"])
    print({q[:8]: final["execution_time_ms"] for q, final in finals.items()},
          f"all done {time.monotonic() - submitted_after:.1f} s after the drop")
    stack.wait_consuming()  # both workers reconnected


def test_results_survive_a_redis_flush(world):
    stack = world.stack
    with stack.client() as client:
        query_id = submit(client, "e2e-flush")
        before = wait_final(client, query_id, timeout=20)
        assert_all_ok(before, world, "e2e-flush")
        with stack.redis() as redis_client:
            assert redis_client.exists(f"axiom:span:{query_id}:result")
            redis_client.flushdb()
            assert redis_client.dbsize() == 0
        after = view(client, query_id)
    assert after.get("results_expired") is None
    for key in ("status", "sources", "results", "total_results", "raw_results", "error", "completed_at"):
        assert after[key] == before[key], key
    assert_all_ok(after, world, "e2e-flush")


def test_hung_source_times_out_at_the_deadline_as_partial(world):
    tracker = world.trackers["sim-h"]
    with world.stack.client() as client:
        started = time.monotonic()
        query_id = submit(client, "e2e-hung")
        final = wait_final(client, query_id, timeout=HUNG_DEADLINE + 10)
        elapsed = time.monotonic() - started
    assert elapsed <= HUNG_DEADLINE + 2.0, elapsed
    assert elapsed >= HUNG_DEADLINE - 0.2, elapsed
    assert final["status"] == "partial"
    assert statuses(final) == {"sim-a": "ok", "sim-b": "ok", "sim-h": "timeout"}
    hung = next(s for s in final["sources"] if s["source"] == "sim-h")
    assert hung["match_count"] == 0 and "deadline" in hung["error"], hung
    assert holders(final) == world.expected("e2e-hung", answering=("sim-a", "sim-b"))
    tracker.wait(lambda: tracker.active == 0, 2.0, "the hung C-FIND to be cancelled")


def test_cancel_stops_the_outstanding_source_query(world):
    stack, tracker = world.stack, world.trackers["sim-h"]
    before = len(tracker.started)
    with stack.client() as client:
        query_id = submit(client, "e2e-cancel")
        tracker.wait(lambda: len(tracker.started) > before and tracker.active == 1, 10, "the hung C-FIND")
        deadline = time.monotonic() + 10
        while statuses(view(client, query_id)).get("sim-a") != "ok":
            assert time.monotonic() < deadline, "sim-a did not answer"
            time.sleep(0.05)
        asker = stack.worker_with_local_port(tracker.started[before])
        assert asker is not None
        cancelled_at = time.monotonic()
        response = client.delete(f"/spanning-query/{query_id}")
        assert response.status_code == 200, response.text
        assert response.json()["status"] == "cancelled"
        final = view(client, query_id)
        tracker.wait(lambda: tracker.active == 0, 2.0, "the worker to stop its query to the hung archive")
        stopped_after = tracker.ended_at[-1] - cancelled_at
        again = client.delete(f"/spanning-query/{query_id}")
    assert final["status"] == "cancelled"
    assert statuses(final) == {"sim-a": "ok", "sim-h": "cancelled"}
    assert holders(final) == world.expected("e2e-cancel", answering=("sim-a",))
    assert 0 <= stopped_after < 2.0
    assert again.status_code == 200 and again.json()["status"] == "cancelled"  # idempotent
    assert asker.running  # the worker that ran it is fine and free
    with ThreadPoolExecutor(2) as pool, stack.client() as client:  # and the workers still answer at once
        finals = list(pool.map(lambda _: wait_final(client, submit(client, "e2e-flush"), timeout=10), range(2)))
    for final in finals:
        assert_all_ok(final, world, "e2e-flush")


def test_the_spanning_scp_answers_through_the_distributed_path(world):
    """A workstation's C-FIND on the listener process (RABBITMQ_URL and REDIS_URL set): accepted by the coordinator
    intake, run by the workers, answered as pending responses, each study once."""
    ae = AE(ae_title="E2E_WS")
    ae.add_requested_context(STUDY_ROOT_FIND)
    assoc = ae.associate("127.0.0.1", world.stack.listener_port, ae_title=SCP_AE)
    assert assoc.is_established
    identifier = Dataset()
    identifier.QueryRetrieveLevel, identifier.StudyInstanceUID, identifier.PatientID = "STUDY", "", ""
    try:
        *pending, (final, _) = list(assoc.send_c_find(identifier, STUDY_ROOT_FIND))
    finally:
        assoc.release()
    uids = [str(ds.StudyInstanceUID) for _, ds in pending]
    assert final.Status == 0x0000 and "ErrorComment" not in final
    assert sorted(uids) == sorted(world.expected("e2e-scp"))  # each study once
    accepted = log_events(world.stack.listener, "distributed_span_accepted")
    assert accepted, world.stack.listener.tail()
