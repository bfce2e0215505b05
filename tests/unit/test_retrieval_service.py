"""RetrievalService: locate, DIRECT / PROXY / HYBRID C-MOVE, C-GET, the spool, the inbox, cancel and the locate cache
— through fake ports, with real threads."""

from __future__ import annotations

import logging
import threading
from pathlib import Path

import pytest
from pydicom import Dataset

from shared.connections import DicomwebConnection, DimseConnection
from shared.dicom.levels import QueryLevel
from shared.retrieval.inbox import NOT_EXPECTED, Inbox
from shared.retrieval.model import (
    CANCEL,
    OUT_OF_RESOURCES_MATCHES,
    OUT_OF_RESOURCES_SUB_OPERATIONS,
    SUB_OPERATIONS_WITH_FAILURES,
    SUCCESS,
    CmoveStrategy,
    Destination,
    RetrieveOutcome,
    RetrieveRequest,
)
from shared.retrieval.service import RetrievalService
from shared.retrieval.spool import encode_instance
from shared.spanning.model import SourceSpec
from shared.spanning.ports import CancelToken
from tests.fakes.clock import FakeClock
from tests.fakes.retrieval import FakeLocate, FakeRetrievePort, FakeStorePort, Holding, instance, study_instances

pytestmark = pytest.mark.timeout(10)

DEST = Destination("VIEWER", "127.0.0.1", 11119)
SELF_AE = "AXIOM-STORE"


def source(name: str, priority: int = 100, cget: bool = True) -> SourceSpec:
    connection = DimseConnection(ae_title=name, host="127.0.0.1", port=104, supports_cget=cget)
    return SourceSpec(name, "dimse", connection=connection, priority=priority)


def study_request(*uids: str) -> RetrieveRequest:
    identifier = Dataset()
    identifier.StudyInstanceUID = "\\".join(uids)
    return RetrieveRequest(level=QueryLevel.STUDY, identifier=identifier)


class Setup:
    """A service over fake archives: `holdings` by source name (catalogs for locate taken from them)."""

    def __init__(self, tmp_path: Path, holdings: dict[str, Holding], *, store: FakeStorePort | None = None,
                 sources: list[SourceSpec] | None = None, spool_max_bytes: int = 10_000_000, ttl: float = 0.0,
                 clock: FakeClock | None = None, failed_sources: tuple[str, ...] = ()) -> None:
        self.inbox = Inbox()
        self.port = FakeRetrievePort(holdings, inbox=self.inbox, self_ae=SELF_AE)
        self.store = store or FakeStorePort()
        self.locate = FakeLocate({name: h.instances for name, h in holdings.items()}, failed_sources)
        self.spool_dir = tmp_path / "spool"
        self.service = RetrievalService(
            locate=self.locate, sources=sources or [source(name, n) for n, name in enumerate(holdings)],
            retrieve_port=self.port, store_port=self.store, spool_dir=self.spool_dir,
            spool_max_bytes=spool_max_bytes, clock=clock or FakeClock(), locate_cache_ttl_seconds=ttl,
            self_ae_title=SELF_AE, inbox=self.inbox)

    def move(self, request, strategy, cancel=None, on_progress=None):
        progress = []
        stream = self.service.move(request, strategy, DEST, cancel)
        while True:
            try:
                item = next(stream)
            except StopIteration as stop:
                return progress, stop.value
            progress.append(item)
            if on_progress is not None:
                on_progress(item)

    def spool_leftovers(self) -> list[Path]:
        return list(self.spool_dir.iterdir()) if self.spool_dir.exists() else []


def uids(instances: list[Dataset]) -> list[str]:
    return [ds.SOPInstanceUID for ds in instances]


# -- locate ----------------------------------------------------------------------------------------------------------

def test_zero_matches_is_success_with_zero_counts(tmp_path):
    setup = Setup(tmp_path, {"A": Holding(study_instances("1.1", 2))})
    for strategy in CmoveStrategy:
        progress, outcome = setup.move(study_request("9.9"), strategy)
        assert progress == [] and outcome == RetrieveOutcome(SUCCESS)
    assert setup.port.calls == []


