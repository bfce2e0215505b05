"""The distributed span's state machine (shared.distributed) on real Redis and PostgreSQL, without Celery.

The in-process broker of tests.integration.distributed_fixtures queues what the steps publish; each test delivers
the messages by calling the real step functions, in the order (and with the losses, replays and delays) it wants.
Statuses, outcomes and merged results must be those of the in-process engine (shared.spanning.engine module doc).
"""

from __future__ import annotations

import time
from datetime import timedelta

import pytest

from shared.db.repo.query_logs import list_query_logs
from shared.dicom.dicom_json import dataset_to_json
from shared.distributed import intake
from shared.distributed.intake import SpanRequestError, accept_span, cancel_span, describe_span, is_finished, sweep
from shared.messaging.contracts import FINALIZE_SPAN, PLAN_SPAN, QUERY_SOURCE, SOURCE_FINISHED
from shared.spanning.health import BreakerPolicy
from tests.fakes.ports import Script, study
from tests.integration.distributed_fixtures import Message

pytestmark = pytest.mark.integration
RETRIEVE_AE_TITLE = "00080054"
PROMPT = 3.0  # seconds a stopped source task may take to return (its scripted hang lasts HANG)
HANG = 30.0


def uid_of(match: dict) -> str:
    return match["0020000D"]["Value"][0]


def holders(match: dict) -> list[str]:
    return match[RETRIEVE_AE_TITLE]["Value"]


def sources_of(view: dict) -> dict[str, dict]:
    return {entry["source"]: entry for entry in view["sources"]}


def statuses(view: dict) -> dict[str, str]:
    return {name: entry["status"] for name, entry in sources_of(view).items()}


def sent_names(harness) -> list[tuple]:
    """What was published, as (task, source) pairs: the query id is the same for all in these tests."""
    short = {PLAN_SPAN: "plan", QUERY_SOURCE: "query", SOURCE_FINISHED: "finished", FINALIZE_SPAN: "finalize"}
    return [(short[m.name], *m.args[1:]) for m in harness.broker.sent()]


def hold_ready(harness) -> dict[tuple, Message]:
    """Take the ready messages off the broker, keyed (task, *args without the query id), to deliver by hand."""
    return {(m.name, *m.args[1:]): m for m in harness.broker.drop_ready()}


# --- the normal path ---------------------------------------------------------------------------------------------

def test_three_overlapping_archives_complete_deduplicated_with_every_holder_named(harness):
    config = harness.add_config("three", {
        "ARCH_A": Script(matches=[study("1.2.1", PatientName="DOE^A", InstitutionName="not requested"),
                                  study("1.2.2", PatientName="DOE^B")]),
        "ARCH_B": Script(matches=[study("1.2.2", PatientName="DOE^B", StudyDescription="CT HEAD"),
                                  study("1.2.3", PatientName="DOE^C")]),
        "ARCH_C": Script(matches=[study("1.2.3", PatientName="DOE^C"), study("1.2.4", PatientName="DOE^D")]),
    }, priorities={"ARCH_A": 1, "ARCH_B": 2, "ARCH_C": 3})
    query_id = harness.accept(config, {"PatientName": "DOE*"})
    assert harness.query_log(query_id).status.value == "accepted"
    harness.drain()

    view = describe_span(harness.rt, query_id)
    assert (view["status"], view["error"], view["total_results"], view["raw_results"]) == ("completed", None, 4, 6)
    assert (view["sources_queried"], view["sources_responded"]) == (3, 3)
    assert {name: (e["status"], e["match_count"]) for name, e in sources_of(view).items()} == {
        "ARCH_A": ("ok", 2), "ARCH_B": ("ok", 2), "ARCH_C": ("ok", 2)}
    results = view["results"]
    assert [uid_of(m) for m in results] == ["1.2.1", "1.2.2", "1.2.3", "1.2.4"]
    assert [holders(m) for m in results] == [["ARCH_A"], ["ARCH_A", "ARCH_B"], ["ARCH_B", "ARCH_C"], ["ARCH_C"]]
    assert results[1]["00081030"]["Value"] == ["CT HEAD"]  # MOST_COMPLETE kept ARCH_B's richer answer
    assert "00080080" not in results[0]  # InstitutionName was not asked for: cut (PS3.4 C.4.1.2.3)
    assert [harness.port.attempts(name) for name in ("ARCH_A", "ARCH_B", "ARCH_C")] == [1, 1, 1]

    log = harness.query_log(query_id)
    assert (log.status.value, log.deduplicated_result_count, log.raw_result_count, log.error_message) == \
        ("completed", 4, 6, None)
    assert log.completed_at is not None and [o["status"] for o in log.source_outcomes] == ["ok", "ok", "ok"]
    kept = harness.kept_result(query_id)
    assert kept.result["status"] == "completed" and kept.result["matches"] == results
    retention = kept.expires_at.timestamp() - harness.clock()
    assert timedelta(days=7).total_seconds() - 60 < retention <= timedelta(days=7).total_seconds()
    assert is_finished(harness.rt, query_id)


