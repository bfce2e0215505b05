"""The spanning engine against scripted ports: concurrency, deadlines, failure strategies, retries, streaming."""

from __future__ import annotations

import threading
import time

import pytest
from pydicom import Dataset

from shared.adapters.executor import ThreadExecutor
from shared.dicom.levels import QueryLevel
from shared.spanning.engine import run_span, stream_span
from shared.spanning.model import (
    DedupStrategy, FailureStrategy, Match, SourceOutcome, SourceSpec, SourceStatus, SpanPolicy, SpanRequest,
    SpanResult, SpanStatus,
)
from shared.spanning.ports import CancelToken
from tests.fakes.ports import Script, ScriptedPort, study


@pytest.fixture
def executor():
    pool = ThreadExecutor(max_workers=32)
    yield pool
    pool.shutdown()


def request() -> SpanRequest:
    identifier = Dataset()
    identifier.StudyInstanceUID = ""
    identifier.PatientName = "*"
    return SpanRequest(QueryLevel.STUDY, identifier)


def span(port, sources, executor, **policy):
    return run_span(request(), sources, ports={"fake": port}, executor=executor, policy=SpanPolicy(**policy))


def spec(name, **kwargs) -> SourceSpec:
    return SourceSpec(name, "fake", **kwargs)


def by_name(result: SpanResult) -> dict[str, SourceOutcome]:
    return {o.source: o for o in result.outcomes}


def test_all_sources_ok_is_completed_and_merged(executor):
    port = ScriptedPort({"a": Script([study("1"), study("2")]), "b": Script([study("2"), study("3")])})
    result = span(port, [spec("a", priority=1), spec("b", priority=2)], executor)
    assert result.status is SpanStatus.COMPLETED and result.error is None
    assert [m.key for m in result.matches] == [("1",), ("2",), ("3",)]
    assert result.matches[1].sources == ("a", "b") and result.raw_count == 4
    assert by_name(result)["a"].match_count == 2 and by_name(result)["b"].status is SourceStatus.OK


def test_concurrency_is_bounded_by_the_engine(executor):
    port = ScriptedPort({f"s{i}": Script([study(str(i))], first_delay=0.05) for i in range(8)})
    result = span(port, [spec(f"s{i}") for i in range(8)], executor, max_concurrent_sources=3)
    assert result.status is SpanStatus.COMPLETED and len(result.matches) == 8
    assert port.max_active == 3  # the limit is reached and never exceeded (executor has 32 threads)


def test_per_source_timeout_counts_from_the_source_start(executor):
    port = ScriptedPort({"slow": Script([study("1")], first_delay=2.0), "fast": Script([study("2")])})
    started = time.monotonic()
    result = span(port, [spec("slow", timeout_seconds=0.2), spec("fast")], executor)
    elapsed = time.monotonic() - started
    outcome = by_name(result)["slow"]
    assert outcome.status is SourceStatus.TIMEOUT and "source timeout" in outcome.error
    assert 0.15 <= elapsed < 1.0 and 150 <= outcome.latency_ms < 1000
    assert result.status is SpanStatus.PARTIAL and [m.key for m in result.matches] == [("2",)]
    time.sleep(0.05)
    assert port.cancel_observed("slow")


def test_overall_deadline_times_out_running_and_unstarted_sources(executor):
    port = ScriptedPort({"hung": Script(hang=True), "ok": Script([study("1")]), "late": Script([study("2")])})
    started = time.monotonic()
    result = span(port, [spec("ok", priority=1), spec("hung", priority=2), spec("late", priority=3)], executor,
                  query_timeout_seconds=0.3, max_concurrent_sources=1)
    elapsed = time.monotonic() - started
    assert 0.25 <= elapsed < 1.0
    outcomes = by_name(result)
    assert outcomes["ok"].status is SourceStatus.OK
    assert outcomes["hung"].status is SourceStatus.TIMEOUT and "query deadline" in outcomes["hung"].error
    assert outcomes["late"].status is SourceStatus.TIMEOUT and "not started" in outcomes["late"].error
    assert port.attempts("late") == 0 and result.status is SpanStatus.PARTIAL


