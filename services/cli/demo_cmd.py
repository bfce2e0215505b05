"""`axiom demo`: the main job on the embedded default, end to end, in well under a minute.

Three simulated archives with overlapping studies (NORTH fast over DIMSE, SOUTH slow over DICOMweb, EAST flaky over
DIMSE), a spanner config applied to the embedded SQLite database, then real spans: one patient's studies under each
deduplication strategy, a streamed FIRST_WINS span, a name search across character sets, and what a hung and a dead
archive do to BEST_EFFORT and FAIL_FAST, and finally a workstation's C-FIND and C-GET through the spanning DIMSE
SCP. Every span is written to the query log, shown at the end.
"""

from __future__ import annotations

import socket
import time
from contextlib import ExitStack
from dataclasses import replace

import typer
from rich.console import Console
from rich.rule import Rule
from rich.table import Table

from services.cli.demo_scp import workstation_view
from services.cli.demo_serve import check_ports_free, serve as serve_embedded
from services.cli.errors import user_errors
from services.cli.render import print_span
from services.pacs_sim import Faults, PacsSimulator, overlapping_catalogs
from shared.config import get_settings
from shared.connections import DimseConnection
from shared.db.migrations import upgrade_to_head
from shared.db.repo.query_logs import list_query_logs
from shared.db.repo.spanner_configs import SpanPlan, load_span_plan
from shared.db.session import make_engine, make_sessionmaker, session_scope
from shared.dicom.levels import InformationModel, QueryLevel
from shared.dicom.query_keys import build_identifier
from shared.provisioning import apply_config_yaml
from shared.span_client import InProcessSpanClient
from shared.spanning.model import DedupStrategy, FailureStrategy, Match, SourceOutcome, SourceSpec, SpanRequest, SpanResult

console = Console()
STUDY_KEYS = ["PatientName", "StudyDate", "StudyDescription", "AccessionNumber", "ModalitiesInStudy"]
DEMO_CONFIG = """\
sources:
  - {{name: NORTH, kind: dimse, ae_title: NORTH, host: 127.0.0.1, port: {north}, calling_ae_title: AXIOM_DEMO}}
  - {{name: SOUTH, kind: dicomweb, base_url: "{south}"}}
  - {{name: EAST, kind: dimse, ae_title: EAST, host: 127.0.0.1, port: {east}, calling_ae_title: AXIOM_DEMO}}
spanner_configs:
  - name: demo
    description: Three simulated archives - NORTH fast, SOUTH slow (DICOMweb), EAST flaky
    failure_strategy: BEST_EFFORT
    deduplication_strategy: MOST_COMPLETE
    query_timeout_seconds: 10
    max_concurrent_sources: 8
    cache_ttl_seconds: 60
    scp_ae_title: AXIOM_DEMO
    sources:
      - {{source: NORTH, priority: 1, timeout_seconds: 5}}
      - {{source: SOUTH, priority: 2, timeout_seconds: 5}}
      - {{source: EAST, priority: 3, timeout_seconds: 5, max_retries: 4}}
"""


def _start_archives(stack: ExitStack, seed: int) -> dict[str, PacsSimulator]:
    catalogs = overlapping_catalogs(seed, ["NORTH", "SOUTH", "EAST"], studies=30, patients=8, shared_fraction=0.5)
    archives = {
        "NORTH": PacsSimulator("NORTH", "NORTH", catalogs["NORTH"]),
        "SOUTH": PacsSimulator("SOUTH", "SOUTH", catalogs["SOUTH"], http_port=0, faults=Faults(latency=0.8)),
        "EAST": PacsSimulator("EAST", "EAST", catalogs["EAST"], charset="ISO_IR 100",
                              faults=Faults(failure_rate=0.5, failure_mode="abort", seed=seed)),
    }
    for archive in archives.values():
        stack.enter_context(archive.start())
        console.print(f"  [cyan]{archive.describe()}[/cyan]")
    return archives


def _configure(archives: dict[str, PacsSimulator]):
    settings = get_settings()
    url = settings.db.url
    upgrade_to_head(url)
    factory = make_sessionmaker(make_engine(url))
    text = DEMO_CONFIG.format(north=archives["NORTH"].dimse_port, south=archives["SOUTH"].http_url,
                              east=archives["EAST"].dimse_port)
    with session_scope(factory) as session:
        report = apply_config_yaml(session, text, scp=settings.scp)
    console.print(f"  database: {url}\n  config 'demo': {report.summary()}")
    with factory() as session:
        plan = load_span_plan(session, config_name="demo")
    return factory, plan


