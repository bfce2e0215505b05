"""The spanning SCP (services.listener) in-process, answering a pynetdicom SCU, over simulated archives.

What the workstation sees: association acceptance by called/calling AE title, C-ECHO, C-FIND at every level of both
models with merged answers, the statuses and Error Comments, C-CANCEL, and the query log. DCMTK against real
Orthancs is tests/e2e/test_scp_dcmtk.py.
"""

from __future__ import annotations

import time
from pathlib import Path
from typing import Iterator

import pytest
from pydicom import Dataset
from pynetdicom import AE, StoragePresentationContexts, build_role, evt
from pynetdicom.sop_class import Verification

from services.listener.app import Listener
from services.listener.gate import CONFIG_UNAVAILABLE, AssociationGate
from services.pacs_sim.catalog import overlapping_catalogs
from services.pacs_sim.faults import Faults
from services.pacs_sim.simulator import PacsSimulator
from shared.config import Settings
from shared.db.migrations import upgrade_to_head
from shared.db.repo.query_logs import list_query_logs
from shared.db.session import make_engine, make_sessionmaker
from shared.dicom.levels import PATIENT_ROOT_FIND, STUDY_ROOT_FIND, STUDY_ROOT_GET, STUDY_ROOT_MOVE, QueryLevel
from shared.provisioning.apply import apply_config_yaml
from tests.peers import free_port

pytestmark = pytest.mark.integration
CONFIG = """
sources:
  - {{name: A, kind: dimse, ae_title: A, host: 127.0.0.1, port: {a}}}
  - {{name: B, kind: dimse, ae_title: B, host: 127.0.0.1, port: {b}}}
  - {{name: SLOW, kind: dimse, ae_title: SLOW, host: 127.0.0.1, port: {slow}}}
  - {{name: DOWN, kind: dimse, ae_title: DOWN, host: 127.0.0.1, port: {down}, connect_timeout: 1}}
  - {{name: NOGET, kind: dimse, ae_title: NOGET, host: 127.0.0.1, port: {noget}, supports_cget: false}}
spanner_configs:
  - name: main
    scp_ae_title: SPAN
    query_timeout_seconds: 10
    sources: [{{source: A, priority: 1}}, {{source: B, priority: 2}}]
  - name: guarded
    scp_ae_title: GUARDED
    allowed_calling_ae_titles: [WS1]
    sources: [{{source: B}}]
  - name: patchy
    scp_ae_title: PATCHY
    sources: [{{source: A}}, {{source: DOWN}}]
  - name: strict
    scp_ae_title: STRICT
    failure_strategy: FAIL_FAST
    sources: [{{source: A}}, {{source: DOWN}}]
  - name: streaming
    scp_ae_title: STREAM
    deduplication_strategy: FIRST_WINS
    query_timeout_seconds: 30
    sources: [{{source: A}}, {{source: SLOW}}]
  - name: mover
    scp_ae_title: MOVER
    cmove_strategy: PROXY
    sources: [{{source: NOGET}}]
destinations:
  - {{ae_title: WS, host: 127.0.0.1, port: {ws}}}
"""