def test_one_source_at_a_time_the_next_launched_only_when_the_previous_finished(harness):
    config = harness.add_config("serial", {name: Script(matches=[study(f"1.2.{i}")], first_delay=0.05)
                                           for i, name in enumerate(("S1", "S2", "S3"))},
                                priorities={"S1": 1, "S2": 2, "S3": 3}, max_concurrent_sources=1)
    query_id = harness.accept(config)
    harness.drain()
    assert sent_names(harness) == [("plan",), ("query", "S1"), ("finalize",), ("finished", "S1"), ("query", "S2"),
                                   ("finished", "S2"), ("query", "S3"), ("finished", "S3")]
    assert harness.port.max_active == 1
    view = describe_span(harness.rt, query_id)
    assert view["status"] == "completed" and [uid_of(m) for m in view["results"]] == ["1.2.0", "1.2.1", "1.2.2"]


# --- failure strategies ------------------------------------------------------------------------------------------

def test_fail_fast_finalises_at_the_first_failure_and_cancels_the_others(harness):
    config = harness.add_config("fast", {"BAD": Script(query_failure="0xA700 out of resources"),
                                         "SLOW1": Script(hang=True, hang_seconds=HANG),
                                         "SLOW2": Script(hang=True, hang_seconds=HANG)},
                                failure_strategy="FAIL_FAST")
    query_id = harness.accept(config)
    harness.step()  # PLAN_SPAN
    held = hold_ready(harness)
    for slow in ("SLOW1", "SLOW2"):  # the slow ones are running before the failure arrives
        harness.deliver(held[(QUERY_SOURCE, slow)])
    harness.wait_for(lambda: harness.port.calls_for("SLOW1") and harness.port.calls_for("SLOW2"), what="slow starts")
    started = time.monotonic()
    harness.deliver(held[(QUERY_SOURCE, "BAD")])
    harness.drain()  # waits for every source task: the hung ones must return promptly
    assert time.monotonic() - started < PROMPT

    view = describe_span(harness.rt, query_id)
    assert view["status"] == "failed"
    assert view["error"] == "FAIL_FAST: 0/3 sources ok; BAD: failed (query failed: 0xA700 out of resources)"
    assert {name: (e["status"], e["error"]) for name, e in sources_of(view).items()} == {
        "BAD": ("failed", "query failed: 0xA700 out of resources"),
        "SLOW1": ("cancelled", "cancelled: span failed (FAIL_FAST)"),
        "SLOW2": ("cancelled", "cancelled: span failed (FAIL_FAST)")}
    assert harness.port.cancel_observed("SLOW1") and harness.port.cancel_observed("SLOW2")
    assert [m.args[1] for m in harness.broker.sent(SOURCE_FINISHED)] == ["BAD"]