def test_the_locate_asks_for_the_counts_and_a_failed_locate_names_the_sources(tmp_path):
    setup = Setup(tmp_path, {"A": Holding(study_instances("1.1", 2)), "B": Holding()}, failed_sources=("A", "B"))
    progress, outcome = setup.move(study_request("1.1"), CmoveStrategy.DIRECT)
    asked = setup.locate.calls[0]
    assert asked.level is QueryLevel.STUDY and asked.identifier.StudyInstanceUID == "1.1"
    assert "NumberOfStudyRelatedInstances" in asked.identifier
    assert progress == [] and outcome.status == OUT_OF_RESOURCES_MATCHES
    assert "A" in outcome.error_comment and "B" in outcome.error_comment


def test_recent_locates_are_reused_within_the_ttl_and_not_after(tmp_path):
    clock = FakeClock()
    setup = Setup(tmp_path, {"A": Holding(study_instances("1.1", 2))}, ttl=30, clock=clock)
    setup.move(study_request("1.1"), CmoveStrategy.DIRECT)
    setup.move(study_request("1.1"), CmoveStrategy.DIRECT)
    assert len(setup.locate.calls) == 1
    clock.now += 31
    _, outcome = setup.move(study_request("1.1"), CmoveStrategy.DIRECT)
    assert len(setup.locate.calls) == 2 and outcome.status == SUCCESS and outcome.completed == 2


# -- DIRECT ----------------------------------------------------------------------------------------------------------

def test_direct_relays_the_holders_counts_summed_across_holders(tmp_path):
    a, b = study_instances("1.1", 3), study_instances("1.2", 2)
    setup = Setup(tmp_path, {"A": Holding(a), "B": Holding(b)})
    progress, outcome = setup.move(study_request("1.1", "1.2"), CmoveStrategy.DIRECT)
    assert progress[0].remaining == 5 and progress[0].completed == 0
    assert [p.completed for p in progress] == [0, 1, 2, 3, 4, 5]
    assert [p.remaining for p in progress] == [5, 4, 3, 2, 1, 0]
    assert outcome == RetrieveOutcome(SUCCESS, completed=5)
    assert sorted(setup.port.moved["VIEWER"]) == sorted(uids(a + b))
    assert {call.source for call in setup.port.calls_of("move")} == {"A", "B"}
    assert setup.port.calls_of("get") == []


def test_direct_tries_the_next_holder_when_a_holder_fails(tmp_path, caplog):
    data = study_instances("1.1", 3)
    setup = Setup(tmp_path, {"A": Holding(data, transport_error=True), "B": Holding(data)})
    with caplog.at_level(logging.INFO, logger="shared.retrieval"):
        _, outcome = setup.move(study_request("1.1"), CmoveStrategy.DIRECT)
    assert outcome == RetrieveOutcome(SUCCESS, completed=3)
    assert [call.source for call in setup.port.calls_of("move")] == ["A", "B"]
    failed = [r for r in caplog.records if getattr(r, "event", None) == "retrieve_holder_failed"]
    assert failed and failed[0].source == "A" and failed[0].query_id and failed[0].destination == "VIEWER"
    assert any(getattr(r, "event", None) == "retrieve_completed" for r in caplog.records)


def test_direct_destination_unknown_at_one_holder_goes_to_the_next(tmp_path):
    data = study_instances("1.1", 2)
    setup = Setup(tmp_path, {"A": Holding(data, move_status=0xA801), "B": Holding(data)})
    _, outcome = setup.move(study_request("1.1"), CmoveStrategy.DIRECT)
    assert outcome == RetrieveOutcome(SUCCESS, completed=2)


def test_direct_with_no_holder_left_fails_every_sub_operation(tmp_path):
    setup = Setup(tmp_path, {"A": Holding(study_instances("1.1", 3), transport_error=True)})
    _, outcome = setup.move(study_request("1.1"), CmoveStrategy.DIRECT)
    assert outcome.status == OUT_OF_RESOURCES_SUB_OPERATIONS and outcome.failed == 3 and outcome.completed == 0
    assert outcome.error_comment


