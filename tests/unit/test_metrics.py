"""shared.metrics: what a finished span adds to the span and source families, and the shared (Redis) encoding."""

from __future__ import annotations

import pytest

from shared.metrics import SharedSpanMetrics, span_observations
from shared.spanning.model import SourceOutcome, SourceStatus, SpanResult, SpanStatus


def result(*outcomes: SourceOutcome, duration_ms: float = 1500.0) -> SpanResult:
    return SpanResult(query_id="q", status=SpanStatus.PARTIAL, matches=(), outcomes=outcomes, raw_count=0,
                      duration_ms=duration_ms)


OUTCOMES = (SourceOutcome("A", SourceStatus.OK, latency_ms=200.0),
            SourceOutcome("B", SourceStatus.TIMEOUT, latency_ms=5000.0),
            SourceOutcome("C", SourceStatus.SKIPPED), SourceOutcome("D", SourceStatus.CANCELLED))


def test_asked_sources_have_a_latency_and_failures_are_counted_by_status():
    found = span_observations(result(*OUTCOMES), "C-FIND")
    assert found == [("axiom_spans", ("partial", "C-FIND"), 1.0), ("axiom_span_duration_seconds", ("C-FIND",), 1.5),
                     ("axiom_source_query_duration_seconds", ("A",), 0.2),
                     ("axiom_source_query_duration_seconds", ("B",), 5.0),
                     ("axiom_source_failures", ("B", "timeout"), 1.0), ("axiom_source_failures", ("C", "skipped"), 1.0)]


def test_a_cache_hit_counts_the_span_but_asks_no_source_and_no_type_is_unknown():
    assert span_observations(result(*OUTCOMES, duration_ms=0.0), None, cache_hit=True) == [
        ("axiom_spans", ("partial", "unknown"), 1.0), ("axiom_span_duration_seconds", ("unknown",), 0.0)]


class FakeRedis:
    """The hash commands SharedSpanMetrics uses (HINCRBY, HINCRBYFLOAT, HGETALL through a pipeline)."""

    def __init__(self) -> None:
        self.hashes: dict[str, dict[str, float]] = {}

    def pipeline(self, transaction: bool = False) -> "FakeRedis":
        return self

    def hincrby(self, key: str, field: str, amount: float) -> None:
        bucket = self.hashes.setdefault(key, {})
        bucket[field] = bucket.get(field, 0) + amount

    hincrbyfloat = hincrby

    def execute(self) -> None:
        pass

    def hgetall(self, key: str) -> dict[str, str]:
        return {field: str(value) for field, value in self.hashes.get(key, {}).items()}


def test_shared_metrics_render_cumulative_histograms_and_counters():
    shared = SharedSpanMetrics(FakeRedis(), "axiom:metrics:spans")
    shared.record(result(*OUTCOMES), "C-FIND")
    shared.record(result(*OUTCOMES, duration_ms=40.0), "C-FIND")
    samples = {(s.name, tuple(sorted(s.labels.items()))): s.value for family in shared.collect()
               for s in family.samples}
    assert samples[("axiom_spans_total", (("query_type", "C-FIND"), ("status", "partial")))] == 2
    assert samples[("axiom_span_duration_seconds_bucket", (("le", "0.05"), ("query_type", "C-FIND")))] == 1
    assert samples[("axiom_span_duration_seconds_bucket", (("le", "2.5"), ("query_type", "C-FIND")))] == 2
    assert samples[("axiom_span_duration_seconds_count", (("query_type", "C-FIND"),))] == 2
    assert samples[("axiom_span_duration_seconds_sum", (("query_type", "C-FIND"),))] == pytest.approx(1.54)
    assert samples[("axiom_source_failures_total", (("source", "B"), ("status", "timeout")))] == 2
