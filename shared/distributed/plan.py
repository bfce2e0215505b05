"""A distributed span's plan as plain data (what Redis keeps), and back into the engine's types.

The plan carries no connection details (no passwords or tokens in Redis): a source worker loads its source's
connection from the database by config id and source name.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from shared.dicom.dicom_json import dataset_from_json, dataset_to_json
from shared.dicom.levels import InformationModel, QueryLevel
from shared.span_client import health_key
from shared.spanning.model import DedupStrategy, FailureStrategy, SourceSpec, SpanPolicy, SpanRequest


@dataclass(frozen=True)
class PlannedSource:
    """One source of the plan: what the merge and the status need (no connection)."""

    name: str
    kind: str
    priority: int
    timeout_seconds: float | None
    retrieve_ae_title: str | None
    health_key: str | None = None  # where its SourceHealth is cached (shared.span_client.health_key; no secrets)

    def spec(self) -> SourceSpec:
        """A connection-less SourceSpec, for merging (priority, RetrieveAETitle) and reporting."""
        return SourceSpec(name=self.name, kind=self.kind, priority=self.priority,
                          timeout_seconds=self.timeout_seconds, retrieve_ae_title=self.retrieve_ae_title)


@dataclass(frozen=True)
class Plan:
    """Everything a distributed span decides from, fixed when a worker planned it."""

    query_id: str
    config_id: int | None
    config_name: str | None
    request: SpanRequest
    policy: SpanPolicy
    sources: tuple[PlannedSource, ...]  # every source of the config, lower priority first
    skipped: dict[str, str]  # source -> why it is not queried (open circuit breaker)
    accepted_at: float  # wall-clock seconds
    deadline: float  # wall-clock seconds: the span is finalised by then
    cache_key: str | None = None
    cache_ttl_seconds: float = 0.0

    @property
    def queried(self) -> list[PlannedSource]:
        """The sources to query, in launch order (priority, then config order)."""
        return [source for source in self.sources if source.name not in self.skipped]

    def source(self, name: str) -> PlannedSource | None:
        return next((source for source in self.sources if source.name == name), None)

    def to_dict(self) -> dict[str, Any]:
        return {
            "query_id": self.query_id, "config_id": self.config_id, "config_name": self.config_name,
            "level": self.request.level.value, "model": self.request.model.value,
            "query_type": self.request.query_type, "identifier": dataset_to_json(self.request.identifier),
            "policy": {"failure_strategy": self.policy.failure_strategy.value,
                       "minimum_success_threshold": self.policy.minimum_success_threshold,
                       "dedup_strategy": self.policy.dedup_strategy.value,
                       "max_concurrent_sources": self.policy.max_concurrent_sources,
                       "query_timeout_seconds": self.policy.query_timeout_seconds},
            "sources": [vars(source) for source in self.sources],
            "skipped": dict(self.skipped), "accepted_at": self.accepted_at, "deadline": self.deadline,
            "cache_key": self.cache_key, "cache_ttl_seconds": self.cache_ttl_seconds,
        }

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> "Plan":
        policy = data["policy"]
        request = SpanRequest(level=QueryLevel(data["level"]), identifier=dataset_from_json(data["identifier"]),
                              model=InformationModel(data["model"]), query_id=data["query_id"],
                              query_type=data["query_type"])
        return cls(
            query_id=data["query_id"], config_id=data["config_id"], config_name=data["config_name"],
            request=request,
            policy=SpanPolicy(failure_strategy=FailureStrategy(policy["failure_strategy"]),
                              minimum_success_threshold=policy["minimum_success_threshold"],
                              dedup_strategy=DedupStrategy(policy["dedup_strategy"]),
                              max_concurrent_sources=policy["max_concurrent_sources"],
                              query_timeout_seconds=policy["query_timeout_seconds"]),
            sources=tuple(PlannedSource(**source) for source in data["sources"]),
            skipped=dict(data["skipped"]), accepted_at=data["accepted_at"], deadline=data["deadline"],
            cache_key=data.get("cache_key"), cache_ttl_seconds=data.get("cache_ttl_seconds", 0.0),
        )


def planned_source(spec: SourceSpec) -> PlannedSource:
    """The plan's view of a configured source."""
    return PlannedSource(name=spec.name, kind=spec.kind, priority=spec.priority,
                         timeout_seconds=spec.timeout_seconds, retrieve_ae_title=spec.retrieve_ae_title,
                         health_key=health_key(spec))
