"""How `axiom span` shows a spanning query: the summary, the per-source table, a page of results and the live
per-source progress of `axiom span wait` (services/cli/span_cmd.py talks to the coordinator)."""

from __future__ import annotations

import json
import time
from typing import Any

import typer
from rich.console import Console
from rich.markup import escape
from rich.progress import Progress, SpinnerColumn, TextColumn
from rich.table import Table
from rich.text import Text

from services.cli.errors import err_console
from services.cli.render import SPAN_STYLE, STATUS_STYLE
from shared.dicom.dicom_json import dataset_from_json

ACTIVE = frozenset({"accepted", "running"})
SUCCEEDED = frozenset({"completed", "partial"})
SOURCE_STYLE = {**{status.value: style for status, style in STATUS_STYLE.items()}, "pending": "dim", "running": "cyan"}
SOURCE_MARK = {"ok": "[green]✓[/green]", "failed": "[red]✗[/red]", "timeout": "[yellow]✗[/yellow]"}
# Result columns, in this order, when present; other keywords only when none of these is (e.g. IMAGE level).
DEFAULT_COLUMNS = ("PatientName", "PatientID", "StudyDate", "StudyDescription", "ModalitiesInStudy", "Modality",
                   "SeriesNumber", "SeriesDescription", "InstanceNumber", "StudyInstanceUID", "SeriesInstanceUID",
                   "SOPInstanceUID", "RetrieveAETitle")
HIDDEN_COLUMNS = frozenset({"QueryRetrieveLevel", "SpecificCharacterSet"})
MAX_FALLBACK_COLUMNS = 8

console = Console()


class CoordinatorError(ValueError):
    """The coordinator refused a request or is unreachable; the message is one line for the user."""


def print_json(data: Any) -> None:
    """The coordinator's JSON, indented, on stdout."""
    typer.echo(json.dumps(data, ensure_ascii=False, indent=2))


def show_state(state: dict, *, as_json: bool) -> None:
    """A GET answer as the server's JSON (--json) or as the summary tables."""
    if as_json:
        print_json(state)
    else:
        print_summary(state)


def _styled(value: str | None, styles: dict[str, str]) -> str:
    value = value or "?"
    style = styles.get(value)
    return f"[{style}]{escape(value)}[/{style}]" if style else escape(value)


def _ms(value: Any) -> str:
    return f"{value:.0f}" if isinstance(value, (int, float)) else ""


def sources_table(sources: list[dict]) -> Table:
    """One row per source: status, matches, latency, retries, and why it failed."""
    table = Table(title="Sources")
    for column in ("Source", "Status", "Matches", "Latency ms", "Retries", "Detail"):
        table.add_column(column, overflow="fold")
    for source in sources:
        detail = source.get("error") or ""
        if source.get("truncated"):
            detail = ("truncated; " + detail).rstrip("; ")
        table.add_row(escape(str(source.get("source", "?"))), _styled(source.get("status"), SOURCE_STYLE),
                      str(source.get("match_count") or 0), _ms(source.get("latency_ms")),
                      str(source.get("retries") or 0), escape(detail))
    return table


def _cell(value: Any) -> str:
    if value is None or value == "":
        return ""
    if isinstance(value, (list, tuple)) or type(value).__name__ == "MultiValue":
        return escape("\\".join(str(v) for v in value))
    return escape(str(value))


def result_columns(datasets: list) -> list[str]:
    """DEFAULT_COLUMNS present in the results; failing those, the first keywords present (no sequences)."""
    present = dict.fromkeys(elem.keyword for ds in datasets for elem in ds
                            if elem.keyword and elem.VR != "SQ" and elem.keyword not in HIDDEN_COLUMNS)
    columns = [c for c in DEFAULT_COLUMNS if c in present]
    return columns or list(present)[:MAX_FALLBACK_COLUMNS]


