"""SpanResult <-> plain JSON-able data: what caches, the coordinator's API and `axiom find --json` carry.

Matches travel as DICOM JSON (PS3.18 Annex F) with their dedup key and holding sources; outcomes as dicts.
`result_from_dict(result_to_dict(r))` equals `r` for every field (datasets compared as DICOM JSON).
"""

from __future__ import annotations

from typing import Any

from shared.dicom.dicom_json import dataset_from_json, dataset_to_json
from shared.spanning.model import Match, SourceOutcome, SourceStatus, SpanResult, SpanStatus


def result_to_dict(result: SpanResult) -> dict[str, Any]:
    """The span as JSON-able data: DICOM JSON matches (with key and sources) and every source's outcome."""
    return {
        "query_id": result.query_id,
        "status": result.status.value,
        "raw_count": result.raw_count,
        "deduplicated_count": len(result.matches),
        "duration_ms": round(result.duration_ms, 1),
        "error": result.error,
        "sources": [outcome.as_dict() for outcome in result.outcomes],
        "matches": [dataset_to_json(match.dataset) for match in result.matches],
        "match_keys": [list(match.key) for match in result.matches],
        "match_sources": [list(match.sources) for match in result.matches],
    }


def result_from_dict(data: dict[str, Any]) -> SpanResult:
    """The SpanResult that `result_to_dict` made `data` from. KeyError/ValueError on anything else."""
    matches = tuple(
        Match(dataset=dataset_from_json(dataset), key=tuple(key), sources=tuple(sources))
        for dataset, key, sources in zip(data["matches"], data["match_keys"], data["match_sources"], strict=True)
    )
    outcomes = tuple(
        SourceOutcome(source=o["source"], status=SourceStatus(o["status"]), match_count=o["match_count"],
                      latency_ms=o["latency_ms"], retries=o["retries"], error=o["error"], truncated=o["truncated"])
        for o in data["sources"]
    )
    return SpanResult(query_id=data["query_id"], status=SpanStatus(data["status"]), matches=matches,
                      outcomes=outcomes, raw_count=data["raw_count"], duration_ms=data["duration_ms"],
                      error=data["error"])
