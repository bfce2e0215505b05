"""Failure strategies, retry backoff and deadline arithmetic for a span. Pure functions, no clocks of their own.

Status rules (`span_status`):

* the caller cancelled → CANCELLED, whatever the sources did;
* the strategy succeeds → COMPLETED when every source is `ok`, else PARTIAL;
* otherwise FAILED.

A strategy succeeds when:

* FAIL_FAST — no source failed or timed out, and at least one is ok (cancelled/skipped sources do not count as
  failures: the engine only cancels sources *because* of a failure or the caller);
* BEST_EFFORT — at least one source is ok (zero successful sources = FAILED, also when there are no sources);
* MINIMUM_THRESHOLD — at least `minimum_success_threshold` sources are ok. A threshold of 0 is honoured
  literally (the span succeeds with no answer at all); with no sources the span is FAILED for every strategy.
"""

from __future__ import annotations

import random
from typing import Iterable, Sequence

from shared.spanning.model import FailureStrategy, SourceOutcome, SourceStatus, SpanPolicy, SpanStatus

FAILURES = frozenset({SourceStatus.FAILED, SourceStatus.TIMEOUT})
DEFAULT_BACKOFF_CAP_SECONDS = 30.0


def ok_count(outcomes: Iterable[SourceOutcome]) -> int:
    """Number of sources that answered."""
    return sum(1 for outcome in outcomes if outcome.status is SourceStatus.OK)


def strategy_succeeds(outcomes: Iterable[SourceOutcome], policy: SpanPolicy) -> bool:
    """Whether the failure strategy accepts these final outcomes (module doc)."""
    outcomes = list(outcomes)
    if not outcomes:
        return False
    ok = ok_count(outcomes)
    strategy = policy.failure_strategy
    if strategy is FailureStrategy.FAIL_FAST:
        return ok >= 1 and not any(outcome.status in FAILURES for outcome in outcomes)
    if strategy is FailureStrategy.MINIMUM_THRESHOLD:
        return ok >= policy.minimum_success_threshold
    return ok >= 1


def span_status(outcomes: Iterable[SourceOutcome], policy: SpanPolicy, cancelled: bool = False) -> SpanStatus:
    """The overall status of a span from every source's final outcome (module doc)."""
    if cancelled:
        return SpanStatus.CANCELLED
    outcomes = list(outcomes)
    if not strategy_succeeds(outcomes, policy):
        return SpanStatus.FAILED
    return SpanStatus.COMPLETED if ok_count(outcomes) == len(outcomes) else SpanStatus.PARTIAL


def span_error(status: SpanStatus, outcomes: Sequence[SourceOutcome], policy: SpanPolicy,
               cancelled: bool = False) -> str | None:
    """The span's error text: None when it succeeded, else why (the caller cancelled, no sources, or which
    sources failed under which strategy)."""
    if status.succeeded:
        return None
    if cancelled:
        return "cancelled by the caller"
    if not outcomes:
        return "no sources to query"
    failed = [f"{o.source}: {o.status.value} ({o.error})" for o in outcomes if o.status in FAILURES]
    return f"{policy.failure_strategy.value}: {ok_count(outcomes)}/{len(outcomes)} sources ok; " + "; ".join(failed)


def should_stop_early(finished: Iterable[SourceOutcome], outstanding: int, policy: SpanPolicy) -> bool:
    """True when the span's fate is sealed as a failure, so the outstanding sources should be cancelled.

    FAIL_FAST: as soon as one source failed or timed out. MINIMUM_THRESHOLD: when even if all `outstanding`
    sources answered, the threshold could not be reached. BEST_EFFORT never stops early (any later success counts).
    """
    finished = list(finished)
    strategy = policy.failure_strategy
    if strategy is FailureStrategy.FAIL_FAST:
        return any(outcome.status in FAILURES for outcome in finished)
    if strategy is FailureStrategy.MINIMUM_THRESHOLD:
        return ok_count(finished) + outstanding < policy.minimum_success_threshold
    return False


def backoff_delay(
    retry: int,
    base_seconds: float,
    *,
    cap_seconds: float = DEFAULT_BACKOFF_CAP_SECONDS,
    rng: random.Random | None = None,
) -> float:
    """Seconds to wait before retry number `retry` (1-based): base * 2**(retry-1), capped at `cap_seconds`.

    Deterministic unless `rng` is given, then "equal jitter": a uniform value in [delay/2, delay].
    """
    if retry < 1:
        raise ValueError("retry numbers start at 1")
    delay = min(cap_seconds, max(0.0, base_seconds) * (2.0 ** (retry - 1)))
    if rng is not None:
        delay = delay / 2 + rng.random() * delay / 2
    return delay


def span_deadline(started_at: float, policy: SpanPolicy) -> float:
    """When the whole span must be over (clock seconds): start + query_timeout_seconds."""
    return started_at + policy.query_timeout_seconds


def source_deadline(source_started_at: float, timeout_seconds: float | None, span_end: float) -> float:
    """When one source must be over: its own timeout counted from its start, never past the span's deadline."""
    if timeout_seconds is None or timeout_seconds <= 0:
        return span_end
    return min(span_end, source_started_at + timeout_seconds)


def seconds_left(deadline: float, now: float) -> float:
    """Time to `deadline`, never negative."""
    return max(0.0, deadline - now)