def results_table(state: dict) -> Table | None:
    """The page of results as a table of DICOM keywords (None when the page is empty)."""
    try:
        datasets = [dataset_from_json(item) for item in state.get("results") or []]
    except ValueError as exc:
        raise CoordinatorError(f"the coordinator sent a malformed result: {exc}") from None
    if not datasets:
        return None
    offset, total = state.get("offset") or 0, state.get("total_results")
    table = Table(title=f"Results {offset + 1}-{offset + len(datasets)} of {total if total is not None else '?'}")
    columns = result_columns(datasets)
    for column in columns:
        table.add_column(column, overflow="fold")
    for ds in datasets:
        table.add_row(*(_cell(ds.get(c)) for c in columns))
    if isinstance(total, int) and total > offset + len(datasets):
        table.caption = f"{total - offset - len(datasets)} more: use --offset/--limit or --json"
    return table


def print_summary(state: dict) -> None:
    """Header (status, counts, time), per-source table and results table of one GET answer."""
    name, config_id = state.get("spanner_config") or "", state.get("spanner_config_id")
    config = f"config {name} #{config_id}" if config_id is not None else f"config {name}"
    what = f"{config.strip()}, {state.get('query_type')} {state.get('query_level')}"
    console.print(f"query {escape(str(state.get('query_id')))}  {_styled(state.get('status'), SPAN_STYLE)}  "
                  f"({escape(what)})")
    total = state.get("total_results") or 0
    line = (f"{total} results ({state.get('raw_results') or 0} before deduplication) from "
            f"{state.get('sources_responded') or 0}/{state.get('sources_queried') or 0} sources")
    if state.get("execution_time_ms") is not None:
        line += f" in {_ms(state['execution_time_ms'])} ms"
    console.print(line)
    if state.get("error"):
        console.print(f"[red]error:[/red] {escape(str(state['error']))}")
    if state.get("sources"):
        console.print(sources_table(state["sources"]))
    table = results_table(state)
    if table is not None:
        console.print(table)
    elif total and (state.get("offset") or 0) >= total:
        console.print(f"no results at offset {state.get('offset')} (there are {total})")


class _MarkColumn(SpinnerColumn):
    """A spinner while the row is pending/running, then its mark (✓, ✗ or –)."""

    def render(self, task):
        if task.finished:
            return Text.from_markup(task.fields.get("mark") or "[dim]–[/dim]")
        return super().render(task)


class SpanProgress:
    """The live display of `wait`: an overall row, then one row per source as the coordinator reports them.
    Run it as `with span_progress.progress:` and feed each GET answer to update()."""

    def __init__(self, *, display: Console | None = None) -> None:
        self.progress = Progress(_MarkColumn(), TextColumn("{task.description}"), TextColumn("{task.fields[status]}"),
                                 TextColumn("{task.fields[detail]}"), console=display or err_console, transient=True)
        self.overall = self.progress.add_task("[bold]overall[/bold]", total=1, status="submitted", detail="", mark="")
        self.rows: dict[str, Any] = {}
        self.started = time.monotonic()

    def update(self, state: dict) -> None:
        """Show one GET answer: overall status and counts, and each source's status, matches and latency."""
        status = state.get("status") or "?"
        detail = (f"{state.get('sources_responded') or 0}/{state.get('sources_queried') or 0} sources  "
                  f"{state.get('total_results') or 0} matches  {time.monotonic() - self.started:.1f} s")
        self.progress.update(self.overall, status=_styled(status, SPAN_STYLE), detail=detail,
                             completed=0 if status in ACTIVE else 1, mark=SOURCE_MARK.get(
                                 "ok" if status in SUCCEEDED else "failed"))
        for source in state.get("sources") or []:
            self._update_source(source)

    def _update_source(self, source: dict) -> None:
        name, status = str(source.get("source", "?")), source.get("status") or "pending"
        if name not in self.rows:
            self.rows[name] = self.progress.add_task(escape(name), total=1, status="", detail="", mark="")
        detail = f"{source.get('match_count') or 0} matches"
        if source.get("latency_ms") is not None:
            detail += f"  {_ms(source['latency_ms'])} ms"
        if source.get("error"):
            detail += f"  {escape(str(source['error'])[:60])}"
        self.progress.update(self.rows[name], status=_styled(status, SOURCE_STYLE), detail=detail,
                             completed=0 if status in ("pending", "running") else 1, mark=SOURCE_MARK.get(status))