def _span(client: InProcessSpanClient, plan: SpanPlan, keys: list[str], *, level=QueryLevel.STUDY,
          sources: list[SourceSpec] | None = None, **policy) -> SpanResult:
    model = InformationModel.PATIENT_ROOT if level is QueryLevel.PATIENT else InformationModel.STUDY_ROOT
    request = SpanRequest(level=level, identifier=build_identifier(keys, level, model=model), model=model)
    return client.run(request, sources or plan.sources, replace(plan.policy, **policy), config_id=plan.config.id,
                      requester={"user": "demo"}, cache_ttl_seconds=plan.config.cache_ttl_seconds)


def _streamed(client: InProcessSpanClient, plan: SpanPlan, keys: list[str]) -> SpanResult:
    request = SpanRequest(level=QueryLevel.STUDY, identifier=build_identifier(keys, QueryLevel.STUDY))
    policy = replace(plan.policy, dedup_strategy=DedupStrategy.FIRST_WINS)
    started, result = time.monotonic(), None
    for event in client.stream(request, plan.sources, policy, config_id=plan.config.id, requester={"user": "demo"}):
        at = f"{(time.monotonic() - started) * 1000:6.0f} ms"
        if isinstance(event, Match):
            console.print(f"  {at}  match  {event.dataset.get('StudyDate', '')}  "
                          f"{event.dataset.get('StudyDescription', '') or '-':<28} from {', '.join(event.sources)}")
        elif isinstance(event, SourceOutcome):
            console.print(f"  {at}  [bold]{event.source} {event.status.value}[/bold] ({event.match_count} matches,"
                          f" {event.retries} retries)")
        elif isinstance(event, SpanResult):
            result = event
    return result


def _unused_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def _troubled_sources(stack: ExitStack, plan: SpanPlan) -> list[SourceSpec]:
    hung = stack.enter_context(PacsSimulator("WEST", "WEST", overlapping_catalogs(1, ["W"], studies=2)["W"],
                                             faults=Faults(hang=True)).start())
    extra = []
    for name, port in (("WEST", hung.dimse_port), ("DOWN", _unused_port())):
        conn = DimseConnection(ae_title=name, host="127.0.0.1", port=port, calling_ae_title="AXIOM_DEMO")
        extra.append(SourceSpec(name=name, kind="dimse", connection=conn, priority=10, timeout_seconds=None,
                                retrieve_ae_title=name))
    return plan.sources + extra


def _show_log(factory) -> None:
    table = Table(title="Query log (spanner_query_logs)")
    for column in ("started", "type", "level", "status", "sources ok", "results", "ms"):
        table.add_column(column)
    with factory() as session:
        for row in reversed(list_query_logs(session, limit=8)):
            outcomes = row.source_outcomes or []
            ok = sum(1 for o in outcomes if o.get("status") == "ok")
            table.add_row(row.started_at.strftime("%H:%M:%S"), str(row.query_type.value), row.query_level,
                          str(row.status.value), f"{ok}/{len(outcomes)}", str(row.deduplicated_result_count),
                          f"{row.duration_ms or 0:.0f}")
    console.print(table)