def test_fail_fast_returns_promptly_while_another_source_hangs(executor):
    port = ScriptedPort({"hung": Script(hang=True, hang_seconds=10), "bad": Script(query_failure="C-FIND 0xC001",
                                                                                  first_delay=0.05)})
    started = time.monotonic()
    result = span(port, [spec("hung"), spec("bad")], executor, failure_strategy=FailureStrategy.FAIL_FAST)
    assert time.monotonic() - started < 0.5
    assert result.status is SpanStatus.FAILED and "bad" in result.error
    outcomes = by_name(result)
    assert outcomes["bad"].status is SourceStatus.FAILED and "0xC001" in outcomes["bad"].error
    assert outcomes["hung"].status is SourceStatus.CANCELLED


def test_fail_fast_cancels_sources_not_yet_started(executor):
    port = ScriptedPort({"bad": Script(query_failure="refused"), "next": Script([study("1")])})
    result = span(port, [spec("bad", priority=1), spec("next", priority=2)], executor,
                  failure_strategy=FailureStrategy.FAIL_FAST, max_concurrent_sources=1)
    assert by_name(result)["next"].status is SourceStatus.CANCELLED and port.attempts("next") == 0


def test_retries_only_on_transport_errors(executor):
    port = ScriptedPort({
        "flaky": Script([study("1")], transport_failures=2),
        "down": Script(transport_failures=99),
        "refuses": Script(query_failure="bad query"),
    })
    sources = [spec(name, max_retries=2, retry_backoff_seconds=0.01) for name in ("flaky", "down", "refuses")]
    result = span(port, sources, executor)
    outcomes = by_name(result)
    assert outcomes["flaky"].status is SourceStatus.OK and outcomes["flaky"].retries == 2
    assert port.attempts("flaky") == 3
    assert outcomes["down"].status is SourceStatus.FAILED and outcomes["down"].retries == 2
    assert port.attempts("down") == 3 and "transport error" in outcomes["down"].error
    assert outcomes["refuses"].retries == 0 and port.attempts("refuses") == 1
    assert result.status is SpanStatus.PARTIAL


def test_minimum_threshold(executor):
    scripts = {"a": Script([study("1")]), "b": Script([study("2")]), "c": Script(query_failure="no")}
    port = ScriptedPort(scripts)
    sources = [spec("a"), spec("b"), spec("c")]
    ok = span(port, sources, executor, failure_strategy=FailureStrategy.MINIMUM_THRESHOLD,
              minimum_success_threshold=2)
    assert ok.status is SpanStatus.PARTIAL
    failed = span(port, sources, executor, failure_strategy=FailureStrategy.MINIMUM_THRESHOLD,
                  minimum_success_threshold=3)
    assert failed.status is SpanStatus.FAILED and "2/3 sources ok" in failed.error


def test_minimum_threshold_stops_once_unreachable(executor):
    port = ScriptedPort({"bad": Script(query_failure="no"), "hung": Script(hang=True)})
    started = time.monotonic()
    result = span(port, [spec("bad"), spec("hung")], executor, failure_strategy=FailureStrategy.MINIMUM_THRESHOLD,
                  minimum_success_threshold=2)
    assert time.monotonic() - started < 0.5 and result.status is SpanStatus.FAILED
    assert by_name(result)["hung"].status is SourceStatus.CANCELLED


def test_best_effort_with_no_success_fails(executor):
    port = ScriptedPort({"a": Script(query_failure="x"), "b": Script(error=RuntimeError("adapter bug"))})
    result = span(port, [spec("a"), spec("b")], executor)
    assert result.status is SpanStatus.FAILED
    assert by_name(result)["b"].error == "RuntimeError: adapter bug"


def test_streaming_first_wins_delivers_before_the_slow_source_finishes(executor):
    port = ScriptedPort({"fast": Script([study("1")]), "slow": Script([study("2")], first_delay=0.6)})
    events = stream_span(request(), [spec("fast"), spec("slow")], ports={"fake": port}, executor=executor,
                         policy=SpanPolicy(dedup_strategy=DedupStrategy.FIRST_WINS))
    started = time.monotonic()
    first = next(events)
    assert isinstance(first, Match) and first.key == ("1",) and time.monotonic() - started < 0.4
    rest = list(events)
    assert isinstance(rest[-1], SpanResult) and rest[-1].status is SpanStatus.COMPLETED
    kinds = [type(e).__name__ for e in rest[:-1]]
    assert kinds.count("SourceOutcome") == 2 and kinds.count("Match") == 1


