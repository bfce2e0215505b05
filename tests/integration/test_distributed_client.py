"""DistributedSpanClient (shared.distributed.client) on real PostgreSQL and Redis, with the harness's broker.

A "worker pool" thread delivers the broker's messages (harness.drain, over and over) while the client waits, as the
Celery workers would; the client sees only the runtime, exactly as in the spanning SCP.
"""

from __future__ import annotations

import threading
import time
from contextlib import contextmanager
from typing import Iterator

import pytest
from pydicom import Dataset

from shared.config import DatabaseSettings, DistributedSettings, Settings
from shared.db.repo.query_logs import list_query_logs
from shared.db.repo.spanner_configs import load_span_plan
from shared.dicom.dicom_json import dataset_to_json
from shared.dicom.levels import QueryLevel
from shared.distributed.client import DistributedSpanClient, span_client_for
from shared.distributed.intake import describe_span
from shared.messaging.contracts import FINALIZE_SPAN, SOURCE_FINISHED
from shared.span_client import InProcessSpanClient
from shared.spanning.codec import result_to_dict
from shared.spanning.model import (
    Match,
    SourceOutcome,
    SourceStatus,
    SpanPolicy,
    SpanRequest,
    SpanResult,
    SpanStatus,
)
from shared.spanning.ports import CancelToken
from tests.fakes.ports import Script, study
from tests.integration.distributed_fixtures import RABBITMQ_URL, REDIS_URL

pytestmark = pytest.mark.integration
PROMPT = 3.0
HANG = 30.0


@contextmanager
def workers(harness, *, lose: frozenset[str] = frozenset()) -> Iterator[None]:
    """Deliver the broker's ready messages on a thread until the block ends (messages of a task in `lose` are
    dropped: lost by the broker). A delivery error fails the test at the end of the block."""
    stop, errors = threading.Event(), []

    def pump() -> None:
        while not stop.is_set():
            try:
                if lose:
                    for message in harness.broker.drop_ready():
                        if message.name not in lose:
                            harness.deliver(message)
                else:
                    harness.drain(wait_sources=False)
            except BaseException as exc:  # surfaced below
                errors.append(exc)
                return
            stop.wait(0.01)

    thread = threading.Thread(target=pump, name="worker-pool", daemon=True)
    thread.start()
    try:
        yield
    finally:
        stop.set()
        thread.join(timeout=5)
    if errors:
        raise errors[0]


def find(level: QueryLevel = QueryLevel.STUDY, **keys: str) -> SpanRequest:
    identifier = Dataset()
    identifier.StudyInstanceUID = ""
    identifier.PatientName = ""
    for keyword, value in keys.items():
        setattr(identifier, keyword, value)
    return SpanRequest(level=level, identifier=identifier)


def plan_of(harness, config_id: int):
    with harness.rt.session_factory() as session:
        return load_span_plan(session, config_id=config_id)


def uids(matches) -> list[str]:
    return [str(match.dataset.StudyInstanceUID) for match in matches]


def test_a_completed_span_gives_what_describe_span_reports_matches_at_the_end(harness):
    config = harness.add_config("two", {
        "ARCH_A": Script(matches=[study("1.2.1", PatientName="DOE^A"), study("1.2.2", PatientName="DOE^B")]),
        "ARCH_B": Script(matches=[study("1.2.2", PatientName="DOE^B", StudyDescription="CT"),
                                  study("1.2.3", PatientName="DOE^C")], first_delay=0.1),
    }, priorities={"ARCH_A": 1, "ARCH_B": 2})
    plan, client = plan_of(harness, config), DistributedSpanClient(harness.rt)
    request = find(PatientName="DOE*")
    with workers(harness):
        events = list(client.stream(request, plan.sources, plan.policy, config_id=config))

    result = events[-1]
    assert isinstance(result, SpanResult) and result.status is SpanStatus.COMPLETED
    kinds = [type(event).__name__ for event in events]
    assert kinds == ["SourceOutcome"] * 2 + ["Match"] * 3 + ["SpanResult"]  # MOST_COMPLETE: matches at the end
    assert [event for event in events if isinstance(event, Match)] == list(result.matches)
    assert [event for event in events if isinstance(event, SourceOutcome)] == list(result.outcomes)
    assert all(isinstance(match.dataset, Dataset) for match in result.matches)
    assert uids(result.matches) == ["1.2.1", "1.2.2", "1.2.3"]
    assert result.matches[1].sources == ("ARCH_A", "ARCH_B") and result.matches[1].key == ("1.2.2",)

    view = describe_span(harness.rt, result.query_id)
    data = result_to_dict(result)
    assert (view["status"], view["error"], view["total_results"], view["raw_results"]) == \
        (data["status"], data["error"], data["deduplicated_count"], data["raw_count"])
    assert view["sources"] == data["sources"] and view["results"] == data["matches"]
    assert result.query_id != request.query_id  # intake chooses the id; the query log has it
    assert harness.query_log(result.query_id).status.value == "completed"