def test_minimum_threshold_finalises_once_it_cannot_be_reached(harness):
    config = harness.add_config("threshold", {"BAD1": Script(query_failure="0xC000"),
                                              "BAD2": Script(query_failure="0xC001"),
                                              "SLOW": Script(hang=True, hang_seconds=HANG)},
                                failure_strategy="MINIMUM_THRESHOLD", minimum_success_threshold=2)
    query_id = harness.accept(config)
    harness.step()
    held = hold_ready(harness)
    harness.deliver(held[(QUERY_SOURCE, "SLOW")])
    harness.wait_for(lambda: harness.port.calls_for("SLOW"), what="SLOW started")
    harness.deliver(held[(QUERY_SOURCE, "BAD1")])
    harness.drain(wait_sources=False)
    harness.wait_for(lambda: harness.broker.ready() or harness.rt.store.has_outcome(query_id, "BAD1"))
    harness.drain(wait_sources=False)
    assert harness.query_log(query_id).is_open  # 0 ok + 2 outstanding can still make 2
    harness.deliver(held[(QUERY_SOURCE, "BAD2")])
    harness.drain()

    view = describe_span(harness.rt, query_id)
    assert view["status"] == "failed"
    assert view["error"] == ("MINIMUM_THRESHOLD: 0/3 sources ok; BAD1: failed (query failed: 0xC000); "
                             "BAD2: failed (query failed: 0xC001)")
    assert statuses(view) == {"BAD1": "failed", "BAD2": "failed", "SLOW": "cancelled"}
    assert harness.port.cancel_observed("SLOW")


# --- deadlines ---------------------------------------------------------------------------------------------------

def test_a_hung_source_times_out_at_the_real_deadline(harness):
    config = harness.add_config("deadline", {"QUICK": Script(matches=[study("1.2.1")]), "HUNG": Script(hang=True)},
                                query_timeout_seconds=1)
    query_id = harness.accept(config)
    harness.drain(wait_sources=False)
    (finalize,) = harness.broker.delayed()
    assert finalize.name == FINALIZE_SPAN and 0 < finalize.countdown <= 1.0
    time.sleep(max(0.0, harness.query_log(query_id).deadline_at.timestamp() - time.time()))
    harness.fire_delayed()  # the deadline task or HUNG's own watchdog, whichever comes first, ends it: same result

    view = describe_span(harness.rt, query_id)
    assert (view["status"], view["error"]) == ("partial", None)
    assert {n: (e["status"], e["error"]) for n, e in sources_of(view).items()} == {
        "QUICK": ("ok", None), "HUNG": ("timeout", "query deadline (1s) exceeded")}
    assert [uid_of(m) for m in view["results"]] == ["1.2.1"] and harness.port.cancel_observed("HUNG")


def test_the_deadline_task_times_out_running_and_never_started_sources_keeping_their_answers(harness):
    config = harness.add_config("late", {"HUNG": Script(matches=[study("1.2.9")], hang=True, hang_seconds=HANG),
                                         "NEXT": Script(matches=[study("1.2.1")])},
                                priorities={"HUNG": 1, "NEXT": 2}, max_concurrent_sources=1,
                                query_timeout_seconds=30)
    query_id = harness.accept(config)
    harness.drain(wait_sources=False)
    live = harness.wait_for(  # what arrived before the stall is in Redis (the live view), not stuck in a buffer
        lambda: (v := describe_span(harness.rt, query_id))["sources"][0]["match_count"] == 1 and v,
        what="HUNG's first answer in the live view")
    assert live["status"] == "running" and statuses(live) == {"HUNG": "running", "NEXT": "pending"}
    assert [uid_of(m) for m in live["results"]] == ["1.2.9"]
    assert harness.fire_delayed(wait_sources=False) == 1  # delivered early: it only schedules itself again
    (again,) = harness.broker.delayed()
    assert again.name == FINALIZE_SPAN and 29 < again.countdown <= 30 and harness.query_log(query_id).is_open

    harness.clock.advance(30.5)
    harness.fire_delayed()  # waits for HUNG's task too: the finalised span's stop flag cancels it
    view = describe_span(harness.rt, query_id)
    assert view["status"] == "failed"
    assert {n: (e["status"], e["error"]) for n, e in sources_of(view).items()} == {
        "HUNG": ("timeout", "query deadline (30s) exceeded"),
        "NEXT": ("timeout", "not started before the query deadline (30s) exceeded")}
    assert [uid_of(m) for m in view["results"]] == ["1.2.9"]  # a timed-out source's answers count (engine rule)
    assert sources_of(view)["HUNG"]["match_count"] == 1
    assert harness.port.cancel_observed("HUNG") and harness.port.attempts("NEXT") == 0
    assert [m.args[1] for m in harness.broker.sent(QUERY_SOURCE)] == ["HUNG"]