def test_direct_cancel_ends_with_fe00_and_the_counts_so_far(tmp_path):
    setup = Setup(tmp_path, {"A": Holding(study_instances("1.1", 5), hang_after=2)})
    cancel = CancelToken()
    _, outcome = setup.move(study_request("1.1"), CmoveStrategy.DIRECT, cancel,
                                   on_progress=lambda p: p.completed == 2 and cancel.cancel())
    assert outcome.status == CANCEL and outcome.completed == 2
    assert setup.port.cancels_seen == ["A"]


# -- PROXY -----------------------------------------------------------------------------------------------------------

def test_proxy_forwards_the_first_instance_before_the_source_sent_the_last(tmp_path):
    store = FakeStorePort()
    data = study_instances("1.1", 3)
    setup = Setup(tmp_path, {"A": Holding(data, hold_last_until=store.first_received)}, store=store)
    progress, outcome = setup.move(study_request("1.1"), CmoveStrategy.PROXY)
    assert setup.port.cut_through == [True]  # the source waited for the destination's first receive: cut-through
    assert outcome == RetrieveOutcome(SUCCESS, completed=3)
    assert store.received == uids(data) and store.opened == 1 and store.closed == 1
    assert [p.completed for p in progress] == [0, 1, 2, 3] and progress[-1].remaining == 0
    assert setup.spool_leftovers() == []


@pytest.mark.parametrize("instances_fitting", [0, 1.5])
def test_a_tiny_spool_still_completes_and_never_holds_more_than_its_bound(tmp_path, instances_fitting):
    data = study_instances("1.1", 6, size=2000)
    size = len(encode_instance(data[0]))
    bound = max(1, int(size * instances_fitting))
    setup = Setup(tmp_path, {"A": Holding(data)}, store=FakeStorePort(delay=0.005), spool_max_bytes=bound)
    _, outcome = setup.move(study_request("1.1"), CmoveStrategy.PROXY)
    assert outcome == RetrieveOutcome(SUCCESS, completed=6)
    budget = setup.service.spool_budget
    assert budget.peak_bytes <= max(bound, size)  # one instance larger than the bound passes alone
    assert budget.used_bytes == 0 and setup.spool_leftovers() == []


def test_an_instance_the_destination_refuses_is_a_failed_sub_operation_with_its_uid(tmp_path):
    data = study_instances("1.1", 3)
    setup = Setup(tmp_path, {"A": Holding(data)}, store=FakeStorePort(refuse=frozenset({data[1].SOPInstanceUID})))
    _, outcome = setup.move(study_request("1.1"), CmoveStrategy.PROXY)
    assert outcome.status == SUB_OPERATIONS_WITH_FAILURES
    assert (outcome.completed, outcome.failed, outcome.failed_uids) == (2, 1, (data[1].SOPInstanceUID,))
    assert setup.spool_leftovers() == []


def test_proxy_takes_what_a_failed_holder_did_not_deliver_from_the_next(tmp_path):
    data = study_instances("1.1", 4)
    holdings = {"A": Holding(data, transport_error=True), "B": Holding(data)}
    setup = Setup(tmp_path, holdings)
    _, outcome = setup.move(study_request("1.1"), CmoveStrategy.PROXY)
    assert outcome == RetrieveOutcome(SUCCESS, completed=4)
    assert [call.source for call in setup.port.calls_of("get")] == ["A", "B"]
    assert sorted(setup.store.received) == sorted(uids(data))


def test_an_unreachable_destination_fails_the_retrieval_and_cleans_up(tmp_path):
    setup = Setup(tmp_path, {"A": Holding(study_instances("1.1", 3))}, store=FakeStorePort(fail_open=True))
    _, outcome = setup.move(study_request("1.1"), CmoveStrategy.PROXY)
    assert outcome.status == OUT_OF_RESOURCES_SUB_OPERATIONS and outcome.failed == 3
    assert "VIEWER" in outcome.error_comment and setup.spool_leftovers() == []


def test_a_destination_that_stops_answering_stops_the_source(tmp_path):
    setup = Setup(tmp_path, {"A": Holding(study_instances("1.1", 6), delay=0.01)}, store=FakeStorePort(down=True))
    _, outcome = setup.move(study_request("1.1"), CmoveStrategy.PROXY)
    assert outcome.status == OUT_OF_RESOURCES_SUB_OPERATIONS and outcome.failed == 6
    assert setup.store.sent == 2 and setup.port.cancels_seen == ["A"] and setup.spool_leftovers() == []


