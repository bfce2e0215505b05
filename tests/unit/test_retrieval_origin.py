"""A retrieval's locate in the query log: the real InProcessSpanClient (scripted query ports) writing to a migrated
SQLite database through RetrievalServices, so each row's query type and requester are the ones the database takes.

The query type of a locate is the operation it serves (C-MOVE, C-GET, or the origin's, e.g. WADO); the requester is
the retrieval's Origin (who asked), INTERNAL_REQUESTER when it has none.
"""

from __future__ import annotations

import logging

import pytest
from pydicom import Dataset

from shared.adapters.query_ports import QueryPorts
from shared.db.repo.query_logs import get_query_log, list_query_logs
from shared.db.repo.spanner_configs import SpanPlan, upsert_spanner_config
from shared.dicom.levels import QueryLevel
from shared.retrieval.locate import Entity, batch_request, locate_request, plan_batches
from shared.retrieval.model import SUCCESS, CmoveStrategy, Origin, RetrieveOutcome, RetrieveRequest
from shared.retrieval_services import INTERNAL_REQUESTER, RetrievalServices
from shared.span_client import InProcessSpanClient
from shared.spanning.model import SourceSpec, SpanPolicy
from tests.fakes.ports import Script, ScriptedPort, study
from tests.fakes.retrieval import Holding, study_instances
from tests.unit.test_retrieval_service import Setup

pytestmark = pytest.mark.timeout(20)
HELD = "1.2.840.99.1"


def study_request(uid: str, origin: Origin | None = None) -> RetrieveRequest:
    identifier = Dataset()
    identifier.StudyInstanceUID = uid
    return RetrieveRequest(level=QueryLevel.STUDY, identifier=identifier, origin=origin)


class ClosablePort(ScriptedPort):
    def close(self) -> None:
        """Nothing to release (the span client closes its ports)."""


@pytest.fixture()
def wired(factory, tmp_path):
    """(RetrievalService of a config over the scripted source A holding study HELD, its config id)."""
    port = ClosablePort({"A": Script(matches=[study(HELD, NumberOfStudyRelatedInstances="2")])})
    client = InProcessSpanClient(ports_factory=lambda: QueryPorts({"fake": lambda: port}), session_factory=factory)
    with factory.begin() as session:
        config = upsert_spanner_config(session, name=f"cfg-{tmp_path.name}"[:64]).row
        session.flush()
        session.expunge(config)
    services = RetrievalServices(span_client=client, calling_ae_title="AXIOM", spool_dir=tmp_path / "spool",
                                 locate_cache_seconds=0)
    plan = SpanPlan(config=config, policy=SpanPolicy(), sources=[SourceSpec("A", "fake")])
    try:
        yield services.for_plan(plan), config.id
    finally:
        services.retrieve_port.close()
        client.close()


def logs_of(factory, config_id: int) -> list:
    with factory() as session:
        return [log for log in list_query_logs(session, config_id=config_id)]


def test_locate_entities_is_logged_as_the_c_move_it_prepares(wired, factory):
    service, config_id = wired
    found = service.locate_entities(study_request(HELD))
    assert isinstance(found, list), found  # before the fix: RetrieveOutcome 0xC000 "locate failed"
    assert [(entity.uid, entity.holders, entity.expected) for entity in found] == [(HELD, ("A",), 2)]
    (log,) = logs_of(factory, config_id)
    assert (log.query_type.value, log.status.value, log.requester_user) == ("C-MOVE", "completed",
                                                                           INTERNAL_REQUESTER["user"])
    assert service.locate_entities(study_request(HELD), "C-GET")[0].uid == HELD
    assert logs_of(factory, config_id)[0].query_type.value == "C-GET"


def test_the_origin_is_the_locates_requester_and_query_type(wired, factory, caplog):
    service, config_id = wired
    web = Origin("WADO", user="alice", address="10.1.2.3")
    assert service.locate_entities(study_request(HELD, web))[0].uid == HELD
    (log,) = logs_of(factory, config_id)
    assert (log.query_type.value, log.requester_user, log.client_address, log.requester_ae_title) == (
        "WADO", "alice", "10.1.2.3", None)

    scu = Origin("C-GET", ae_title="WS1", address="127.0.0.1")
    caplog.set_level(logging.INFO, logger="shared.retrieval")
    request = study_request(HELD, scu)
    stream = service.get(request)
    assert next(stream) == 2  # located: the number of sub-operations; the caller then goes away
    stream.close()
    located = next(r for r in caplog.records if getattr(r, "event", None) == "retrieve_located")
    assert located.query_id == request.query_id != located.locate_query_id  # each locate is a span of its own
    with factory() as session:
        log = get_query_log(session, query_id=located.locate_query_id)
        assert (log.query_type.value, log.requester_ae_title, log.client_address, log.requester_user) == (
            "C-GET", "WS1", "127.0.0.1", None)


def test_only_query_types_the_query_log_knows_are_accepted():
    with pytest.raises(ValueError, match="query_type"):
        Origin("locate")
    with pytest.raises(ValueError, match="'locate'"):
        locate_request(study_request(HELD), "locate")
    assert locate_request(study_request(HELD)).query_type == "C-FIND"
    assert locate_request(study_request(HELD), "C-GET").query_type == "C-GET"
    assert locate_request(study_request(HELD, Origin("WADO")), "C-GET").query_type == "WADO"
    assert Origin("C-MOVE", user="root", address=None).requester == {"user": "root"}


def test_locate_entities_refuses_an_operation_that_is_not_a_retrieval(tmp_path):
    setup = Setup(tmp_path, {"A": Holding(study_instances("1.1", 2))})
    with pytest.raises(ValueError, match="operation"):
        setup.service.locate_entities(study_request("1.1"), "C-FIND")
    assert setup.locate.calls == []


def test_every_locate_of_a_retrieval_carries_its_origin(tmp_path):
    """HYBRID narrows what DIRECT lost with an IMAGE-level locate: it too is the caller's, as the C-MOVE."""
    data = study_instances("1.1", 4)
    setup = Setup(tmp_path, {"A": Holding(data, move_fail_uids=frozenset({data[2].SOPInstanceUID}))})
    origin = Origin("C-MOVE", user="root", address="10.0.0.9")
    _, outcome = setup.move(study_request("1.1", origin), CmoveStrategy.HYBRID)
    assert outcome == RetrieveOutcome(SUCCESS, completed=4)
    assert [call.level for call in setup.locate.calls] == [QueryLevel.STUDY, QueryLevel.IMAGE]
    assert [call.query_type for call in setup.locate.calls] == ["C-MOVE", "C-MOVE"]
    assert setup.locate.origins == [origin, origin]


def test_batches_keep_the_requests_origin_and_query_id():
    origin = Origin("C-MOVE", user="root")
    request = study_request("1.1", origin)
    entity = Entity(QueryLevel.STUDY, "1.1", (), ("A",), 2)
    (batch,), _ = plan_batches([entity], lambda _entity: "A")
    made = batch_request(batch, request)
    assert (made.origin, made.query_id) == (origin, request.query_id)
