"""Failure strategies, early stop, backoff and deadlines."""

from __future__ import annotations

import random

import pytest

from shared.spanning.model import FailureStrategy, SourceOutcome, SourceStatus, SpanPolicy, SpanStatus
from shared.spanning.policy import (
    backoff_delay, seconds_left, should_stop_early, source_deadline, span_deadline, span_status,
)

OK, FAILED, TIMEOUT, CANCELLED = SourceStatus.OK, SourceStatus.FAILED, SourceStatus.TIMEOUT, SourceStatus.CANCELLED


def outcomes(*statuses):
    return [SourceOutcome(f"s{i}", status) for i, status in enumerate(statuses)]


def policy(strategy, threshold=1):
    return SpanPolicy(failure_strategy=strategy, minimum_success_threshold=threshold)


@pytest.mark.parametrize("strategy", list(FailureStrategy))
def test_all_ok_is_completed_and_cancel_wins(strategy):
    assert span_status(outcomes(OK, OK), policy(strategy)) is SpanStatus.COMPLETED
    assert span_status(outcomes(OK, OK), policy(strategy), cancelled=True) is SpanStatus.CANCELLED
    assert span_status([], policy(strategy)) is SpanStatus.FAILED


def test_best_effort():
    best = policy(FailureStrategy.BEST_EFFORT)
    assert span_status(outcomes(OK, FAILED, TIMEOUT), best) is SpanStatus.PARTIAL
    assert span_status(outcomes(FAILED, TIMEOUT), best) is SpanStatus.FAILED


def test_fail_fast():
    fast = policy(FailureStrategy.FAIL_FAST)
    assert span_status(outcomes(OK, FAILED), fast) is SpanStatus.FAILED
    assert span_status(outcomes(OK, TIMEOUT), fast) is SpanStatus.FAILED
    assert should_stop_early(outcomes(OK, TIMEOUT), 3, fast)
    assert not should_stop_early(outcomes(OK, OK), 3, fast)


def test_minimum_threshold():
    two = policy(FailureStrategy.MINIMUM_THRESHOLD, 2)
    assert span_status(outcomes(OK, OK, FAILED), two) is SpanStatus.PARTIAL
    assert span_status(outcomes(OK, FAILED, FAILED), two) is SpanStatus.FAILED
    assert not should_stop_early(outcomes(FAILED), 2, two)
    assert should_stop_early(outcomes(FAILED, FAILED), 1, two)
    zero = policy(FailureStrategy.MINIMUM_THRESHOLD, 0)
    assert span_status(outcomes(FAILED), zero) is SpanStatus.PARTIAL


def test_best_effort_never_stops_early():
    assert not should_stop_early(outcomes(FAILED, FAILED), 1, policy(FailureStrategy.BEST_EFFORT))


def test_backoff_is_exponential_capped_and_deterministic():
    assert [backoff_delay(n, 0.5, cap_seconds=3.0) for n in range(1, 6)] == [0.5, 1.0, 2.0, 3.0, 3.0]
    assert backoff_delay(3, 1.0) == 4.0
    with pytest.raises(ValueError):
        backoff_delay(0, 1.0)


def test_backoff_jitter_stays_within_half_to_full_delay():
    rng = random.Random(7)
    delays = [backoff_delay(3, 1.0, rng=rng) for _ in range(200)]
    assert all(2.0 <= d <= 4.0 for d in delays) and len(set(delays)) > 100
    assert [backoff_delay(2, 1.0, rng=random.Random(1)) for _ in range(2)] == [backoff_delay(2, 1.0,
                                                                                             rng=random.Random(1))] * 2


def test_deadlines():
    end = span_deadline(100.0, SpanPolicy(query_timeout_seconds=30))
    assert end == 130.0
    assert source_deadline(110.0, 5.0, end) == 115.0
    assert source_deadline(128.0, 5.0, end) == 130.0
    assert source_deadline(110.0, None, end) == 130.0
    assert seconds_left(130.0, 131.0) == 0.0 and seconds_left(130.0, 129.5) == 0.5