class Stack:
    def __init__(self, tmp: Path) -> None:
        catalogs = overlapping_catalogs(11, ["A", "B"], studies=8, patients=4, shared_fraction=0.5)
        self.catalogs = catalogs
        self.archives = [PacsSimulator("A", "A", catalogs["A"]), PacsSimulator("B", "B", catalogs["B"]),
                         PacsSimulator("SLOW", "SLOW", catalogs["B"], faults=Faults(latency=20.0)),
                         PacsSimulator("NOGET", "NOGET", catalogs["A"])]
        for archive in self.archives:
            archive.start()
        self.settings = Settings()
        self.settings.db.database_url, self.settings.db.data_dir = None, tmp  # embedded SQLite of its own
        self.settings.scp.host, self.settings.scp.port = "127.0.0.1", 0
        upgrade_to_head(self.settings.db.url)
        self.engine = make_engine(self.settings.db.url)
        self.sessions = make_sessionmaker(self.engine)
        self.received: list[Dataset] = []
        self.workstation = AE(ae_title="WS")
        for context in StoragePresentationContexts:
            self.workstation.add_supported_context(context.abstract_syntax)
        self.ws_server = self.workstation.start_server(
            ("127.0.0.1", 0), block=False, evt_handlers=[(evt.EVT_C_STORE, self._receive)])
        a, b, slow, noget = (archive.dimse_port for archive in self.archives)
        with self.sessions.begin() as session:
            apply_config_yaml(session, CONFIG.format(a=a, b=b, slow=slow, down=free_port(), noget=noget,
                                                     ws=self.ws_server.server_address[1]), scp=self.settings.scp)
        self.listener = Listener(self.settings, session_factory=self.sessions).start()
        # NOGET answers a C-MOVE to the listener's own storage AE (the PROXY path for a source without C-GET)
        self.archives[3].dimse.move_destinations["AXIOM_SPANNER"] = ("127.0.0.1", self.listener.port)

    def _receive(self, event) -> int:
        self.received.append(event.dataset)
        return 0x0000

    def close(self) -> None:
        self.listener.stop()
        self.workstation.shutdown()
        for archive in self.archives:
            archive.stop()
        self.engine.dispose()

    def unique(self, level: QueryLevel, keyword: str) -> set[str]:
        return {str(r.get(keyword)) for c in self.catalogs.values() for r in c.records(level)}


@pytest.fixture(scope="module")
def stack(tmp_path_factory) -> Iterator[Stack]:
    built = Stack(tmp_path_factory.mktemp("listener"))
    try:
        yield built
    finally:
        built.close()


def associate(stack: Stack, called: str, calling: str = "FINDSCU", contexts=(STUDY_ROOT_FIND, PATIENT_ROOT_FIND),
              max_pdu: int = 16382):
    ae = AE(ae_title=calling)
    for context in (*contexts, Verification):
        ae.add_requested_context(context)
    return ae.associate("127.0.0.1", stack.listener.port, ae_title=called, max_pdu=max_pdu)


def find(stack: Stack, called: str, keys: dict, model: str = STUDY_ROOT_FIND,
         max_pdu: int = 16382) -> tuple[list[Dataset], Dataset]:
    assoc = associate(stack, called, max_pdu=max_pdu)
    assert assoc.is_established
    identifier = Dataset()
    for keyword, value in keys.items():
        setattr(identifier, keyword, value)
    try:
        responses = list(assoc.send_c_find(identifier, model))
    finally:
        assoc.release()
    *pending, (final, _) = responses
    assert all(status.Status in (0xFF00, 0xFF01) for status, _ in pending)
    return [ds for _, ds in pending], final


def test_echo_and_association_rules(stack):
    assoc = associate(stack, "SPAN")
    assert assoc.is_established and assoc.acceptor.ae_title == "SPAN"
    assert assoc.send_c_echo().Status == 0x0000
    assoc.release()
    unknown = associate(stack, "NOBODY")
    assert unknown.is_rejected
    assert (unknown.acceptor.primitive.result_source, unknown.acceptor.primitive.diagnostic) == (1, 7)
    stranger = associate(stack, "GUARDED", calling="INTRUDER")
    assert stranger.is_rejected and stranger.acceptor.primitive.diagnostic == 3
    allowed = associate(stack, "GUARDED", calling="WS1")
    assert allowed.is_established
    allowed.release()


def test_study_level_answers_are_the_union_each_study_once(stack):
    matches, final = find(stack, "SPAN", {"QueryRetrieveLevel": "STUDY", "StudyInstanceUID": "", "PatientName": "",
                                          "RetrieveAETitle": ""})
    uids = [m.StudyInstanceUID for m in matches]
    assert final.Status == 0x0000 and "ErrorComment" not in final
    assert sorted(uids) == sorted(stack.unique(QueryLevel.STUDY, "StudyInstanceUID"))
    assert {m.RetrieveAETitle for m in matches} == {"SPAN"} and {m.QueryRetrieveLevel for m in matches} == {"STUDY"}