def test_non_streaming_strategies_emit_matches_at_the_end(executor):
    port = ScriptedPort({"a": Script([study("1"), study("2")])})
    events = list(stream_span(request(), [spec("a")], ports={"fake": port}, executor=executor,
                              policy=SpanPolicy(dedup_strategy=DedupStrategy.MERGE_ALL)))
    assert [type(e).__name__ for e in events] == ["SourceOutcome", "Match", "Match", "SpanResult"]


def test_caller_cancel_returns_promptly(executor):
    port = ScriptedPort({"hung": Script(hang=True), "slow": Script([study("1")], first_delay=5)})
    token = CancelToken()
    threading.Timer(0.1, token.cancel).start()
    started = time.monotonic()
    result = run_span(request(), [spec("hung"), spec("slow")], ports={"fake": port}, executor=executor,
                      policy=SpanPolicy(), cancel=token)
    assert time.monotonic() - started < 0.5
    assert result.status is SpanStatus.CANCELLED
    assert {o.status for o in result.outcomes} == {SourceStatus.CANCELLED}


def test_non_dataset_output_fails_the_source(executor):
    port = ScriptedPort({"broken": Script([study("1"), {"not": "a dataset"}]), "ok": Script([study("2")])})
    result = span(port, [spec("broken"), spec("ok")], executor)
    outcome = by_name(result)["broken"]
    assert outcome.status is SourceStatus.FAILED and "dict, not a Dataset" in outcome.error
    assert result.status is SpanStatus.PARTIAL


def test_max_results_caps_and_truncates(executor):
    port = ScriptedPort({"big": Script([study(str(i)) for i in range(10)]), "exact": Script([study("9")])})
    result = span(port, [spec("big", max_results=3), spec("exact", max_results=1)], executor)
    outcomes = by_name(result)
    assert outcomes["big"].status is SourceStatus.OK and outcomes["big"].truncated
    assert outcomes["big"].match_count == 3 and port.calls_for("big")[0].closed_early
    assert not outcomes["exact"].truncated and result.raw_count == 4


def test_find_summary_truncated_and_warning(executor):
    port = ScriptedPort({"a": Script([study("1")], truncated=True, warning="0xB000")})
    outcome = span(port, [spec("a")], executor).outcomes[0]
    assert outcome.truncated and outcome.error == "warning: 0xB000" and outcome.status is SourceStatus.OK


def test_additional_filters_apply_to_a_copy(executor):
    port = ScriptedPort({"a": Script([study("1")]), "b": Script([study("1")])})
    req = request()
    run_span(req, [spec("a", additional_filters={"InstitutionName": "North"}), spec("b")], ports={"fake": port},
             executor=executor, policy=SpanPolicy())
    assert port.calls_for("a")[0].identifier.InstitutionName == "North"
    assert "InstitutionName" not in port.calls_for("b")[0].identifier and "InstitutionName" not in req.identifier


def test_unknown_port_kind_and_bad_filter_fail_only_that_source(executor):
    port = ScriptedPort({"a": Script([study("1")])})
    sources = [spec("a"), SourceSpec("x", "nope"), spec("f", additional_filters={"NotAKeyword": "1"})]
    result = span(port, sources, executor)
    outcomes = by_name(result)
    assert "no query port" in outcomes["x"].error and "NotAKeyword" in outcomes["f"].error
    assert result.status is SpanStatus.PARTIAL


def test_output_charset_is_normalised(executor):
    port = ScriptedPort({"a": Script([study("1", PatientName="Müller", SpecificCharacterSet="ISO_IR 100"),
                                      study("2", PatientName="Smith", SpecificCharacterSet="ISO_IR 100")])})
    result = span(port, [spec("a")], executor)
    assert result.matches[0].dataset.SpecificCharacterSet == "ISO_IR 192"
    assert "SpecificCharacterSet" not in result.matches[1].dataset