def test_first_wins_yields_a_match_before_the_slow_source_finished(harness):
    config = harness.add_config("first", {
        "FAST": Script(matches=[study("1.2.1"), study("1.2.2")]),
        "SLOW": Script(matches=[study("1.2.2"), study("1.2.3")], first_delay=1.0),
    }, deduplication_strategy="FIRST_WINS", priorities={"FAST": 1, "SLOW": 2})
    plan, client = plan_of(harness, config), DistributedSpanClient(harness.rt)
    started, early, events = time.monotonic(), None, []
    with workers(harness):
        for event in client.stream(find(), plan.sources, plan.policy, config_id=config):
            if isinstance(event, Match) and early is None:
                slow_calls = harness.port.calls_for("SLOW")
                early = (time.monotonic() - started, all(call.finished is None for call in slow_calls))
            events.append(event)

    elapsed, slow_unfinished = early  # SLOW not started yet, or still in its 1 s first delay
    assert elapsed < 0.9 and slow_unfinished
    assert harness.port.calls_for("SLOW")[0].finished - harness.port.calls_for("SLOW")[0].started >= 1.0
    result = events[-1]
    assert result.status is SpanStatus.COMPLETED
    streamed = [event for event in events if isinstance(event, Match)]
    assert sorted(uids(streamed)) == ["1.2.1", "1.2.2", "1.2.3"]  # each key once
    assert {uid: m.sources for uid, m in zip(uids(streamed), streamed)}["1.2.1"] == ("FAST",)
    assert sorted(uids(result.matches)) == ["1.2.1", "1.2.2", "1.2.3"]
    assert dict(zip(uids(result.matches), (m.sources for m in result.matches)))["1.2.2"] == ("FAST", "SLOW")


def test_cancel_ends_the_span_cancelled_and_stops_the_source(harness):
    config = harness.add_config("cancel", {"QUICK": Script(matches=[study("1.2.1")]),
                                           "HUNG": Script(hang=True, hang_seconds=HANG)})
    plan, client, token = plan_of(harness, config), DistributedSpanClient(harness.rt), CancelToken()

    def cancel_when_hung() -> None:
        harness.wait_for(lambda: harness.port.calls_for("HUNG"), timeout=PROMPT, what="HUNG started")
        time.sleep(0.1)
        token.cancel()

    canceller = threading.Thread(target=cancel_when_hung, daemon=True)
    canceller.start()
    started = time.monotonic()
    with workers(harness):
        result = client.run(find(), plan.sources, plan.policy, cancel=token, config_id=config)
        assert harness.join_sources(timeout=PROMPT), "the hung source task did not return after the cancel"
    canceller.join()
    assert time.monotonic() - started < PROMPT
    assert (result.status, result.error) == (SpanStatus.CANCELLED, "cancelled by the caller")
    outcomes = {outcome.source: outcome.status for outcome in result.outcomes}
    assert outcomes["HUNG"] is SourceStatus.CANCELLED and harness.port.cancel_observed("HUNG")
    assert harness.query_log(result.query_id).status.value == "cancelled"


def test_a_broker_down_at_accept_is_a_failed_result_naming_it(harness):
    config = harness.add_config("nobroker", {"A": Script(matches=[study("1.2.1")])})
    plan, client = plan_of(harness, config), DistributedSpanClient(harness.rt)
    harness.broker.down = ConnectionError("connection refused")
    request = find()
    result = client.run(request, plan.sources, plan.policy, config_id=config)
    assert result.status is SpanStatus.FAILED and result.matches == () and result.query_id == request.query_id
    assert "message broker is unavailable" in result.error and "connection refused" in result.error
    with harness.rt.session_factory() as session:
        (log,) = list_query_logs(session)
    assert log.status.value == "failed"  # intake closed it: nothing left open


