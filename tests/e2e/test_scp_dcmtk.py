"""The spanning SCP as a process (`python -m services.listener`) against DCMTK's own clients, over real archives.

One stack per module: two Orthancs (A holds studies 1-5, B studies 3, 4 and 6: tests.peers.studies), a PACS
simulator with latency 0.3 s holding studies 2 and 7 (7 is its own, below), for the C-CANCEL test a slow simulator
(latency 5 s) beside one answering after 0.8 s, a DCMTK `storescp` as the C-MOVE destination, and the listener process on an embedded SQLite database
configured before it starts (shared.provisioning). Every client is a DCMTK binary called by its full path (the venv
puts pynetdicom scripts with the same names on PATH).

Who knows whom:
* Orthanc A knows STORESCP (DIRECT works from it) and the listener's storage AE; it offers C-GET.
* Orthanc B knows only the listener's storage AE and is configured without C-GET: the spanner fetches from it with
  C-MOVE to its own storage AE (the retrieval inbox), and a DIRECT C-MOVE from it to STORESCP fails (Orthanc answers
  an unknown destination with 0xC000), so HYBRID must fall back to PROXY.
"""

from __future__ import annotations

import json
import os
import re
import socket
import subprocess
import sys
import tempfile
import threading
import time
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path
from typing import Iterator

import pydicom
import pytest

from services.pacs_sim import Catalog, Faults, PacsSimulator
from shared.config import Settings
from shared.db.migrations import upgrade_to_head
from shared.db.session import make_engine, make_sessionmaker
from shared.provisioning.apply import apply_config_yaml
from tests.peers import free_port, require
from tests.peers.orthanc import OrthancPeer, orthanc_available
from tests.peers.studies import ARCHIVE_A, ARCHIVE_B, STUDIES, StudySpec, build_instance

pytestmark = pytest.mark.integration

REPO = Path(__file__).resolve().parents[2]
DCMTK = Path("/usr/bin")
FINDSCU, MOVESCU, GETSCU, ECHOSCU, STORESCP = (str(DCMTK / name) for name in (
    "findscu", "movescu", "getscu", "echoscu", "storescp"))

# The simulator's own study (not in any Orthanc); it falls on the closing day of the 2020 date range.
OWN_STUDY = StudySpec(7, "PAT005", "Garcia^Lola", "ISO_IR 6", "20201231", "DX", "ACC007", (1,))
SPECS = {spec.number: spec for spec in (*STUDIES, OWN_STUDY)}
SIM_STUDIES = (2, 7)
HOLDINGS = {"orthanc-a": ARCHIVE_A, "orthanc-b": ARCHIVE_B, "sim": SIM_STUDIES}
SIM_LATENCY, SLOW_LATENCY = 0.3, 5.0
# The C-CANCEL config's answering source: like "sim", but slow enough that the spanner has surely reached the slow
# archive with its C-FIND before the first match goes out (even on a loaded machine).
STEADY_LATENCY = 0.8
STORAGE_AE, CALLING_AE, DESTINATION_AE = "AXIOM_STORE", "AXIOM_SCU", "STORESCP"
MAIN_SOURCES = ("orthanc-a", "orthanc-b", "sim")
CONFIGS = {  # scp_ae_title -> spanner config fields
    "SPAN": dict(name="dcmtk-proxy", cmove_strategy="PROXY", sources=MAIN_SOURCES),
    "SPAN_DIRECT": dict(name="dcmtk-direct", cmove_strategy="DIRECT", sources=MAIN_SOURCES),
    "SPAN_HYBRID": dict(name="dcmtk-hybrid", cmove_strategy="HYBRID", sources=MAIN_SOURCES),
    "SPAN_CANCEL": dict(name="dcmtk-cancel", deduplication_strategy="FIRST_WINS", sources=("steady", "slow")),
    "GUARDED": dict(name="dcmtk-guarded", allowed_calling_ae_titles=["FINDSCU"], sources=MAIN_SOURCES),
}


