"""InProcessSpanClient: spans through injected ports, the result cache and the query log."""

from __future__ import annotations

from dataclasses import replace

from pydicom import Dataset

from shared.adapters.cache import MemoryCache
from shared.adapters.query_ports import QueryPorts
from shared.dicom.levels import QueryLevel
from shared.span_client import InProcessSpanClient
from shared.spanning.model import DedupStrategy, SourceSpec, SpanPolicy, SpanRequest, SpanResult, SpanStatus
from tests.fakes.clock import FakeClock
from tests.fakes.ports import Script, ScriptedPort, study


def request() -> SpanRequest:
    identifier = Dataset()
    identifier.StudyInstanceUID = ""
    return SpanRequest(level=QueryLevel.STUDY, identifier=identifier)


def client_with(scripts: dict[str, Script], cache: MemoryCache) -> tuple[InProcessSpanClient, ScriptedPort]:
    port = ScriptedPort(scripts)
    return InProcessSpanClient(ports_factory=lambda: QueryPorts({"fake": lambda: port}), cache=cache), port


def test_a_completed_span_is_answered_from_the_cache_within_the_ttl():
    clock = FakeClock()
    client, port = client_with({"A": Script(matches=[study("1.2.3")])}, MemoryCache(clock=clock))
    sources = [SourceSpec("A", "fake")]
    first = client.run(request(), sources, SpanPolicy(), cache_ttl_seconds=60)
    second_request = request()
    second = client.run(second_request, sources, SpanPolicy(), cache_ttl_seconds=60)
    assert len(port.calls) == 1
    assert second.query_id == second_request.query_id != first.query_id
    assert second.duration_ms == 0 and [m.key for m in second.matches] == [m.key for m in first.matches]
    clock.now += 61
    client.run(request(), sources, SpanPolicy(), cache_ttl_seconds=60)
    assert len(port.calls) == 2
    client.close()


def test_partial_spans_and_a_zero_ttl_are_never_cached():
    client, port = client_with({"A": Script(matches=[study("1.2.3")]), "B": Script(query_failure="0xC000")},
                               MemoryCache())
    sources = [SourceSpec("A", "fake"), SourceSpec("B", "fake")]
    assert client.run(request(), sources, SpanPolicy(), cache_ttl_seconds=60).status is SpanStatus.PARTIAL
    client.run(request(), sources, SpanPolicy(), cache_ttl_seconds=60)
    assert len(port.calls) == 4
    client.run(request(), sources[:1], SpanPolicy())
    client.run(request(), sources[:1], SpanPolicy())
    assert len(port.calls) == 6
    client.close()


def test_a_different_question_is_not_answered_from_another_questions_cache():
    client, port = client_with({"A": Script(matches=[study("1.2.3")])}, MemoryCache())
    sources = [SourceSpec("A", "fake")]
    client.run(request(), sources, SpanPolicy(), cache_ttl_seconds=60)
    other = request()
    other.identifier.StudyDate = "20240101"
    client.run(other, sources, SpanPolicy(), cache_ttl_seconds=60)
    assert len(port.calls) == 2
    client.close()


def test_an_abandoned_stream_is_closed_in_the_query_log(tmp_path):
    from shared.db.migrations import upgrade_to_head
    from shared.db.repo.query_logs import get_query_log
    from shared.db.session import make_engine, make_sessionmaker

    url = f"sqlite:///{tmp_path / 'axiom.db'}"
    upgrade_to_head(url)
    factory = make_sessionmaker(make_engine(url))
    port = ScriptedPort({"A": Script(matches=[study("1.2.3"), study("1.2.4")], per_match_delay=0.2)})
    client = InProcessSpanClient(ports_factory=lambda: QueryPorts({"fake": lambda: port}), session_factory=factory)
    span_request = request()
    events = client.stream(span_request, [SourceSpec("A", "fake")], SpanPolicy(dedup_strategy=DedupStrategy.FIRST_WINS))
    next(events)  # the first match streams out, then the caller walks away
    events.close()
    with factory() as session:
        row = get_query_log(session, query_id=span_request.query_id)
        assert row.status.value == "cancelled" and row.completed_at is not None
    client.close()


def test_the_cache_key_carries_no_secret():
    from shared.connections import DicomwebAuth, DicomwebConnection
    from shared.span_client import span_cache_key

    connection = DicomwebConnection(base_url="https://pacs.example/dicom-web",
                                    auth=DicomwebAuth(type="basic", username="u", password="s3cr3t-pw"))
    key = span_cache_key(request(), [SourceSpec("W", "dicomweb", connection)], SpanPolicy())
    assert "s3cr3t-pw" not in key and key.startswith("span:")