def test_a_sources_own_timeout_ends_it_long_before_the_span_deadline(harness):
    config = harness.add_config("own", {"QUICK": Script(matches=[study("1.2.1")]),
                                        "HUNG": Script(hang=True, hang_seconds=HANG)},
                                timeouts={"HUNG": 0.5}, query_timeout_seconds=30)
    query_id = harness.accept(config)
    harness.drain()  # HUNG's watchdog ends it after 0.5 s; its outcome finalises the span
    view = describe_span(harness.rt, query_id)
    assert view["status"] == "partial" and not harness.broker.ready()
    assert {n: (e["status"], e["error"]) for n, e in sources_of(view).items()} == {
        "QUICK": ("ok", None), "HUNG": ("timeout", "source timeout (0.5s) exceeded")}
    assert sources_of(view)["HUNG"]["latency_ms"] >= 500 and harness.port.cancel_observed("HUNG")


# --- cancellation ------------------------------------------------------------------------------------------------

def test_cancel_stops_a_hung_source_promptly_and_is_idempotent(harness):
    config = harness.add_config("cancel", {"QUICK": Script(matches=[study("1.2.1")]),
                                           "HUNG": Script(hang=True, hang_seconds=HANG)})
    query_id = harness.accept(config)
    harness.drain(wait_sources=False)
    harness.wait_for(lambda: harness.port.calls_for("HUNG") and harness.rt.store.has_outcome(query_id, "QUICK"))
    harness.drain(wait_sources=False)

    started = time.monotonic()
    answer = cancel_span(harness.rt, query_id)
    assert answer["status"] == "cancelled" and answer["query_id"] == query_id
    assert harness.join_sources(timeout=PROMPT), "the hung source task did not return after the cancel"
    assert time.monotonic() - started < PROMPT and harness.port.cancel_observed("HUNG")
    harness.drain()
    assert [m.args[1] for m in harness.broker.sent(SOURCE_FINISHED)] == ["QUICK"]  # a stopped query records nothing

    view = describe_span(harness.rt, query_id)
    assert (view["status"], view["error"]) == ("cancelled", "cancelled by the caller")
    assert {n: (e["status"], e["error"]) for n, e in sources_of(view).items()} == {
        "QUICK": ("ok", None), "HUNG": ("cancelled", "cancelled by the caller")}
    assert [uid_of(m) for m in view["results"]] == ["1.2.1"]  # what arrived is still reported
    assert cancel_span(harness.rt, query_id)["status"] == "cancelled"  # a second cancel is fine
    assert harness.query_log(query_id).status.value == "cancelled"


def test_cancelling_a_finished_unknown_or_malformed_query_is_refused(harness):
    config = harness.add_config("done", {"A": Script(matches=[study("1.2.1")])})
    query_id = harness.accept(config)
    harness.drain()
    with pytest.raises(SpanRequestError) as refused:
        cancel_span(harness.rt, query_id)
    assert refused.value.status_code == 409 and "already finished (completed)" in str(refused.value)
    assert harness.query_log(query_id).status.value == "completed"
    for unknown in ("0" * 32, "../../etc", "ABCDEF" * 6):
        with pytest.raises(SpanRequestError) as missing:
            cancel_span(harness.rt, unknown)
        assert missing.value.status_code == 404