def spec(number: int) -> StudySpec:
    return SPECS[number]


def instances(number: int) -> list[pydicom.Dataset]:
    """Every instance of study `number` (Part-10 ready)."""
    study = spec(number)
    return [build_instance(study, series, instance)
            for series, count in enumerate(study.instances_per_series, start=1)
            for instance in range(1, count + 1)]


def held_studies() -> set[int]:
    return {number for numbers in HOLDINGS.values() for number in numbers}


# --- the stack -------------------------------------------------------------------------------------------------------


class FindTracker:
    """Wraps a simulator's C-FIND handler (before start): C-FINDs in progress and the final status of each."""

    def __init__(self, simulator: PacsSimulator) -> None:
        self._lock = threading.Lock()
        self.active = 0
        self.started = 0
        self.finals: list[int | None] = []  # None: ended without a final status (aborted)
        original = simulator.dimse.on_find

        def on_find(event):
            with self._lock:
                self.active += 1
                self.started += 1
            final = None
            try:
                for status, identifier in original(event):
                    final = None if identifier is not None else (status if isinstance(status, int)
                                                                 else int(status.Status))
                    yield status, identifier
            finally:
                with self._lock:
                    self.active -= 1
                    self.finals.append(final)

        simulator.dimse.on_find = on_find


class ListenerProcess:
    """`python -m services.listener` with its environment, its JSON-lines log in `log_path`."""

    def __init__(self, workdir: Path, env: dict[str, str], port: int) -> None:
        self.port, self.log_path = port, workdir / "listener.log"
        log = open(self.log_path, "wb")
        self.process = subprocess.Popen([sys.executable, "-m", "services.listener"], env=env, cwd=REPO, stdout=log,
                                        stderr=subprocess.STDOUT, start_new_session=True)
        log.close()

    def wait_ready(self, timeout: float = 30.0) -> None:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            assert self.process.poll() is None, f"listener exited {self.process.returncode}: {self.log_tail()}"
            if any(e.get("event") == "scp_listener_started" for e in self.events()) and port_open(self.port):
                return
            time.sleep(0.05)
        raise AssertionError(f"listener not ready within {timeout} s: {self.log_tail()}")

    def events(self, name: str | None = None) -> list[dict]:
        """The JSON log records (of event `name`)."""
        records = []
        for line in self.log_path.read_text(errors="replace").splitlines():
            if line.startswith("{"):
                try:
                    record = json.loads(line)
                except ValueError:
                    continue
                if name is None or record.get("event") == name:
                    records.append(record)
        return records

    def log_tail(self, lines: int = 40) -> str:
        return "\n".join(self.log_path.read_text(errors="replace").splitlines()[-lines:])

    def stop(self) -> None:
        if self.process.poll() is None:
            self.process.terminate()
            try:
                self.process.wait(10)
            except subprocess.TimeoutExpired:
                self.process.kill()
                self.process.wait(5)


class StoreScp:
    """DCMTK storescp as the C-MOVE destination; every reception a file of its own (+uf) in `directory`."""

    def __init__(self, workdir: Path, port: int) -> None:
        self.port, self.directory = port, workdir / "storescp"
        self.directory.mkdir()
        self.log_path = workdir / "storescp.log"
        log = open(self.log_path, "wb")
        self.process = subprocess.Popen([STORESCP, "-v", "-aet", DESTINATION_AE, "+uf", "-od", str(self.directory),
                                         str(port)], stdout=log, stderr=subprocess.STDOUT)
        log.close()

    def wait_ready(self, timeout: float = 10.0) -> None:
        deadline = time.monotonic() + timeout
        while not port_open(self.port):
            assert self.process.poll() is None, f"storescp exited: {self.log_path.read_text(errors='replace')}"
            assert time.monotonic() < deadline, "storescp did not listen"
            time.sleep(0.05)

    def clear(self) -> None:
        for path in self.directory.iterdir():
            path.unlink()

    def received(self) -> list[pydicom.Dataset]:
        return [pydicom.dcmread(path) for path in sorted(self.directory.iterdir()) if path.is_file()]

    def stop(self) -> None:
        if self.process.poll() is None:
            self.process.terminate()
            try:
                self.process.wait(5)
            except subprocess.TimeoutExpired:
                self.process.kill()
                self.process.wait(5)