def test_an_archive_failing_spans_in_a_row_is_skipped_for_the_cool_down_then_tried_again():
    from shared.spanning.health import BreakerPolicy
    from shared.spanning.model import SourceStatus

    clock = FakeClock()
    port = ScriptedPort({"UP": Script(matches=[study("1.2.3")]), "DOWN": Script(query_failure="0xC000")})
    client = InProcessSpanClient(ports_factory=lambda: QueryPorts({"fake": lambda: port}), cache=MemoryCache(),
                                 breaker=BreakerPolicy(failure_threshold=2, cooldown_seconds=30), wall_clock=clock)
    sources = [SourceSpec("UP", "fake"), SourceSpec("DOWN", "fake")]

    def down_outcome():
        return {o.source: o for o in client.run(request(), sources, SpanPolicy()).outcomes}["DOWN"]

    assert down_outcome().status is SourceStatus.FAILED
    assert down_outcome().status is SourceStatus.FAILED  # second failure in a row: the breaker opens
    skipped = down_outcome()
    assert skipped.status is SourceStatus.SKIPPED and "circuit open after 2 consecutive failures" in skipped.error
    assert len(port.calls_for("DOWN")) == 2  # not asked while open
    clock.now += 31  # cool-down over: tried again, fails, and the breaker re-opens at once
    assert down_outcome().status is SourceStatus.FAILED and len(port.calls_for("DOWN")) == 3
    assert down_outcome().status is SourceStatus.SKIPPED
    assert client.source_health(sources[0]).consecutive_failures == 0
    client.close()


def _logged_client(tmp_path, scripts: dict[str, Script]):
    from shared.db.migrations import upgrade_to_head
    from shared.db.session import make_engine, make_sessionmaker

    url = f"sqlite:///{tmp_path / 'axiom.db'}"
    upgrade_to_head(url)
    factory = make_sessionmaker(make_engine(url))
    port = ScriptedPort(scripts)
    return InProcessSpanClient(ports_factory=lambda: QueryPorts({"fake": lambda: port}), session_factory=factory), \
        factory


def _log_row(factory, query_id: str):
    from shared.db.repo.query_logs import get_query_log

    with factory() as session:
        return get_query_log(session, query_id=query_id)


def test_a_deferred_completion_is_written_when_the_caller_runs_it(tmp_path):
    client, factory = _logged_client(tmp_path, {"A": Script(matches=[study("1.2.3")]), "B": Script(
        query_failure="0xC000")})
    later: list = []
    span_request = request()
    result = client.run(span_request, [SourceSpec("A", "fake"), SourceSpec("B", "fake")], SpanPolicy(),
                        defer=lambda fn, *args: later.append((fn, args)))
    assert result.status is SpanStatus.PARTIAL and len(later) == 1
    row = _log_row(factory, span_request.query_id)
    assert row.status.value == "running" and row.source_outcomes is None  # accepted before the answer, not yet done
    fn, args = later[0]
    fn(*args)
    row = _log_row(factory, span_request.query_id)
    assert row.status.value == "partial" and row.deduplicated_result_count == 1
    assert [(o["source"], o["status"]) for o in row.source_outcomes] == [("A", "ok"), ("B", "failed")]
    client.close()


def test_a_deferred_completion_that_fails_is_logged_not_raised(tmp_path, caplog):
    client, factory = _logged_client(tmp_path, {"A": Script(matches=[study("1.2.3")])})
    later: list = []
    client.run(request(), [SourceSpec("A", "fake")], SpanPolicy(), defer=lambda fn, *args: later.append((fn, args)))
    fn, (result,) = later[0]
    fn(replace(result, query_id="never-started"))  # no row to complete: LookupError inside
    assert [(r.getMessage(), r.query_id) for r in caplog.records if r.levelname == "ERROR"] == [
        ("query_log_write_failed", "never-started")]
    client.close()


def test_a_stream_closed_after_its_result_still_completes_the_query_log(tmp_path):
    client, factory = _logged_client(tmp_path, {"A": Script(matches=[study("1.2.3")])})
    span_request = request()
    events = client.stream(span_request, [SourceSpec("A", "fake")], SpanPolicy())
    for event in events:
        if isinstance(event, SpanResult):
            break  # the caller has what it needs and walks away without exhausting the stream
    events.close()
    row = _log_row(factory, span_request.query_id)
    assert row.status.value == "completed" and row.deduplicated_result_count == 1
    client.close()
