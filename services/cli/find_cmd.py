"""`axiom find`: a spanning findscu. One C-FIND/QIDO query to many archives, merged, with per-source status."""

from __future__ import annotations

import json
from dataclasses import replace
from typing import Optional

import typer
from pydicom.datadict import keyword_for_tag
from rich.console import Console

from services.cli.errors import display_url, user_errors
from services.cli.render import print_span, result_to_json
from shared.config import get_settings
from shared.connections import DimseConnection, check_ae_title
from shared.db.migrations import is_up_to_date
from shared.db.repo.spanner_configs import load_span_plan
from shared.db.session import make_engine, make_sessionmaker
from shared.dicom.levels import UNIQUE_KEYS, InformationModel, QueryLevel, default_model
from shared.dicom.query_keys import build_identifier, parse_key
from shared.source_uri import parse_source_uri
from shared.span_client import InProcessSpanClient
from shared.spanning.model import DedupStrategy, FailureStrategy, SourceSpec, SpanPolicy, SpanRequest

console = Console()


def inline_sources(specs: list[str], *, timeout: float | None, retries: int, calling_ae: str) -> list[SourceSpec]:
    """`NAME=URI` options -> SourceSpecs, priority in the order given (first = preferred)."""
    sources, seen = [], set()
    for priority, text in enumerate(specs, start=1):
        name, connection = parse_source_uri(text)
        if name in seen:
            raise ValueError(f"source {name!r} is given twice")
        seen.add(name)
        if connection.kind == "dimse" and "calling=" not in text:
            connection = DimseConnection.model_validate({**connection.model_dump(), "calling_ae_title": calling_ae})
        sources.append(SourceSpec(
            name=name, kind=connection.kind, connection=connection, priority=priority, timeout_seconds=timeout,
            max_retries=retries, retrieve_ae_title=getattr(connection, "ae_title", None) or name,
        ))
    return sources


def display_columns(keys: list[str], identifier, level: QueryLevel) -> list[str]:
    """Table columns: the keys in the order typed, then the identifier's other keys, the level's UID last."""
    typed = [keyword_for_tag(parse_key(text).path[0]) for text in keys]
    rest = [elem.keyword for elem in identifier if elem.keyword]
    unique = UNIQUE_KEYS[level]
    ordered = [k for k in dict.fromkeys(typed + rest) if k and k != unique]
    return ordered + [unique]


def _override(policy: SpanPolicy, dedup: str | None, failure: str | None, timeout: float | None,
              min_success: int | None) -> SpanPolicy:
    changes: dict = {}
    if dedup:
        changes["dedup_strategy"] = DedupStrategy(dedup.upper())
    if failure:
        changes["failure_strategy"] = FailureStrategy(failure.upper())
    if timeout is not None:
        changes["query_timeout_seconds"] = timeout
    if min_success is not None:
        changes["minimum_success_threshold"] = min_success
    return replace(policy, **changes) if changes else policy


def find(
    source: list[str] = typer.Option([], "--source", "-s", help="NAME=dimse://AET@host:port or NAME=http://host/dicom-web (repeatable)"),
    config: Optional[str] = typer.Option(None, "--config", "-c", help="a spanner config from the database, by name"),
    level: str = typer.Option("STUDY", "--level", "-L", help="PATIENT, STUDY, SERIES or IMAGE"),
    model: Optional[str] = typer.Option(None, "--model", "-m", help="STUDY_ROOT (default) or PATIENT_ROOT"),
    key: list[str] = typer.Option([], "--key", "-k", help="Keyword=Value matching key, or Keyword alone as a return key"),
    dedup: Optional[str] = typer.Option(None, "--dedup", help="FIRST_WINS, MOST_COMPLETE or MERGE_ALL"),
    failure: Optional[str] = typer.Option(None, "--failure", help="FAIL_FAST, BEST_EFFORT or MINIMUM_THRESHOLD"),
    min_success: Optional[int] = typer.Option(None, "--min-success", help="successful sources MINIMUM_THRESHOLD needs"),
    timeout: Optional[float] = typer.Option(None, "--timeout", "-t", help="overall deadline in seconds"),
    source_timeout: Optional[float] = typer.Option(None, "--source-timeout", help="per-source timeout (inline sources)"),
    retries: int = typer.Option(1, "--retries", help="retries on transport errors (inline sources)"),
    calling_aet: Optional[str] = typer.Option(None, "--aet", help="calling AE title for DIMSE sources"),
    as_json: bool = typer.Option(False, "--json", help="print DICOM JSON matches and per-source outcomes"),
    limit: Optional[int] = typer.Option(None, "--limit", help="show at most this many rows in the table"),
) -> None:
    """Query every source at once and print the merged, deduplicated matches and each source's status."""
    settings = get_settings()
    with user_errors(settings.db.url):
        if bool(source) == bool(config):
            raise ValueError("give either --source (one or more) or --config NAME")
        request = _request(level, model, key)
        if config:
            plan = _load_plan(settings.db.url, config)
            session_factory = make_sessionmaker(make_engine(settings.db.url))
            sources, policy, config_id = plan.sources, plan.policy, plan.config.id
            cache_ttl = plan.config.cache_ttl_seconds
        else:
            calling = _calling_ae(calling_aet or settings.scp.calling_ae_title)
            sources = inline_sources(source, timeout=source_timeout, retries=retries, calling_ae=calling)
            policy, session_factory, config_id, cache_ttl = SpanPolicy(query_timeout_seconds=30.0), None, None, 0
        policy = _override(policy, dedup, failure, timeout, min_success)
        client = InProcessSpanClient(session_factory=session_factory)
        try:
            result = client.run(request, sources, policy, config_id=config_id, cache_ttl_seconds=cache_ttl,
                                requester={"user": "cli", "ae_title": calling_aet})
        finally:
            client.close()
    if as_json:
        typer.echo(json.dumps(result_to_json(result), ensure_ascii=False, indent=2))
    else:
        print_span(console, result, display_columns(key, request.identifier, request.level), limit=limit)
    raise typer.Exit(0 if result.status.succeeded else 1)


def _request(level: str, model: str | None, keys: list[str]) -> SpanRequest:
    """The span request from --level/--model/-k; ValueError names what is wrong."""
    query_level = QueryLevel.parse(level)
    info_model = InformationModel.parse(model) if model else default_model(query_level)
    if not info_model.allows(query_level):
        raise ValueError(f"level {query_level.value} is not part of the {info_model.value} model (PS3.4 C.6.2)")
    identifier = build_identifier(keys, query_level, model=info_model)
    return SpanRequest(level=query_level, identifier=identifier, model=info_model)


def _calling_ae(value: str) -> str:
    try:
        return check_ae_title(value)
    except ValueError as exc:
        raise ValueError(f"--aet {value!r}: {exc}") from None


def _load_plan(url: str, config: str):
    """The named spanner config's sources and policy; a clear error on an unmigrated database."""
    if not is_up_to_date(url):
        raise ValueError(f"database {display_url(url)} has no current schema: run "
                         "`axiom db upgrade` (or `axiom config apply FILE`, which also migrates)")
    with make_sessionmaker(make_engine(url))() as session:
        return load_span_plan(session, config_name=config)


def register(app: typer.Typer) -> None:
    app.command(name="find")(find)