@dataclass
class Stack:
    workdir: Path
    orthancs: dict[str, OrthancPeer]
    simulators: dict[str, PacsSimulator]
    trackers: dict[str, FindTracker]
    storescp: StoreScp
    listener: ListenerProcess

    @property
    def port(self) -> int:
        return self.listener.port


def open_associations(simulator: PacsSimulator) -> int:
    """How many associations the simulator's AE has open now (pynetdicom's AE.active_associations)."""
    return len(simulator._ae.active_associations) if simulator._ae is not None else 0


def port_open(port: int) -> bool:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.settimeout(0.2)
        return sock.connect_ex(("127.0.0.1", port)) == 0


def config_yaml(orthancs: dict[str, OrthancPeer], simulators: dict[str, PacsSimulator], storescp_port: int) -> str:
    sources = [
        {"name": "orthanc-a", "kind": "dimse", "ae_title": orthancs["orthanc-a"].aet, "host": "127.0.0.1",
         "port": orthancs["orthanc-a"].dicom_port, "supports_cget": True, "supports_cmove": True},
        {"name": "orthanc-b", "kind": "dimse", "ae_title": orthancs["orthanc-b"].aet, "host": "127.0.0.1",
         "port": orthancs["orthanc-b"].dicom_port, "supports_cget": False, "supports_cmove": True},
        *({"name": name, "kind": "dimse", "ae_title": sim.ae_title, "host": "127.0.0.1", "port": sim.dimse_port,
           "supports_cget": True, "supports_cmove": True} for name, sim in simulators.items()),
    ]
    configs = [{"scp_ae_title": ae_title, "query_timeout_seconds": 20,
                **{key: value for key, value in fields.items() if key != "sources"},
                "sources": [{"source": source, "priority": index + 1}
                            for index, source in enumerate(fields["sources"])]}
               for ae_title, fields in CONFIGS.items()]
    destinations = [{"ae_title": DESTINATION_AE, "host": "127.0.0.1", "port": storescp_port}]
    return json.dumps({"sources": sources, "spanner_configs": configs, "destinations": destinations}, indent=1)


def _configure(workdir: Path, yaml_text: str, port: int) -> dict[str, str]:
    """Migrate and fill the listener's embedded database; the environment the process runs with."""
    env = {key: value for key, value in os.environ.items() if key not in (
        "DATABASE_URL", "RABBITMQ_URL", "REDIS_URL", "AXIOM_SCP_AE_TITLE", "AXIOM_CALLING_AE_TITLE")}
    env.update(AXIOM_DATA_DIR=str(workdir / "data"), AXIOM_SCP_HOST="127.0.0.1", AXIOM_SCP_PORT=str(port),
               AXIOM_SCP_AE_TITLE=STORAGE_AE, AXIOM_CALLING_AE_TITLE=CALLING_AE, LOG_LEVEL="INFO",
               AXIOM_SPOOL_DIR=str(workdir / "spool"))
    settings = Settings()
    settings.db.database_url, settings.db.data_dir = None, workdir / "data"
    settings.scp.host, settings.scp.port, settings.scp.ae_title = "127.0.0.1", port, STORAGE_AE
    settings.db.data_dir.mkdir(parents=True)
    upgrade_to_head(settings.db.url)
    engine = make_engine(settings.db.url)
    try:
        with make_sessionmaker(engine).begin() as session:
            apply_config_yaml(session, yaml_text, scp=settings.scp)
    finally:
        engine.dispose()
    return env