def test_a_query_cancelled_before_it_was_planned_is_never_started(harness):
    config = harness.add_config("early", {"A": Script(matches=[study("1.2.1")])})
    query_id = harness.accept(config)
    cancel_span(harness.rt, query_id)
    harness.drain()  # the PLAN_SPAN message arrives after the cancel
    assert harness.broker.sent(QUERY_SOURCE) == [] and harness.port.attempts("A") == 0
    view = describe_span(harness.rt, query_id)
    assert view["status"] == "cancelled" and statuses(view) == {"A": "cancelled"}


def test_a_config_disabled_before_its_query_was_planned_fails_the_query(harness):
    config = harness.add_config("switched", {"A": Script(matches=[study("1.2.1")])})
    query_id = harness.accept(config)
    harness.add_config("switched", {"A": Script(matches=[study("1.2.1")])}, is_enabled=False)
    harness.drain()
    assert harness.broker.sent(QUERY_SOURCE) == [] and harness.port.attempts("A") == 0
    view = describe_span(harness.rt, query_id)
    assert (view["status"], view["error"]) == ("failed", "spanner config 'switched' is disabled")


# --- idempotency -------------------------------------------------------------------------------------------------

def test_replayed_steps_after_completion_change_nothing(harness):
    config = harness.add_config("replay", {"A": Script(matches=[study("1.2.1")]),
                                           "B": Script(matches=[study("1.2.2")])})
    query_id = harness.accept(config)
    harness.drain()
    before = (describe_span(harness.rt, query_id), harness.query_log(query_id).completed_at,
              harness.kept_result(query_id).result, len(harness.broker.sent()))
    harness.clock.advance(31)  # past the deadline, so FINALIZE_SPAN really finalises if it can
    for message in (Message(PLAN_SPAN, (query_id,), None), Message(SOURCE_FINISHED, (query_id, "A"), None),
                    Message(FINALIZE_SPAN, (query_id,), None), Message(QUERY_SOURCE, (query_id, "B"), None)):
        harness.deliver(message)
    harness.drain()
    after = (describe_span(harness.rt, query_id), harness.query_log(query_id).completed_at,
             harness.kept_result(query_id).result, len(harness.broker.sent()))
    assert after == before
    assert harness.port.attempts("A") == harness.port.attempts("B") == 1


def test_a_replayed_plan_resends_only_launches_and_duplicates_do_not_query_again(harness):
    config = harness.add_config("replan", {"A": Script(matches=[study("1.2.1")]),
                                           "B": Script(matches=[study("1.2.2")])})
    query_id = harness.accept(config)
    harness.step()
    plan = harness.rt.store.plan(query_id)
    harness.deliver(Message(PLAN_SPAN, (query_id,), None))  # redelivered while the span runs
    assert harness.rt.store.plan(query_id) == plan
    assert [m.args[1] for m in harness.broker.sent(QUERY_SOURCE)] == ["A", "B", "A", "B"]
    assert len(harness.broker.sent(FINALIZE_SPAN)) == 1
    harness.step(), harness.step()
    assert harness.join_sources(timeout=5)
    harness.drain()  # the duplicates find the outcomes recorded and return
    assert harness.port.attempts("A") == harness.port.attempts("B") == 1
    view = describe_span(harness.rt, query_id)
    assert view["status"] == "completed" and view["raw_results"] == 2


def test_a_replayed_source_finished_launches_nothing_more(harness):
    config = harness.add_config("release", {name: Script(matches=[study(f"1.2.{i}")])
                                            for i, name in enumerate(("S1", "S2", "S3"))},
                                priorities={"S1": 1, "S2": 2, "S3": 3}, max_concurrent_sources=1)
    query_id = harness.accept(config)
    harness.step()  # PLAN_SPAN: launches S1
    harness.step()  # QUERY_SOURCE S1
    assert harness.join_sources(timeout=5)
    finished = harness.step()  # SOURCE_FINISHED S1: launches S2
    assert finished.args == (query_id, "S1")
    harness.deliver(finished)  # redelivered
    assert [m.args[1] for m in harness.broker.sent(QUERY_SOURCE)] == ["S1", "S2"]
    assert [(m.name, m.args[1]) for m in harness.broker.ready()] == [(QUERY_SOURCE, "S2")]
    harness.drain()
    assert describe_span(harness.rt, query_id)["status"] == "completed"
    assert [m.args[1] for m in harness.broker.sent(QUERY_SOURCE)] == ["S1", "S2", "S3"]


