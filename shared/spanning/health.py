"""Source health and the circuit breaker: an archive that failed N spans in a row is skipped for a cool-down.

Pure: the state is a small frozen value that callers keep wherever suits them (the in-process span client keeps it
in its cache; the distributed mode keeps it in Redis, shared by every worker). Times are wall-clock seconds
(time.time()), so processes on different hosts agree on when a cool-down ends.

Rules:
* an `ok` outcome closes the breaker and resets the count (and records the latency);
* `failed` or `timeout` adds one consecutive failure; at `failure_threshold` the breaker opens for
  `cooldown_seconds`;
* after the cool-down the next span tries the source again ("half-open"): one more failure re-opens it at once,
  since the count is still at or above the threshold; a success closes it;
* `cancelled` and `skipped` say nothing about the source and change nothing.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass

from shared.spanning.model import SourceOutcome, SourceStatus

_FAILURES = frozenset({SourceStatus.FAILED, SourceStatus.TIMEOUT})


@dataclass(frozen=True)
class BreakerPolicy:
    """When to stop asking a failing archive, and for how long. A threshold of 0 disables the breaker."""

    failure_threshold: int = 5
    cooldown_seconds: float = 60.0


@dataclass(frozen=True)
class SourceHealth:
    """What the last spans said about one source."""

    consecutive_failures: int = 0
    open_until: float = 0.0
    last_latency_ms: float | None = None
    last_error: str | None = None

    def as_dict(self) -> dict:
        return asdict(self)

    @classmethod
    def from_dict(cls, data: dict | None) -> "SourceHealth":
        return cls(**data) if data else cls()


def record_outcome(health: SourceHealth, outcome: SourceOutcome, policy: BreakerPolicy, now: float) -> SourceHealth:
    """The source's health after one more span outcome (module doc)."""
    if outcome.status is SourceStatus.OK:
        return SourceHealth(last_latency_ms=outcome.latency_ms)
    if outcome.status not in _FAILURES:
        return health
    failures = health.consecutive_failures + 1
    opens = policy.failure_threshold > 0 and failures >= policy.failure_threshold
    return SourceHealth(consecutive_failures=failures,
                        open_until=now + policy.cooldown_seconds if opens else health.open_until,
                        last_latency_ms=health.last_latency_ms, last_error=outcome.error)


def skip_reason(health: SourceHealth, now: float) -> str | None:
    """Why the source must be skipped now (its breaker is open), or None to query it."""
    if now >= health.open_until:
        return None
    return (f"circuit open after {health.consecutive_failures} consecutive failures (last: {health.last_error}); "
            f"retried in {health.open_until - now:.0f} s")