def _simulators() -> dict[str, PacsSimulator]:
    catalog = Catalog()
    for number in SIM_STUDIES:
        for instance in instances(number):
            catalog.add(instance)
    slow_catalog = Catalog()
    for instance in instances(2):
        slow_catalog.add(instance)
    return {"sim": PacsSimulator("sim", "SIMPACS", catalog, faults=Faults(latency=SIM_LATENCY)),
            "steady": PacsSimulator("steady", "STEADYPACS", Catalog(catalog.instances()),
                                    faults=Faults(latency=STEADY_LATENCY)),
            "slow": PacsSimulator("slow", "SLOWPACS", slow_catalog, faults=Faults(latency=SLOW_LATENCY))}


@pytest.fixture(scope="module")
def stack(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Stack]:
    require(orthanc_available(), "Orthanc with the DICOMweb plugin is not installed (apt-get install orthanc "
                                 "orthanc-dicomweb)")
    require(all(Path(tool).exists() for tool in (FINDSCU, MOVESCU, GETSCU, ECHOSCU, STORESCP)),
            "DCMTK is not installed (apt-get install dcmtk)")
    workdir = tmp_path_factory.mktemp("scp-dcmtk")
    listener_port, storescp_port = free_port(), free_port()
    to_listener = (STORAGE_AE, "127.0.0.1", listener_port)  # where sources send what the spanner C-MOVEs to itself
    orthancs = {
        "orthanc-a": OrthancPeer("ORTHANC_A", "ORTHANCA", free_port(), free_port(), workdir, modalities={
            "AXIOM": to_listener, DESTINATION_AE: (DESTINATION_AE, "127.0.0.1", storescp_port)}),
        "orthanc-b": OrthancPeer("ORTHANC_B", "ORTHANCB", free_port(), free_port(), workdir,
                                 modalities={"AXIOM": to_listener}),
    }
    simulators = _simulators()
    trackers = {name: FindTracker(sim) for name, sim in simulators.items()}
    for sim in simulators.values():
        sim.move_destinations.update({STORAGE_AE: ("127.0.0.1", listener_port),
                                      DESTINATION_AE: ("127.0.0.1", storescp_port)})
    started: list = []
    try:
        def start_and_load(name: str) -> None:
            orthancs[name].start()
            orthancs[name].load(inst for number in HOLDINGS[name] for inst in instances(number))

        for sim in simulators.values():
            started.append(sim)
            sim.start()
        started += orthancs.values()  # stop() is safe on a peer that did not start
        with ThreadPoolExecutor(max_workers=2) as pool:
            list(pool.map(start_and_load, orthancs))
        storescp = StoreScp(workdir, storescp_port)
        started.append(storescp)
        env = _configure(workdir, config_yaml(orthancs, simulators, storescp_port), listener_port)
        listener = ListenerProcess(workdir, env, listener_port)
        started.append(listener)
        storescp.wait_ready()
        listener.wait_ready()
        yield Stack(workdir, orthancs, simulators, trackers, storescp, listener)
    finally:
        _stop_all(started)


def _stop_all(peers: list) -> None:
    """The listener first (it holds associations to the others), then the rest in parallel."""
    for peer in peers:
        if isinstance(peer, ListenerProcess):
            peer.stop()
    rest = [peer for peer in peers if not isinstance(peer, ListenerProcess)]
    if rest:
        with ThreadPoolExecutor(max_workers=len(rest)) as pool:
            list(pool.map(lambda peer: peer.stop(), rest))


# --- DCMTK -----------------------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class Run:
    """One DCMTK command: exit code, its log (DCMTK logs to stderr; both streams kept), wall time."""

    args: list[str]
    returncode: int
    output: str
    seconds: float

    def final(self, kind: str) -> str:
        """The final response's status text, e.g. 'Success' or 'Cancel: MatchingTerminatedDueToCancelRequest'."""
        found = re.findall(rf"Received Final {kind} Response \((.*)\)\s*$", self.output, re.MULTILINE)
        assert found, f"no final {kind} response in:\n{self}"
        return found[-1]

    def __str__(self) -> str:
        return f"$ {' '.join(self.args)}\nexit {self.returncode} after {self.seconds:.2f} s\n{self.output[-4000:]}"