def test_warnings_from_the_destination_are_counted_as_warnings(tmp_path):
    data = study_instances("1.1", 2)
    setup = Setup(tmp_path, {"A": Holding(data)}, store=FakeStorePort(warn=frozenset({data[0].SOPInstanceUID})))
    _, outcome = setup.move(study_request("1.1"), CmoveStrategy.PROXY)
    counts = (outcome.completed, outcome.warning, outcome.failed)
    assert outcome.status == SUB_OPERATIONS_WITH_FAILURES and counts == (1, 1, 0)


def test_proxy_cancel_ends_with_fe00_stops_the_source_and_removes_the_spool(tmp_path):
    cancel = CancelToken()
    store = FakeStorePort(on_receive=lambda uid: cancel.cancel())
    setup = Setup(tmp_path, {"A": Holding(study_instances("1.1", 5), hang_after=2)}, store=store)
    _, outcome = setup.move(study_request("1.1"), CmoveStrategy.PROXY, cancel)
    assert outcome.status == CANCEL and outcome.completed >= 1
    assert setup.port.cancels_seen == ["A"] and len(store.received) < 5
    assert setup.spool_leftovers() == [] and setup.service.spool_budget.used_bytes == 0


def test_an_abandoned_move_cancels_the_source_and_removes_the_spool(tmp_path):
    setup = Setup(tmp_path, {"A": Holding(study_instances("1.1", 5), hang_after=2)})
    stream = setup.service.move(study_request("1.1"), CmoveStrategy.PROXY, DEST, CancelToken())
    next(stream)
    next(stream)  # one instance forwarded
    stream.close()
    assert setup.port.cancels_seen == ["A"] and setup.spool_leftovers() == []


def test_a_source_without_c_get_moves_to_the_spanner_itself_through_the_inbox(tmp_path):
    data = study_instances("1.1", 3)
    setup = Setup(tmp_path, {"A": Holding(data)}, sources=[source("A", cget=False)])
    _, outcome = setup.move(study_request("1.1"), CmoveStrategy.PROXY)
    assert outcome == RetrieveOutcome(SUCCESS, completed=3)
    assert [(c.kind, c.destination) for c in setup.port.calls] == [("move", SELF_AE)]
    assert setup.store.received == uids(data)
    assert setup.inbox.deliver(instance("1.1", "1.1.1", "1.1.1.1")) == NOT_EXPECTED  # no job waits any more


# -- HYBRID ----------------------------------------------------------------------------------------------------------

def test_hybrid_proxies_everything_when_the_holder_does_not_know_the_destination(tmp_path):
    data = study_instances("1.1", 3)
    setup = Setup(tmp_path, {"A": Holding(data, move_status=0xA801)})
    _, outcome = setup.move(study_request("1.1"), CmoveStrategy.HYBRID)
    assert outcome == RetrieveOutcome(SUCCESS, completed=3)
    assert [c.kind for c in setup.port.calls] == ["move", "get"]
    assert setup.port.calls_of("get")[0].level is QueryLevel.STUDY
    assert setup.store.received == uids(data) and setup.spool_leftovers() == []


def test_hybrid_proxies_only_the_instances_the_holder_listed_as_failed(tmp_path):
    data = study_instances("1.1", 4)
    lost = data[2].SOPInstanceUID
    setup = Setup(tmp_path, {"A": Holding(data, move_fail_uids=frozenset({lost}))})
    _, outcome = setup.move(study_request("1.1"), CmoveStrategy.HYBRID)
    assert outcome == RetrieveOutcome(SUCCESS, completed=4)
    get = setup.port.calls_of("get")
    assert len(get) == 1 and get[0].level is QueryLevel.IMAGE
    assert get[0].identifier.SOPInstanceUID == lost and get[0].identifier.SeriesInstanceUID == "1.1.1"
    assert setup.store.received == [lost]
    assert setup.locate.calls[-1].level is QueryLevel.IMAGE