def test_refusals_are_failed_results_and_config_id_is_required(harness):
    config = harness.add_config("off", {"A": Script()}, is_enabled=False)
    client = DistributedSpanClient(harness.rt)
    result = client.run(find(), [], SpanPolicy(), config_id=config)
    assert (result.status, result.error) == (SpanStatus.FAILED, "spanner config 'off' is disabled")
    with pytest.raises(ValueError, match="config_id"):
        client.stream(find(), [], SpanPolicy())


def test_the_query_log_carries_the_requester_ae_title_and_address(harness):
    config = harness.add_config("who", {"A": Script(matches=[study("1.2.1")])})
    plan, client = plan_of(harness, config), DistributedSpanClient(harness.rt)
    with workers(harness):
        result = client.run(find(), plan.sources, plan.policy, config_id=config,
                            requester={"ae_title": "FINDSCU", "address": "10.0.0.5"})
    log = harness.query_log(result.query_id)
    assert (log.requester_ae_title, log.client_address, log.requester_user) == ("FINDSCU", "10.0.0.5", None)
    assert set(log.query_filters) >= set(dataset_to_json(find().identifier))  # the keys went as DICOM JSON


@pytest.mark.parametrize("query_type", ["C-MOVE", "C-GET", "WADO"])
def test_a_retrieval_locate_is_spanned_and_logged_as_the_operation_it_serves(harness, query_type):
    config = harness.add_config(f"locate-{query_type}", {"A": Script(matches=[study("1.2.1")])})
    plan, client = plan_of(harness, config), DistributedSpanClient(harness.rt)
    request = SpanRequest(level=QueryLevel.STUDY, identifier=find().identifier, query_type=query_type)
    with workers(harness):
        result = client.run(request, plan.sources, plan.policy, config_id=config, requester={"user": "alice"})
    assert result.status is SpanStatus.COMPLETED and uids(result.matches) == ["1.2.1"], result.error
    log = harness.query_log(result.query_id)
    assert (log.query_type.value, log.requester_user) == (query_type, "alice")


def test_past_the_hard_cap_the_client_finalises_a_span_nobody_finalised(harness):
    config = harness.add_config("lost", {"QUICK": Script(matches=[study("1.2.1")]),
                                         "HUNG": Script(hang=True, hang_seconds=HANG)}, query_timeout_seconds=1)
    plan = plan_of(harness, config)
    client = DistributedSpanClient(harness.rt, grace_seconds=0.2)
    started = time.monotonic()
    with workers(harness, lose=frozenset({SOURCE_FINISHED, FINALIZE_SPAN})):  # no worker will finalise it
        result = client.run(find(), plan.sources, plan.policy, config_id=config)
    assert 1.0 <= time.monotonic() - started < 2.5
    assert result.status is SpanStatus.PARTIAL and uids(result.matches) == ["1.2.1"]
    assert {o.source: o.status for o in result.outcomes} == {"QUICK": SourceStatus.OK, "HUNG": SourceStatus.TIMEOUT}
    assert harness.query_log(result.query_id).status.value == "partial"


def test_the_factory_picks_the_mode_from_the_settings(database_url):
    embedded = span_client_for(Settings(db=DatabaseSettings(), distributed=DistributedSettings()))
    try:
        assert isinstance(embedded, InProcessSpanClient)
    finally:
        embedded.close()
    settings = Settings(db=DatabaseSettings(DATABASE_URL=database_url),
                        distributed=DistributedSettings(REDIS_URL=REDIS_URL, RABBITMQ_URL=RABBITMQ_URL))
    distributed = span_client_for(settings)  # connects lazily: nothing is reached yet
    try:
        assert isinstance(distributed, DistributedSpanClient)
    finally:
        distributed.close()


def test_without_the_done_channel_the_client_polls_is_finished(harness, monkeypatch):
    config = harness.add_config("poll", {"A": Script(matches=[study("1.2.1")], first_delay=0.1)})
    plan, client = plan_of(harness, config), DistributedSpanClient(harness.rt)

    def refused(**_kwargs):
        raise ConnectionError("pub/sub refused")

    monkeypatch.setattr(harness.rt.store.redis, "pubsub", refused)
    started = time.monotonic()
    with workers(harness):
        result = client.run(find(), plan.sources, plan.policy, config_id=config)
    assert result.status is SpanStatus.COMPLETED and uids(result.matches) == ["1.2.1"]
    assert time.monotonic() - started < 5.0  # noticed within polls, long before the hard cap (30 + 10 s)