def test_duplicate_source_names_are_rejected(executor):
    with pytest.raises(ValueError):
        span(ScriptedPort(), [spec("a"), spec("a")], executor)


def test_no_sources_fails(executor):
    result = span(ScriptedPort(), [], executor)
    assert result.status is SpanStatus.FAILED and result.matches == ()


def test_engine_is_pure():
    import subprocess
    import sys

    code = ("import sys, shared.spanning.engine, shared.spanning.merge, shared.spanning.policy;"
            "bad = [m for m in ('pynetdicom', 'httpx', 'sqlalchemy', 'celery', 'fastapi') if m in sys.modules];"
            "print(bad); sys.exit(1 if bad else 0)")
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=60)
    assert done.returncode == 0, done.stdout + done.stderr


def test_unrequested_attributes_are_dropped_before_merging():
    """A QIDO-RS archive adds its default attributes; they must not make its answer 'more complete' than a DIMSE
    archive's that holds what was asked for (PS3.4 C.4.1.2.3)."""
    full = study("1.2.3", StudyDescription="XR HAND", AccessionNumber="A7")
    chatty = study("1.2.3", StudyDescription="", AccessionNumber="", StudyTime="101500", InstitutionName="X",
                   ReferringPhysicianName="Y^Z", NumberOfStudyRelatedInstances="4", StudyID="9")
    port = ScriptedPort({"DIMSE": Script(matches=[full]), "QIDO": Script(matches=[chatty])})
    identifier = Dataset()
    identifier.StudyInstanceUID, identifier.StudyDescription, identifier.AccessionNumber = "", "", ""
    sources = [SourceSpec("DIMSE", "fake", priority=1), SourceSpec("QIDO", "fake", priority=2)]
    for strategy in DedupStrategy:
        result = run_span(SpanRequest(level=QueryLevel.STUDY, identifier=identifier), sources,
                          ports={"fake": port}, executor=ThreadExecutor(), policy=SpanPolicy(dedup_strategy=strategy))
        (match,) = result.matches
        assert match.dataset.StudyDescription == "XR HAND" and match.dataset.AccessionNumber == "A7", strategy
        assert "InstitutionName" not in match.dataset and "StudyTime" not in match.dataset


def test_a_retry_after_partial_answers_does_not_count_them_twice():
    class DropsOnce(ScriptedPort):
        def find(self, request, source, cancel):
            first_attempt = not self.calls_for(source.name)
            stream = super().find(request, source, cancel)
            yield next(stream)
            if first_attempt:
                from shared.spanning.ports import TransportError
                raise TransportError("connection reset mid-answer")
            yield from stream

    port = DropsOnce({"A": Script(matches=[study("1.1"), study("1.2")])})
    identifier = Dataset()
    identifier.StudyInstanceUID = ""
    result = run_span(SpanRequest(level=QueryLevel.STUDY, identifier=identifier),
                      [SourceSpec("A", "fake", max_retries=1, retry_backoff_seconds=0.01)],
                      ports={"fake": port}, executor=ThreadExecutor(), policy=SpanPolicy())
    assert result.outcomes[0].retries == 1 and result.outcomes[0].match_count == 2
    assert result.raw_count == 2 and len(result.matches) == 2


def test_skipped_sources_are_reported_and_never_queried():
    port = ScriptedPort({"A": Script(matches=[study("1.1")]), "B": Script(matches=[study("1.2")])})
    identifier = Dataset()
    identifier.StudyInstanceUID = ""
    result = run_span(SpanRequest(level=QueryLevel.STUDY, identifier=identifier),
                      [SourceSpec("A", "fake"), SourceSpec("B", "fake")], ports={"fake": port},
                      executor=ThreadExecutor(), policy=SpanPolicy(), skip={"B": "circuit open"})
    assert [(o.source, o.status, o.error) for o in result.outcomes] == [
        ("A", SourceStatus.OK, None), ("B", SourceStatus.SKIPPED, "circuit open")]
    assert result.status is SpanStatus.PARTIAL and not port.calls_for("B")