def dcmtk(*args: str, timeout: float = 30.0) -> Run:
    started = time.monotonic()
    proc = subprocess.run([arg.encode() for arg in args], capture_output=True, timeout=timeout)
    output = (proc.stdout + proc.stderr).decode("utf-8", errors="replace")
    return Run(list(args), proc.returncode, output, time.monotonic() - started)


def key_args(keys: list[str]) -> list[str]:
    return [arg for key in keys for arg in ("-k", key)]


@dataclass(frozen=True)
class Found:
    run: Run
    responses: list[pydicom.Dataset]


def findscu(stack: Stack, called: str, keys: list[str], *, model: str = "-S", extra: tuple[str, ...] = ()) -> Found:
    """findscu with every pending response written to its own file (-X -od), read back with pydicom."""
    outdir = Path(tempfile.mkdtemp(prefix="find-", dir=stack.workdir))
    run = dcmtk(FINDSCU, "-v", model, "-aet", "FINDSCU", "-aec", called, "-X", "-od", str(outdir), *extra,
                "127.0.0.1", str(stack.port), *key_args(keys))
    responses = [pydicom.dcmread(path) for path in sorted(outdir.glob("rsp*.dcm"))]
    return Found(run, responses)


def movescu(stack: Stack, called: str, study_uid: str, destination: str = DESTINATION_AE) -> Run:
    return dcmtk(MOVESCU, "-v", "-S", "-aet", "MOVESCU", "-aec", called, "-aem", destination, "127.0.0.1",
                 str(stack.port), *key_args(["QueryRetrieveLevel=STUDY", f"StudyInstanceUID={study_uid}"]))


def getscu(stack: Stack, called: str, study_uid: str, outdir: Path) -> Run:
    outdir.mkdir()
    return dcmtk(GETSCU, "-v", "-S", "-aet", "GETSCU", "-aec", called, "-od", str(outdir), "127.0.0.1",
                 str(stack.port), *key_args(["QueryRetrieveLevel=STUDY", f"StudyInstanceUID={study_uid}"]))


def echoscu(stack: Stack, called: str, calling: str = "ECHOSCU") -> Run:
    return dcmtk(ECHOSCU, "-v", "-aet", calling, "-aec", called, "127.0.0.1", str(stack.port))


def last_query_id(stack: Stack, event: str, called_ae: str) -> str:
    records = [r for r in stack.listener.events(event) if r.get("called_ae") == called_ae]
    assert records, f"no {event} for {called_ae}: {stack.listener.log_tail()}"
    return records[-1]["query_id"]


# --- expectations ----------------------------------------------------------------------------------------------------


def study_uids(*numbers: int) -> list[str]:
    return sorted(spec(n).study_uid for n in numbers)


def held_where(predicate) -> list[int]:
    """The numbers of the studies some archive holds that satisfy `predicate(spec)`."""
    return sorted(n for n in held_studies() if predicate(spec(n)))


def sop_uids(number: int) -> list[str]:
    return sorted(str(ds.SOPInstanceUID) for ds in instances(number))


# --- association and C-ECHO ------------------------------------------------------------------------------------------


