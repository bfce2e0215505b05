"""Circuit-breaker rules (shared.spanning.health)."""

from __future__ import annotations

from shared.spanning.health import BreakerPolicy, SourceHealth, record_outcome, skip_reason
from shared.spanning.model import SourceOutcome, SourceStatus

POLICY = BreakerPolicy(failure_threshold=3, cooldown_seconds=60)


def outcome(status: SourceStatus, error: str | None = None) -> SourceOutcome:
    return SourceOutcome(source="PACS", status=status, latency_ms=12.0, error=error)


def test_the_breaker_opens_at_the_threshold_and_a_success_closes_it():
    health = SourceHealth()
    for expected_open in (False, False, True):
        health = record_outcome(health, outcome(SourceStatus.TIMEOUT, "no response"), POLICY, now=100.0)
        assert (skip_reason(health, now=100.0) is not None) is expected_open
    assert skip_reason(health, now=159.0) is not None and skip_reason(health, now=160.0) is None
    health = record_outcome(health, outcome(SourceStatus.OK), POLICY, now=170.0)
    assert health == SourceHealth(last_latency_ms=12.0)


def test_cancelled_and_skipped_say_nothing_about_the_source():
    health = SourceHealth(consecutive_failures=2, open_until=50.0, last_error="x")
    for status in (SourceStatus.CANCELLED, SourceStatus.SKIPPED):
        assert record_outcome(health, outcome(status), POLICY, now=10.0) == health


def test_a_zero_threshold_never_opens_and_health_round_trips_as_a_dict():
    health = SourceHealth()
    for _ in range(10):
        health = record_outcome(health, outcome(SourceStatus.FAILED), BreakerPolicy(failure_threshold=0), now=1.0)
    assert skip_reason(health, now=1.0) is None and health.consecutive_failures == 10
    assert SourceHealth.from_dict(health.as_dict()) == health and SourceHealth.from_dict(None) == SourceHealth()