def test_a_redelivered_source_task_uses_only_its_own_attempts_answers(harness):
    config = harness.add_config("redeliver", {"A": Script(matches=[study("1.2.1")])})
    query_id = harness.accept(config)
    harness.step()
    store = harness.rt.store
    assert store.start_attempt(query_id, "A", harness.clock()) == 1  # a worker began, sent half an answer, died
    store.add_answers(query_id, "A", 1, [dataset_to_json(study("9.9.9")), dataset_to_json(study("1.2.1"))])
    harness.drain()  # the redelivered QUERY_SOURCE: attempt 2
    assert store.outcomes(query_id, ["A"])["A"]["attempt"] == 2
    view = describe_span(harness.rt, query_id)
    assert view["status"] == "completed" and [uid_of(m) for m in view["results"]] == ["1.2.1"]
    assert (view["raw_results"], sources_of(view)["A"]["match_count"]) == (1, 1)


# --- losing Redis ------------------------------------------------------------------------------------------------

def test_a_finished_query_is_described_from_postgresql_after_redis_lost_everything(harness):
    config = harness.add_config("durable", {"A": Script(matches=[study("1.2.1"), study("1.2.2")])})
    query_id = harness.accept(config)
    harness.drain()
    before = describe_span(harness.rt, query_id, offset=1, limit=5)
    assert harness.flush_redis() > 0 and harness.rt.store.result(query_id) is None
    after = describe_span(harness.rt, query_id, offset=1, limit=5)
    assert after == before and after["status"] == "completed"
    assert [uid_of(m) for m in after["results"]] == ["1.2.2"] and is_finished(harness.rt, query_id)


def test_redis_flushed_mid_span_the_sweep_finalises_it_at_the_deadline_from_postgresql(harness):
    config = harness.add_config("flushed", {"QUICK": Script(matches=[study("1.2.1")]),
                                           "HUNG": Script(hang=True, hang_seconds=HANG)}, query_timeout_seconds=30)
    query_id = harness.accept(config)
    harness.drain(wait_sources=False)
    harness.wait_for(lambda: harness.port.calls_for("HUNG") and harness.rt.store.has_outcome(query_id, "QUICK"))
    harness.drain(wait_sources=False)
    harness.flush_redis()
    running = describe_span(harness.rt, query_id)
    assert running["status"] == "running" and statuses(running) == {"HUNG": "pending", "QUICK": "pending"}
    assert sweep(harness.rt)["finalised"] == 0  # not due yet

    harness.clock.advance(30.5)
    assert sweep(harness.rt) == {"finalised": 1, "replanned": 0, "purged": 0, "expired_live_keys": 0}
    assert harness.join_sources(timeout=PROMPT)  # the stop flag the finaliser wrote reached the hung task
    harness.fire_delayed()  # the deadline task arrives after the sweep: nothing left to do
    view = describe_span(harness.rt, query_id)
    assert view["status"] == "failed" and statuses(view) == {"HUNG": "timeout", "QUICK": "timeout"}
    assert harness.query_log(query_id).status.value == "failed" and harness.kept_result(query_id) is not None


# --- the sweep ---------------------------------------------------------------------------------------------------