def test_echo_and_association_rules(stack):
    assert echoscu(stack, "SPAN").returncode == 0
    allowed = echoscu(stack, "GUARDED", calling="FINDSCU")
    assert allowed.returncode == 0, allowed

    intruder = echoscu(stack, "GUARDED", calling="INTRUDER")
    assert intruder.returncode != 0 and "Association Rejected" in intruder.output, intruder
    assert "Calling AE Title Not Recognized" in intruder.output, intruder
    nobody = echoscu(stack, "NOBODY")
    assert nobody.returncode != 0 and "Association Rejected" in nobody.output, nobody
    assert "Called AE Title Not Recognized" in nobody.output, nobody

    rejected = {(r["called_ae"], r["calling_ae"], r["reason"]) for r in stack.listener.events("association_rejected")}
    assert ("GUARDED", "INTRUDER", "calling AE title not allowed") in rejected
    assert ("NOBODY", "ECHOSCU", "called AE title not served") in rejected


# --- C-FIND ----------------------------------------------------------------------------------------------------------


def test_cancel_ends_the_find_at_once_and_cancels_the_slow_archive(stack):
    """findscu --cancel 1 over a simulator answering after 0.8 s and the slow one (5 s), FIRST_WINS so the first
    match goes out at once. Early in the module: the last test waits for what this one may leave open to expire."""
    tracker, slow = stack.trackers["slow"], stack.simulators["slow"]
    before = tracker.started
    found = findscu(stack, "SPAN_CANCEL", ["QueryRetrieveLevel=STUDY", "StudyInstanceUID"], extra=("--cancel", "1"))
    assert found.run.returncode == 0, found.run
    assert found.run.final("Find").startswith("Cancel"), found.run
    assert found.run.seconds < 2.5, found.run  # not the slow archive's 5 s (process start included)
    assert "Sending Cancel Request" in found.run.output
    assert 1 <= len(found.responses) <= len(SIM_STUDIES), found.run
    assert {str(ds.StudyInstanceUID) for ds in found.responses} <= set(study_uids(*SIM_STUDIES))

    # the slow archive got the C-FIND, then its C-CANCEL: it ended with Cancel, nothing is left running there
    assert tracker.started == before + 1
    deadline = time.monotonic() + 2.0
    while tracker.active:
        assert time.monotonic() < deadline, "the slow archive's C-FIND still runs"
        time.sleep(0.02)
    assert tracker.finals[-1] == 0xFE00, tracker.finals
    assert open_associations(slow) <= 1  # at most the pooled idle one (see the last test)
    query_id = last_query_id(stack, "scp_find_received", "SPAN_CANCEL")
    completed = [r for r in stack.listener.events("spanning_query_completed") if r["query_id"] == query_id]
    assert [r["status"] for r in completed] == ["cancelled"]
    assert completed[0]["duration_ms"] < 2000, completed
    failed = {r["source"]: r["status"] for r in stack.listener.events("source_query_failed")
              if r["query_id"] == query_id}
    assert failed.get("slow") == "cancelled", failed


# (model, level, keys, the unique key compared, its expected values: the union over the archives)
FIND_CASES = {
    "patient-universal": ("-P", "PATIENT", ["PatientID", "PatientName"], "PatientID",
                          sorted({spec(n).patient_id for n in held_studies()})),
    "patient-wildcards": ("-P", "PATIENT", ["PatientID", "PatientName=Sm?th*"], "PatientID", ["PAT003"]),
    "study-universal": ("-S", "STUDY", ["StudyInstanceUID", "PatientName", "StudyDate"], "StudyInstanceUID",
                        study_uids(*held_studies())),
    "study-star": ("-S", "STUDY", ["StudyInstanceUID", "PatientName=Doe*"], "StudyInstanceUID", study_uids(1, 2)),
    "study-question-mark": ("-S", "STUDY", ["StudyInstanceUID", "PatientID=PAT0?3"], "StudyInstanceUID",
                            study_uids(4, 5)),
    "study-date-closed": ("-S", "STUDY", ["StudyInstanceUID", "StudyDate=20200101-20201231"], "StudyInstanceUID",
                          study_uids(*held_where(lambda s: "20200101" <= s.study_date <= "20201231"))),
    "study-date-from": ("-S", "STUDY", ["StudyInstanceUID", "StudyDate=20200101-"], "StudyInstanceUID",
                        study_uids(*held_where(lambda s: s.study_date >= "20200101"))),
    "study-date-until": ("-S", "STUDY", ["StudyInstanceUID", "StudyDate=-20201231"], "StudyInstanceUID",
                         study_uids(*held_where(lambda s: s.study_date <= "20201231"))),
    "study-uid-list": ("-S", "STUDY", ["StudyInstanceUID=" + "\\".join(study_uids(1, 6, 7)), "PatientID"],
                       "StudyInstanceUID", study_uids(1, 6, 7)),
    "series": ("-S", "SERIES", [f"StudyInstanceUID={spec(4).study_uid}", "SeriesInstanceUID", "Modality"],
               "SeriesInstanceUID", sorted([spec(4).series_uid(1), spec(4).series_uid(2)])),
    "image": ("-S", "IMAGE", [f"StudyInstanceUID={spec(3).study_uid}", f"SeriesInstanceUID={spec(3).series_uid(1)}",
                              "SOPInstanceUID"], "SOPInstanceUID", sop_uids(3)),
}


