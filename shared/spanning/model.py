"""The spanning engine's vocabulary: requests, sources, policies, outcomes and results.

Everything here is a frozen dataclass or an enum, so a span's inputs and outputs can cross threads and processes
(the distributed mode serialises them) without surprises. Pure: stdlib and pydicom only.
"""

from __future__ import annotations

import uuid
from dataclasses import dataclass, field
from enum import Enum
from typing import Any, Mapping

from pydicom import Dataset

from shared.dicom.levels import InformationModel, QueryLevel


class FailureStrategy(str, Enum):
    """What a span does when sources fail."""

    FAIL_FAST = "FAIL_FAST"  # the first source failure fails the span; the others are cancelled at once
    BEST_EFFORT = "BEST_EFFORT"  # whatever succeeded is the answer (failed if nothing succeeded)
    MINIMUM_THRESHOLD = "MINIMUM_THRESHOLD"  # succeeds only with >= minimum_success_threshold ok sources


class DedupStrategy(str, Enum):
    """How matches with the same unique key from several sources become one."""

    FIRST_WINS = "FIRST_WINS"  # first arrival wins: results can stream
    MOST_COMPLETE = "MOST_COMPLETE"  # most non-empty attributes; ties go to the higher-priority source
    MERGE_ALL = "MERGE_ALL"  # union of attributes, conflicts by priority, multi-valued attributes unioned


class SourceStatus(str, Enum):
    """Per-source outcome of a span."""

    OK = "ok"
    FAILED = "failed"
    TIMEOUT = "timeout"
    CANCELLED = "cancelled"
    SKIPPED = "skipped"


class SpanStatus(str, Enum):
    """Overall outcome of a span."""

    COMPLETED = "completed"  # every source answered
    PARTIAL = "partial"  # some sources did not, but the failure strategy still succeeds
    FAILED = "failed"  # the failure strategy says the span failed
    CANCELLED = "cancelled"  # the caller cancelled

    @property
    def succeeded(self) -> bool:
        return self in (SpanStatus.COMPLETED, SpanStatus.PARTIAL)


@dataclass(frozen=True)
class SourceSpec:
    """One archive as the engine sees it.

    `kind` selects the QueryPort ("dimse", "dicomweb", ...); `connection` is the adapter's own validated
    connection config, opaque to the engine. `priority`: lower is preferred. `retrieve_ae_title` is what merged
    matches list in RetrieveAETitle (0008,0054) for this source (defaults to the name).
    """

    name: str
    kind: str
    connection: Any = None
    priority: int = 100
    timeout_seconds: float | None = None
    max_retries: int = 0
    retry_backoff_seconds: float = 0.5
    max_results: int | None = None
    retrieve_ae_title: str | None = None
    additional_filters: Mapping[str, str] = field(default_factory=dict)

    @property
    def ae_title_for_retrieve(self) -> str:
        return (self.retrieve_ae_title or self.name)[:16]


@dataclass(frozen=True)
class SpanPolicy:
    """The spanner config's rules for one span."""

    failure_strategy: FailureStrategy = FailureStrategy.BEST_EFFORT
    minimum_success_threshold: int = 1
    dedup_strategy: DedupStrategy = DedupStrategy.MOST_COMPLETE
    max_concurrent_sources: int = 8
    query_timeout_seconds: float = 30.0

    def __post_init__(self) -> None:
        if self.max_concurrent_sources < 1:
            raise ValueError("max_concurrent_sources must be at least 1")
        if self.query_timeout_seconds <= 0:
            raise ValueError("query_timeout_seconds must be positive")
        if self.minimum_success_threshold < 0:
            raise ValueError("minimum_success_threshold must not be negative")


@dataclass(frozen=True)
class SpanRequest:
    """A query to span: level, information model and the identifier (matching and return keys).

    The identifier carries no QueryRetrieveLevel; adapters add what their protocol needs.
    """

    level: QueryLevel
    identifier: Dataset
    model: InformationModel = InformationModel.STUDY_ROOT
    query_id: str = field(default_factory=lambda: uuid.uuid4().hex)
    query_type: str = "C-FIND"


@dataclass(frozen=True)
class SourceOutcome:
    """How one source did in a span."""

    source: str
    status: SourceStatus
    match_count: int = 0
    latency_ms: float = 0.0
    retries: int = 0
    error: str | None = None
    truncated: bool = False

    def as_dict(self) -> dict[str, Any]:
        return {
            "source": self.source,
            "status": self.status.value,
            "match_count": self.match_count,
            "latency_ms": round(self.latency_ms, 1),
            "retries": self.retries,
            "error": self.error,
            "truncated": self.truncated,
        }


@dataclass(frozen=True)
class Match:
    """One merged, deduplicated match: its dataset, its dedup key and the sources that hold it (by priority)."""

    dataset: Dataset
    key: tuple[str, ...]
    sources: tuple[str, ...]


@dataclass(frozen=True)
class SpanResult:
    """The answer of a span: merged matches, every source's outcome and the counts.

    `raw_count` is the matches received before deduplication, each source's distinct keys counted once (what a
    source sends again after a retry is not counted twice).
    """

    query_id: str
    status: SpanStatus
    matches: tuple[Match, ...]
    outcomes: tuple[SourceOutcome, ...]
    raw_count: int
    duration_ms: float
    error: str | None = None

    @property
    def datasets(self) -> list[Dataset]:
        return [m.dataset for m in self.matches]

    @property
    def failed_sources(self) -> list[str]:
        return [o.source for o in self.outcomes if o.status is not SourceStatus.OK]


@dataclass(frozen=True)
class FindSummary:
    """What a QueryPort returns (as the generator's return value) once its matches are exhausted."""

    truncated: bool = False
    warning: str | None = None