def test_the_sweep_finalises_an_overdue_query_whose_source_messages_were_lost(harness):
    config = harness.add_config("lost", {"A": Script(matches=[study("1.2.1")])}, query_timeout_seconds=5)
    query_id = harness.accept(config)
    harness.step()
    assert [m.name for m in harness.broker.drop_ready()] == [QUERY_SOURCE]
    assert sweep(harness.rt)["finalised"] == 0
    harness.clock.advance(6)
    assert sweep(harness.rt)["finalised"] == 1 and sweep(harness.rt)["finalised"] == 0
    view = describe_span(harness.rt, query_id)
    assert view["status"] == "failed"
    assert sources_of(view)["A"]["error"] == "not started before the query deadline (5s) exceeded"


def test_the_sweep_sends_the_plan_again_for_a_query_never_planned(harness, monkeypatch):
    monkeypatch.setattr(intake, "REPLAN_AFTER", timedelta(seconds=20))  # its Redis claim expires in real time
    config = harness.add_config("replan", {"A": Script(matches=[study("1.2.1")])})
    query_id = harness.accept(config)
    assert [m.name for m in harness.broker.drop_ready()] == [PLAN_SPAN]  # the first plan message was lost
    assert sweep(harness.rt)["replanned"] == 0
    harness.clock.advance(21)
    assert sweep(harness.rt) == {"finalised": 0, "replanned": 1, "purged": 0, "expired_live_keys": 0}
    assert harness.broker.ready() == [Message(PLAN_SPAN, (query_id,), None)]
    assert sweep(harness.rt)["replanned"] == 0  # at most once per REPLAN_AFTER, not at every sweep
    harness.drain()
    assert describe_span(harness.rt, query_id)["status"] == "completed"
    assert sweep(harness.rt)["replanned"] == 0


def test_the_sweep_purges_results_past_retention_and_keeps_the_query_log(harness):
    config = harness.add_config("purge", {"A": Script(matches=[study("1.2.1")])})
    query_id = harness.accept(config)
    harness.drain()
    assert sweep(harness.rt, purge=True)["purged"] == 0
    harness.clock.advance(timedelta(days=7).total_seconds() + 60)
    assert sweep(harness.rt, purge=True) == {"finalised": 0, "replanned": 0, "purged": 1, "expired_live_keys": 0}
    assert harness.kept_result(query_id) is None and harness.query_log(query_id).status.value == "completed"
    harness.flush_redis()
    view = describe_span(harness.rt, query_id)
    assert view["status"] == "completed" and view["results_expired"] and view["results"] == []
    assert statuses(view) == {"A": "ok"} and view["total_results"] == 1


# --- cache and circuit breaker -----------------------------------------------------------------------------------

def test_a_repeated_query_is_answered_from_the_result_cache_without_querying(harness):
    config = harness.add_config("cached", {"A": Script(matches=[study("1.2.1")]),
                                           "B": Script(matches=[study("1.2.2")])}, cache_ttl_seconds=60)
    first = harness.accept(config, {"PatientID": "P1"})
    harness.drain()
    queried = len(harness.broker.sent(QUERY_SOURCE))
    second = harness.accept(config, {"PatientID": "P1"})
    harness.drain()
    assert len(harness.broker.sent(QUERY_SOURCE)) == queried == 2
    one, two = describe_span(harness.rt, first), describe_span(harness.rt, second)
    assert two["status"] == "completed" and two["results"] == one["results"] and two["execution_time_ms"] == 0
    assert harness.query_log(second).status.value == "completed"
    third = harness.accept(config, {"PatientID": "P2"})  # another question: not the cached answer
    harness.drain()
    assert len(harness.broker.sent(QUERY_SOURCE)) == 4 and describe_span(harness.rt, third)["status"] == "completed"


def test_an_archive_failing_spans_in_a_row_is_skipped_until_its_cool_down_ends(harness):
    harness.rt.breaker = BreakerPolicy(failure_threshold=2, cooldown_seconds=60)
    config = harness.add_config("breaker", {"UP": Script(matches=[study("1.2.1")]),
                                            "DOWN": Script(query_failure="0xC000")})

    def span() -> dict:
        query_id = harness.accept(config)
        harness.drain()
        return describe_span(harness.rt, query_id)

    assert [statuses(span())["DOWN"] for _ in range(2)] == ["failed", "failed"]
    skipped = span()
    assert skipped["status"] == "partial" and statuses(skipped) == {"UP": "ok", "DOWN": "skipped"}
    assert sources_of(skipped)["DOWN"]["error"].startswith("circuit open after 2 consecutive failures")
    assert (skipped["sources_queried"], harness.port.attempts("DOWN")) == (1, 2)
    harness.clock.advance(61)  # cool-down over: asked again
    assert statuses(span())["DOWN"] == "failed" and harness.port.attempts("DOWN") == 3