def test_the_archives_really_overlap():
    holders = {n: {name for name, numbers in HOLDINGS.items() if n in numbers} for n in held_studies()}
    assert holders[2] == {"orthanc-a", "sim"} and holders[3] == holders[4] == {"orthanc-a", "orthanc-b"}
    assert {len(h) for h in holders.values()} == {1, 2}
    # every date-range case keeps some studies and drops others, so the ranges are really applied
    for case in ("study-date-closed", "study-date-from", "study-date-until"):
        assert 0 < len(FIND_CASES[case][4]) < len(held_studies()), case


@pytest.mark.parametrize("case", list(FIND_CASES))
def test_find_answers_the_union_of_the_archives_each_once(stack, case):
    model, level, keys, unique_key, expected = FIND_CASES[case]
    found = findscu(stack, "SPAN", [f"QueryRetrieveLevel={level}", *keys], model=model)
    assert found.run.returncode == 0, found.run
    assert found.run.final("Find") == "Success", found.run
    values = sorted(str(ds.get(unique_key, "")) for ds in found.responses)
    assert values == expected, found.run  # the union, each entity once (a list: duplicates would show)
    assert {str(ds.QueryRetrieveLevel).strip() for ds in found.responses} == {level}


def test_find_with_a_non_ascii_patient_name(stack):
    found = findscu(stack, "SPAN", ["QueryRetrieveLevel=STUDY", "SpecificCharacterSet=ISO_IR 192",
                                    "PatientName=Müller*", "StudyInstanceUID", "PatientID"])
    assert found.run.returncode == 0 and found.run.final("Find") == "Success", found.run
    assert [str(ds.StudyInstanceUID) for ds in found.responses] == [spec(3).study_uid], found.run
    (answer,) = found.responses
    assert str(answer.PatientName) == "Müller^Jürgen"  # decoded by its own Specific Character Set
    assert answer.PatientID == "PAT002"


# --- C-MOVE and C-GET ------------------------------------------------------------------------------------------------

# called AE (its cmove_strategy) -> (study, the AE title that must have sent the instances to storescp)
MOVE_CASES = {
    "DIRECT": ("SPAN_DIRECT", 1, "ORTHANCA"),  # only A holds study 1, and A knows STORESCP: it sends itself
    "PROXY": ("SPAN", 4, CALLING_AE),  # held by A and B; the spanner fetches and forwards
    "HYBRID": ("SPAN_HYBRID", 6, CALLING_AE),  # only B holds 6 and B does not know STORESCP: DIRECT fails -> PROXY
}