def test_a_dicomweb_source_is_never_asked_to_c_move_but_is_proxied(tmp_path):
    only_web, both = study_instances("2.1", 2), study_instances("2.2", 2)
    web = SourceSpec("W", "dicomweb", connection=DicomwebConnection(base_url="http://web.test"), priority=0)
    holdings = {"W": Holding(only_web + both), "D": Holding(both)}
    setup = Setup(tmp_path, holdings, sources=[web, source("D", 1)])
    assert not setup.service._holders.can_direct("W") and setup.service._holders.can_proxy("W")
    assert not setup.service._holders.can_move_to_self(web)
    _, direct = setup.move(study_request("2.1", "2.2"), CmoveStrategy.DIRECT)
    assert [(c.kind, c.source) for c in setup.port.calls] == [("move", "D")]  # W is best for both: skipped
    assert direct.completed == 2 and direct.failed == 2  # 2.1 has no holder that can C-MOVE
    setup.port.calls.clear()
    _, hybrid = setup.move(study_request("2.1", "2.2"), CmoveStrategy.HYBRID)
    assert hybrid == RetrieveOutcome(SUCCESS, completed=4)
    assert sorted((c.kind, c.source) for c in setup.port.calls) == [("get", "W"), ("move", "D")]


def test_hybrid_proxies_the_whole_batch_when_failures_are_not_listed(tmp_path):
    data = study_instances("1.1", 3)
    setup = Setup(tmp_path, {"A": Holding(data, move_fail_uids=frozenset({data[0].SOPInstanceUID}),
                                          list_failed=False)})
    _, outcome = setup.move(study_request("1.1"), CmoveStrategy.HYBRID)
    assert outcome == RetrieveOutcome(SUCCESS, completed=3)
    assert setup.store.received == uids(data)


# -- C-GET -----------------------------------------------------------------------------------------------------------

def test_get_yields_the_count_then_each_instance(tmp_path):
    data = study_instances("1.1", 3)
    setup = Setup(tmp_path, {"A": Holding(data)})
    stream = setup.service.get(study_request("1.1"))
    assert next(stream) == 3
    received = []
    with pytest.raises(StopIteration) as stop:
        while True:
            received.append(next(stream))
    assert uids(received) == uids(data) and all(ds.file_meta.TransferSyntaxUID for ds in received)
    assert stop.value.value == RetrieveOutcome(SUCCESS, completed=3)
    assert setup.spool_leftovers() == []


def test_get_counts_what_no_holder_delivered_as_failed(tmp_path):
    a, b = study_instances("1.1", 2), study_instances("1.2", 3)
    setup = Setup(tmp_path, {"A": Holding(a), "B": Holding(b, transport_error=True)})
    stream = setup.service.get(study_request("1.1", "1.2"))
    assert next(stream) == 5
    received = list(stream_items(stream))
    assert uids(received[:-1]) == uids(a)
    outcome = received[-1]
    assert (outcome.status, outcome.completed, outcome.failed) == (SUB_OPERATIONS_WITH_FAILURES, 2, 3)


def test_get_from_a_source_without_c_get_and_cancel(tmp_path):
    setup = Setup(tmp_path, {"A": Holding(study_instances("1.1", 5), hang_after=2)}, sources=[source("A", cget=False)])
    cancel = CancelToken()
    stream = setup.service.get(study_request("1.1"), cancel)
    assert next(stream) == 5
    first = next(stream)
    cancel.cancel()
    rest = list(stream_items(stream))
    outcome = rest[-1]
    assert first.SOPInstanceUID == "1.1.1.1" and outcome.status == CANCEL and outcome.completed >= 1
    assert setup.port.calls_of("move")[0].destination == SELF_AE and setup.spool_leftovers() == []


def stream_items(stream):
    """Every remaining item of a generator, then its return value."""
    while True:
        try:
            yield next(stream)
        except StopIteration as stop:
            yield stop.value
            return


# -- inbox -----------------------------------------------------------------------------------------------------------