# --- accepting -----------------------------------------------------------------------------------------------------

@pytest.mark.parametrize("request_fields, status_code, message", [
    ({"config_id": 999}, 404, "spanner_config_id: no spanner config 999"),
    ({"config_id": None, "config_name": "nope"}, 404, "spanner_config: no spanner config 'nope'"),
    ({"config_name": "valid"}, 422, "give exactly one of spanner_config_id or spanner_config"),
    ({"query_level": "SERIESX"}, 422, "query_level: invalid query level 'SERIESX'"),
    ({"query_type": "C-STORE"}, 422, "invalid query_type 'C-STORE'"),
    ({"query_type": "C-MOVE"}, 422, "query_type: C-MOVE is not spanned by the coordinator; use C-FIND"),
    ({"keys": ["PatientID"]}, 422, "body: the query keys must be a JSON object, got list"),
    ({"keys": {"NoSuchKeyword": "x"}}, 422, "NoSuchKeyword"),
    ({"keys": {f"0009{i:04X}": "" for i in range(65)}}, 422, "body: at most 64 query keys"),
])
def test_invalid_requests_are_refused_naming_the_field_and_leave_no_trace(harness, request_fields, status_code,
                                                                          message):
    config = harness.add_config("valid", {"A": Script()})
    fields = {"config_id": config, "config_name": None, "query_type": "C-FIND", "query_level": "STUDY",
              "keys": {}, **request_fields}
    with pytest.raises(SpanRequestError) as refused:
        accept_span(harness.rt, **fields)
    assert refused.value.status_code == status_code and message in str(refused.value)
    with harness.rt.session_factory() as session:
        assert list_query_logs(session) == []
    assert harness.broker.sent() == []


def test_a_disabled_config_is_refused_with_409(harness):
    config = harness.add_config("off", {"A": Script()}, is_enabled=False)
    with pytest.raises(SpanRequestError) as refused:
        harness.accept(config)
    assert refused.value.status_code == 409 and str(refused.value) == "spanner config 'off' is disabled"


def test_a_query_the_broker_cannot_take_is_refused_with_503_and_closed(harness):
    config = harness.add_config("nobroker", {"A": Script()})
    harness.broker.down = ConnectionError("connection refused")
    with pytest.raises(SpanRequestError) as refused:
        harness.accept(config)
    assert refused.value.status_code == 503 and "connection refused" in str(refused.value)
    with harness.rt.session_factory() as session:
        (log,) = list_query_logs(session)
    assert log.status.value == "failed" and not log.is_open
    assert log.error_message == "not queued: the message broker is unavailable (connection refused)"
    assert describe_span(harness.rt, log.query_id)["status"] == "failed"


def test_the_purging_sweep_expires_span_keys_written_after_the_span_closed(harness):
    config = harness.add_config("late", {"A": Script(matches=[study("1.2.1")])})
    query_id = harness.accept(config)
    harness.drain()
    late = harness.rt.store._key(query_id, "m", "A", "2")
    harness.rt.store.add_answers(query_id, "A", 2, [{"0020000D": {"vr": "UI", "Value": ["1.2.9"]}}])
    assert harness.rt.store.redis.pttl(late) == -1  # a redelivered attempt's batch after the close
    assert sweep(harness.rt)["expired_live_keys"] == 0  # only the purging sweep (every 10 min) scans Redis
    assert sweep(harness.rt, purge=True)["expired_live_keys"] == 1
    assert 0 < harness.rt.store.redis.pttl(late)