def test_pending_responses_are_fragmented_to_the_callers_maximum_pdu_length(stack):
    keys = {"QueryRetrieveLevel": "STUDY", "StudyInstanceUID": "", "PatientName": "", "StudyDescription": ""}
    small, final = find(stack, "SPAN", keys, max_pdu=128)  # every response needs several PDUs (PS3.8 9.3.5)
    assert final.Status == 0x0000
    large, _ = find(stack, "SPAN", keys)
    assert [m.to_json_dict() for m in small] == [m.to_json_dict() for m in large] and small


@pytest.mark.parametrize("level, model, keyword", [
    ("PATIENT", PATIENT_ROOT_FIND, "PatientID"), ("SERIES", STUDY_ROOT_FIND, "SeriesInstanceUID"),
    ("IMAGE", STUDY_ROOT_FIND, "SOPInstanceUID")])
def test_every_level_is_spanned(stack, level, model, keyword):
    keys = {"QueryRetrieveLevel": level, keyword: ""}
    if level == "PATIENT":
        keys["PatientName"] = ""
    matches, final = find(stack, "SPAN", keys, model)
    assert final.Status == 0x0000
    assert sorted(str(m.get(keyword)) for m in matches) == sorted(stack.unique(QueryLevel(level), keyword))
    assert not any("RetrieveAETitle" in m for m in matches)  # only keys that were asked for (PS3.4 C.4.1.2.3)


def test_an_invalid_identifier_is_0xa900_with_an_error_comment(stack):
    _, final = find(stack, "SPAN", {"QueryRetrieveLevel": "STUDY", "StudyDate": "2020-01-01"})
    assert final.Status == 0xA900 and "StudyDate" in final.ErrorComment
    _, final = find(stack, "SPAN", {"QueryRetrieveLevel": "PATIENT"})
    assert (final.Status, final.ErrorComment) == (0xA900, "STUDY_ROOT has no PATIENT level")


def test_a_failed_source_is_named_in_the_success_comment_and_logged(stack):
    matches, final = find(stack, "PATCHY", {"QueryRetrieveLevel": "STUDY", "StudyInstanceUID": ""})
    assert final.Status == 0x0000 and final.ErrorComment == "no answer from DOWN"
    assert len(matches) == len(stack.catalogs["A"].records(QueryLevel.STUDY))
    with stack.sessions() as session:
        log = next(log for log in list_query_logs(session) if log.spanner_config_id and log.status.value == "partial")
    assert (log.requester_ae_title, log.client_address) == ("FINDSCU", "127.0.0.1")


def test_a_failing_strategy_ends_with_a_failure_status_and_the_reason(stack):
    _, final = find(stack, "STRICT", {"QueryRetrieveLevel": "STUDY", "StudyInstanceUID": ""})
    assert final.Status == 0xC000 and "DOWN" in final.ErrorComment


def test_c_cancel_stops_the_span_and_ends_with_cancel(stack):
    assoc = associate(stack, "STREAM")
    identifier = Dataset()
    identifier.QueryRetrieveLevel, identifier.StudyInstanceUID = "STUDY", ""
    responses = assoc.send_c_find(identifier, STUDY_ROOT_FIND, msg_id=7)
    status, first = next(responses)  # FIRST_WINS: A's answers stream while SLOW still thinks
    assert status.Status == 0xFF00 and first.StudyInstanceUID
    started = time.monotonic()
    assoc.send_c_cancel(7, query_model=STUDY_ROOT_FIND)
    rest = list(responses)
    assert rest[-1][0].Status == 0xFE00 and time.monotonic() - started < 2.0
    assoc.release()
    with stack.sessions() as session:
        assert any(log.status.value == "cancelled" for log in list_query_logs(session))


def study_keys(uid: str) -> Dataset:
    identifier = Dataset()
    identifier.QueryRetrieveLevel, identifier.StudyInstanceUID = "STUDY", uid
    return identifier