@pytest.mark.parametrize("strategy", list(MOVE_CASES))
def test_move_delivers_every_instance_once(stack, strategy):
    called, number, sender = MOVE_CASES[strategy]
    stack.storescp.clear()
    run = movescu(stack, called, spec(number).study_uid)
    assert run.returncode == 0, run
    assert run.final("Move") == "Success", run
    received = stack.storescp.received()
    assert sorted(str(ds.SOPInstanceUID) for ds in received) == sop_uids(number), run  # each once (+uf)
    assert len(received) == spec(number).instance_count
    assert {str(ds.StudyInstanceUID) for ds in received} == {spec(number).study_uid}
    assert {str(ds.file_meta.get("SourceApplicationEntityTitle", "")).strip() for ds in received} == {sender}

    query_id = last_query_id(stack, "scp_retrieve_received", called)
    events = [r for r in stack.listener.events() if r.get("query_id") == query_id]
    (started,) = [r for r in events if r["event"] == "retrieve_started"]
    assert started["strategy"] == strategy
    (completed,) = [r for r in events if r["event"] == "retrieve_completed"]
    assert (completed["status"], completed["completed"], completed["failed"]) == (
        "0x0000", spec(number).instance_count, 0)
    holder_failed = [r for r in events if r["event"] == "retrieve_holder_failed"]
    if strategy == "HYBRID":  # the fallback really happened: B refused the direct C-MOVE
        assert [(r["source"], r.get("next_step")) for r in holder_failed] == [("orthanc-b", "proxy")], holder_failed
    else:
        assert holder_failed == []


def test_move_to_an_unknown_destination_is_refused(stack):
    stack.storescp.clear()
    run = movescu(stack, "SPAN", spec(1).study_uid, destination="NOWHERE")
    assert run.returncode != 0, run
    assert run.final("Move") == "Refused: MoveDestinationUnknown", run  # 0xA801
    assert any(r["destination"] == "NOWHERE" for r in stack.listener.events("retrieve_destination_unknown"))
    assert stack.storescp.received() == []


def test_get_of_a_study_only_the_second_archive_holds(stack):
    number = 6
    assert [name for name, numbers in HOLDINGS.items() if number in numbers] == ["orthanc-b"]
    outdir = stack.workdir / "getscu"
    run = getscu(stack, "SPAN", spec(number).study_uid, outdir)
    assert run.returncode == 0, run
    assert re.search(r"Received C-GET Response \(Success\)", run.output), run
    assert re.search(r"Number of Completed Suboperations\s*:\s*2\b", run.output), run
    assert re.search(r"Number of Failed Suboperations\s*:\s*0\b", run.output), run
    received = [pydicom.dcmread(path) for path in sorted(outdir.iterdir())]
    assert sorted(str(ds.SOPInstanceUID) for ds in received) == sop_uids(number)
    assert len(received) == spec(number).instance_count


# --- the process's own hygiene ---------------------------------------------------------------------------------------

SEVERITIES = {"debug", "info", "warning", "error", "critical"}


def test_every_log_line_keeps_its_severity(stack):
    """Each JSON log line's `level` is its severity. (Retrieval events carried the query level there: `"level":
    "STUDY"` on retrieve_started/located/completed, so a warning such as a failed holder could not be filtered.)"""
    run = getscu(stack, "SPAN", spec(7).study_uid, stack.workdir / "getscu-log")
    assert run.returncode == 0, run
    records = stack.listener.events()
    assert any(r["event"] == "retrieve_completed" for r in records)
    wrong = sorted({(r["event"], r["level"]) for r in records if r.get("level") not in SEVERITIES})
    assert wrong == [], wrong


def test_no_association_to_the_slow_archive_lingers(stack):
    """Whatever the cancel test left at the slow archive (an idle pooled association at most) is released by the
    pool's idle expiry (10 s idle, checked every 5 s): nothing stays open for good."""
    slow = stack.simulators["slow"]
    deadline = time.monotonic() + 20.0
    while open_associations(slow):
        assert time.monotonic() < deadline, f"{open_associations(slow)} association(s) still open"
        time.sleep(0.1)
    assert stack.trackers["slow"].active == 0