def test_the_inbox_gives_each_waiting_job_its_own_copy():
    inbox, got = Inbox(), {"one": [], "two": []}
    one = inbox.expect(QueryLevel.STUDY, ["1.1"], lambda ds: got["one"].append(ds.SOPInstanceUID) or SUCCESS)
    two = inbox.expect(QueryLevel.STUDY, ["1.1"], lambda ds: got["two"].append(ds.SOPInstanceUID) or SUCCESS)
    copy = instance("1.1", "1.1.1", "1.1.1.1")
    assert inbox.deliver(copy) == SUCCESS and inbox.deliver(copy) == SUCCESS
    assert got == {"one": ["1.1.1.1"], "two": ["1.1.1.1"]}
    assert inbox.deliver(instance("2.2", "2.2.1", "2.2.1.1")) == NOT_EXPECTED
    one.close()
    two.close()
    assert not inbox.waits_for(copy)


def test_concurrent_moves_share_the_spool_budget(tmp_path):
    data = study_instances("1.1", 4, size=1000) + study_instances("1.2", 4, size=1000)
    size = len(encode_instance(data[0]))
    setup = Setup(tmp_path, {"A": Holding(data)}, spool_max_bytes=int(size * 2.5))
    outcomes = []
    threads = [threading.Thread(target=lambda uid=uid: outcomes.append(
        setup.move(study_request(uid), CmoveStrategy.PROXY)[1])) for uid in ("1.1", "1.2")]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(5)
    assert [o.status for o in outcomes] == [SUCCESS, SUCCESS] and sum(o.completed for o in outcomes) == 8
    assert setup.service.spool_budget.peak_bytes <= size * 2.5 and setup.spool_leftovers() == []


# -- building blocks -------------------------------------------------------------------------------------------------

def test_locate_requests_carry_the_parents_and_the_sizing_keys_of_their_level():
    from shared.retrieval.locate import locate_request

    series = Dataset()
    series.StudyInstanceUID, series.SeriesInstanceUID = "1.1", "1.1.1\\1.1.2"
    asked = locate_request(RetrieveRequest(level=QueryLevel.SERIES, identifier=series)).identifier
    assert asked.StudyInstanceUID == "1.1" and list(asked.SeriesInstanceUID) == ["1.1.1", "1.1.2"]
    assert "NumberOfSeriesRelatedInstances" in asked
    image = Dataset()
    image.SOPInstanceUID = "1.1.1.1"
    asked = locate_request(RetrieveRequest(level=QueryLevel.IMAGE, identifier=image)).identifier
    assert asked.StudyInstanceUID == "" and asked.SeriesInstanceUID == "" and asked.SOPClassUID == ""


def test_batches_group_by_holder_and_parents_and_patients_go_alone():
    from shared.retrieval.locate import Entity, plan_batches

    def series(uid, study, holder):
        return Entity(QueryLevel.SERIES, uid, (("StudyInstanceUID", study),), (holder,), 1)

    batches, orphans = plan_batches([series("1", "S1", "A"), series("2", "S1", "A"), series("3", "S2", "A"),
                                     series("4", "S1", "B"), series("5", "S1", "C")],
                                    lambda e: None if e.holders[0] == "C" else e.holders[0])
    assert [(b.holder, [e.uid for e in b.entities]) for b in batches] == [("A", ["1", "2"]), ("A", ["3"]),
                                                                          ("B", ["4"])]
    assert [e.uid for e in orphans] == ["5"]
    patients = [Entity(QueryLevel.PATIENT, p, (), ("A",), None) for p in ("P1", "P2")]
    assert len(plan_batches(patients, lambda e: "A")[0]) == 2


def test_a_full_spool_blocks_the_source_until_the_forwarder_frees_space(tmp_path):
    from shared.retrieval.spool import Spool, SpoolBudget

    data = study_instances("1.1", 2, size=1000)
    spool = Spool(tmp_path / "job", SpoolBudget(int(len(encode_instance(data[0])) * 1.5)))
    assert spool.put(data[0])
    second = threading.Thread(target=spool.put, args=(data[1],))
    second.start()
    second.join(0.05)
    assert second.is_alive()  # blocked: backpressure
    spool.release(spool.take())
    second.join(1)
    assert not second.is_alive() and spool.take().sop_instance_uid == data[1].SOPInstanceUID
    third = threading.Thread(target=spool.put, args=(data[0],))
    third.start()
    spool.abort()  # a cancel wakes a blocked source
    third.join(1)
    assert not third.is_alive()
    spool.remove()
    assert not (tmp_path / "job").exists()