def instances_of(stack: Stack, catalog: str, study_uid: str) -> set[str]:
    return {str(r.SOPInstanceUID) for r in stack.catalogs[catalog].records(QueryLevel.IMAGE)
            if r.StudyInstanceUID == study_uid}


def locate_logs(stack: Stack, study_uid: str, query_type: str) -> list:
    """The query log rows of the locates of `study_uid` logged as `query_type`."""
    with stack.sessions() as session:
        return [log for log in list_query_logs(session, limit=1000) if log.query_type.value == query_type
                and (log.query_filters or {}).get("0020000D", {}).get("Value") == [study_uid]]


def test_c_move_proxy_through_the_listeners_own_storage_ae(stack):
    study_uid = str(stack.catalogs["A"].records(QueryLevel.STUDY)[0].StudyInstanceUID)
    stack.received.clear()
    assoc = associate(stack, "MOVER", contexts=(STUDY_ROOT_MOVE,))
    responses = list(assoc.send_c_move(study_keys(study_uid), "WS", STUDY_ROOT_MOVE))
    assoc.release()
    *pending, (final, _) = responses
    expected = instances_of(stack, "A", study_uid)
    assert final.Status == 0x0000 and final.NumberOfCompletedSuboperations == len(expected)
    assert pending and all(status.Status == 0xFF00 for status, _ in pending)
    assert sorted(str(ds.SOPInstanceUID) for ds in stack.received) == sorted(expected)  # each once
    (log,) = locate_logs(stack, study_uid, "C-MOVE")  # the locate, logged as the caller's C-MOVE
    assert (log.requester_ae_title, log.client_address, log.requester_user) == ("FINDSCU", "127.0.0.1", None)


def test_c_move_to_an_unknown_destination_is_0xa801(stack):
    assoc = associate(stack, "MOVER", contexts=(STUDY_ROOT_MOVE,))
    (final, _), = list(assoc.send_c_move(study_keys("1.2.3"), "NOBODY", STUDY_ROOT_MOVE))
    assoc.release()
    assert final.Status == 0xA801 and "NOBODY" in final.ErrorComment


def test_c_get_returns_the_instances_on_the_callers_association(stack):
    study_uid = str(stack.catalogs["B"].records(QueryLevel.STUDY)[-1].StudyInstanceUID)
    got: list[Dataset] = []
    ae = AE(ae_title="GETSCU")
    ae.add_requested_context(STUDY_ROOT_GET)
    roles = []
    for context in StoragePresentationContexts[:100]:
        ae.add_requested_context(context.abstract_syntax)
        roles.append(build_role(context.abstract_syntax, scp_role=True))
    assoc = ae.associate("127.0.0.1", stack.listener.port, ae_title="SPAN", ext_neg=roles,
                         evt_handlers=[(evt.EVT_C_STORE, lambda event: got.append(event.dataset) or 0x0000)])
    *_, (final, _) = list(assoc.send_c_get(study_keys(study_uid), STUDY_ROOT_GET))
    assoc.release()
    expected = instances_of(stack, "B", study_uid)
    assert final.Status == 0x0000 and final.NumberOfCompletedSuboperations == len(expected)
    assert sorted(str(ds.SOPInstanceUID) for ds in got) == sorted(expected)
    (log,) = locate_logs(stack, study_uid, "C-GET")
    assert (log.requester_ae_title, log.client_address, log.status.value) == ("GETSCU", "127.0.0.1", "completed")


def test_configs_that_cannot_be_read_reject_transiently_not_as_an_unknown_ae():
    def broken_sessions():
        raise ConnectionError("database down")

    gate = AssociationGate(broken_sessions, storage_ae_title="AXIOM_SPANNER")
    assert gate.decide(called="SPAN", calling="WS", address="127.0.0.1") is CONFIG_UNAVAILABLE
    assert (CONFIG_UNAVAILABLE.result, CONFIG_UNAVAILABLE.source) == (2, 1)  # transient (PS3.8 Table 9-21)
    assert gate.served_ae_titles() == []
