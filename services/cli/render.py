"""Turning span results into terminal tables and panels, or JSON (DICOM JSON matches + per-source outcomes)."""

from __future__ import annotations

from typing import Any, Iterable

from pydicom import Dataset
from rich.console import Console
from rich.markup import escape
from rich.table import Table

from shared.spanning.codec import result_to_dict
from shared.spanning.model import SourceOutcome, SourceStatus, SpanResult

STATUS_STYLE = {
    SourceStatus.OK: "green",
    SourceStatus.FAILED: "red",
    SourceStatus.TIMEOUT: "yellow",
    SourceStatus.CANCELLED: "magenta",
    SourceStatus.SKIPPED: "dim",
}
SPAN_STYLE = {"completed": "green", "partial": "yellow", "failed": "red", "cancelled": "magenta"}


def result_to_json(result: SpanResult) -> dict[str, Any]:
    """`axiom find --json`: the span's DICOM JSON matches (PS3.18 F) and every source's outcome."""
    data = result_to_dict(result)
    del data["match_keys"], data["match_sources"]  # the matches carry RetrieveAETitle; keys are an internal detail
    return data


def _cell(ds: Dataset, keyword: str) -> str:
    value = ds.get(keyword)
    if value is None or value == "":
        return ""
    if isinstance(value, (list, tuple)) or type(value).__name__ == "MultiValue":
        return escape("\\".join(str(v) for v in value))
    return escape(str(value))


def matches_table(result: SpanResult, columns: Iterable[str], *, limit: int | None = None) -> Table:
    """A table of merged matches with the requested columns and where each match lives."""
    columns = [c for c in columns if c not in ("QueryRetrieveLevel", "SpecificCharacterSet")]
    table = Table(title=f"{len(result.matches)} matches ({result.raw_count} before deduplication)", show_lines=False)
    for column in columns:
        table.add_column(column, overflow="fold")
    table.add_column("Sources", style="cyan")
    shown = result.matches if limit is None else result.matches[:limit]
    for match in shown:
        table.add_row(*(_cell(match.dataset, c) for c in columns), escape(", ".join(match.sources)))
    if limit is not None and len(result.matches) > limit:
        table.caption = f"{len(result.matches) - limit} more not shown (use --limit or --json)"
    return table


def sources_table(outcomes: Iterable[SourceOutcome]) -> Table:
    """One row per source: status, matches, latency, retries, and why it failed."""
    table = Table(title="Sources")
    for column in ("Source", "Status", "Matches", "Latency ms", "Retries", "Detail"):
        table.add_column(column, overflow="fold")
    for outcome in outcomes:
        style = STATUS_STYLE.get(outcome.status, "")
        detail = outcome.error or ""
        if outcome.truncated:
            detail = ("truncated; " + detail).rstrip("; ")
        table.add_row(
            escape(outcome.source),
            f"[{style}]{outcome.status.value}[/{style}]",
            str(outcome.match_count),
            f"{outcome.latency_ms:.0f}",
            str(outcome.retries),
            escape(detail),
        )
    return table


def print_span(console: Console, result: SpanResult, columns: Iterable[str], *, limit: int | None = None) -> None:
    """Matches table, sources table and a one-line verdict."""
    console.print(matches_table(result, columns, limit=limit))
    console.print(sources_table(result.outcomes))
    style = SPAN_STYLE.get(result.status.value, "")
    line = f"[{style}]{result.status.value}[/{style}] in {result.duration_ms:.0f} ms  query_id={result.query_id}"
    if result.error:
        line += f"  ({escape(result.error)})"
    console.print(line)