def demo(
    seed: int = typer.Option(7, help="seed of the synthetic archives"),
    serve: bool = typer.Option(False, "--serve", help="afterwards keep the spanning SCP, the API and the coordinator "
                               "up (with the archives) until Ctrl-C, to try findscu, curl and dicomweb-client"),
    host: str = typer.Option("127.0.0.1", "--host", help="with --serve: the address the SCP and the API listen on"),
    api_port: int = typer.Option(8001, "--api-port", min=0, max=65535, help="with --serve: the API's port"),
    scp_port: int = typer.Option(11114, "--scp-port", min=0, max=65535, help="with --serve: the SCP's port"),
    coordinator_port: int = typer.Option(8002, "--coordinator-port", min=1, max=65535,
                                         help="with --serve: the spanner coordinator's port (embedded mode)"),
) -> None:
    """Start three simulated PACS, configure a spanner on the embedded database and run example spans."""
    checks: list[tuple[str, bool]] = []
    if serve:
        with user_errors():
            check_ports_free(host, api_port, scp_port, coordinator_port)
    with ExitStack() as stack:
        console.print(Rule("Axiom demo: three archives, one query"))
        archives = _start_archives(stack, seed)
        factory, plan = _configure(archives)
        client = InProcessSpanClient(session_factory=factory)
        stack.callback(client.close)
        patient = archives["NORTH"].catalog.records(QueryLevel.STUDY)[0].PatientID
        keys = [f"PatientID={patient}", *STUDY_KEYS]

        console.print(Rule(f"1. Where are patient {patient}'s studies? (MOST_COMPLETE)"))
        first = _span(client, plan, keys)
        print_span(console, first, STUDY_KEYS)
        checks.append(("patient span succeeded with matches", first.status.succeeded and bool(first.matches)))
        checks.append(("MOST_COMPLETE kept the complete record of every study",
                       all(m.dataset.get("StudyDescription") for m in first.matches)))

        again = _span(client, plan, keys)
        console.print(f"  Asked again: {len(again.matches)} matches in {again.duration_ms:.0f} ms, from the cache "
                      f"(cache_ttl_seconds={plan.config.cache_ttl_seconds}; only completed spans are cached)")
        checks.append(("the same question again is answered from the cache",
                       again.duration_ms == 0 and len(again.matches) == len(first.matches)))

        console.print(Rule("2. The same with MERGE_ALL: attributes from every archive, ModalitiesInStudy unioned"))
        print_span(console, _span(client, plan, keys, dedup_strategy=DedupStrategy.MERGE_ALL), STUDY_KEYS)

        console.print(Rule("3. FIRST_WINS streams: matches print as they arrive (SOUTH answers after 800 ms)"))
        streamed = _streamed(client, plan, keys)
        checks.append(("streamed span found the same studies", len(streamed.matches) == len(first.matches)))

        console.print(Rule("4. Patients named N* (Patient Root): each archive decoded with its own character set"))
        named = _span(client, plan, ["PatientName=N*", "PatientID", "PatientBirthDate"], level=QueryLevel.PATIENT)
        print_span(console, named, ["PatientName", "PatientID", "PatientBirthDate"])
        checks.append(("the name search found N* patients, non-ASCII names included",
                       any(not str(m.dataset.PatientName).isascii() for m in named.matches)))

        console.print(Rule("5. A hung archive (WEST) and a dead one (DOWN): BEST_EFFORT, 3 s deadline"))
        troubled = _troubled_sources(stack, plan)
        partial = _span(client, plan, keys, sources=troubled, query_timeout_seconds=3.0)
        print_span(console, partial, STUDY_KEYS, limit=3)
        checks.append(("hung + dead archives give a partial answer", partial.status.value == "partial"))

        console.print(Rule("6. The same with FAIL_FAST: the first failure ends the span, the rest are cancelled"))
        failed = _span(client, plan, keys, sources=troubled, failure_strategy=FailureStrategy.FAIL_FAST)
        print_span(console, failed, STUDY_KEYS, limit=3)
        checks.append(("FAIL_FAST fails without waiting for the hung archive",
                       failed.status.value == "failed" and failed.duration_ms < 2500))

        console.print(Rule("7. A workstation's view: C-FIND and C-GET on the spanning SCP, AE AXIOM_DEMO"))
        view = workstation_view(factory, client, patient)
        console.print(f"  C-FIND on 127.0.0.1:{view.port}: {len(view.study_uids)} studies, final status "
                      f"0x{view.find_status:04X}; C-GET of the first: {view.instances} instances, status "
                      f"0x{view.get_status:04X}")
        checks.append(("the SCP answers the same studies, and a C-GET brings one back",
                       sorted(view.study_uids) == sorted(str(m.dataset.StudyInstanceUID) for m in first.matches)
                       and view.get_status == 0 and view.instances > 0))

        console.print(Rule("Every span is in the query log"))
        _show_log(factory)
        if serve:
            _verdict(checks, serving=True)
            console.print(Rule("The embedded stack stays up (--serve)"))
            serve_embedded(console, factory, client, patient, host=host, api_port=api_port, scp_port=scp_port,
                           coordinator_port=coordinator_port)
            return
    _verdict(checks)


def _verdict(checks: list[tuple[str, bool]], *, serving: bool = False) -> None:
    for text, ok in checks:
        console.print(f"  {'[green]✓' if ok else '[red]✗'}[/] {text}")
    if not all(ok for _, ok in checks):
        raise typer.Exit(1)
    if serving:
        console.print("[green]Demo complete.[/green]")
        return
    console.print("[green]Demo complete.[/green] The demo's archives have stopped. To keep them, the spanning SCP and "
                  "the API running and try findscu, curl or dicomweb-client yourself: `axiom demo --serve`.")


def register(app: typer.Typer) -> None:
    app.command(name="demo")(demo)
