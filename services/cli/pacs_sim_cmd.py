"""`axiom pacs-sim`: run one simulated PACS (a lab tool for demos, tests and benchmarks) until Ctrl-C."""

from __future__ import annotations

import threading
from typing import Optional

import typer


def register(app: typer.Typer) -> None:
    """Add the `pacs-sim` command to `app`."""
    app.command("pacs-sim")(pacs_sim)


def pacs_sim(
    ae_title: str = typer.Option("PACS_SIM", "--ae-title", help="AE title of the simulator"),
    port: int = typer.Option(11112, "--port", help="DIMSE port (0 = any free port)"),
    http_port: Optional[int] = typer.Option(None, "--http-port", help="QIDO-RS/WADO-RS port (off when omitted)"),
    bind: str = typer.Option("127.0.0.1", "--bind", help="address to listen on"),
    seed: int = typer.Option(1, "--seed", help="catalog seed (same seed, same studies and UIDs)"),
    studies: int = typer.Option(20, "--studies", help="number of synthetic studies"),
    latency: float = typer.Option(0.0, "--latency", help="seconds before answering each query/retrieve"),
    failure_rate: float = typer.Option(0.0, "--failure-rate", help="fraction of requests that fail (0..1)"),
    failure_mode: str = typer.Option("status", "--failure-mode", help="'status' (0xC000 / HTTP 500) or 'abort'"),
    hang: bool = typer.Option(False, "--hang", help="never answer C-FIND/QIDO until the peer cancels or leaves"),
    result_cap: Optional[int] = typer.Option(None, "--result-cap", help="answer at most N matches"),
    malformed: bool = typer.Option(False, "--malformed", help="send responses that fail to decode"),
    charset: str = typer.Option("ISO_IR 192", "--charset", help="SpecificCharacterSet of non-ASCII answers"),
    move_destination: list[str] = typer.Option([], "--move-destination", help="AE=HOST:PORT, repeatable"),
) -> None:
    """Serve a synthetic PACS over DIMSE (and DICOMweb with --http-port) until Ctrl-C."""
    from services.pacs_sim.catalog import generate_catalog
    from services.pacs_sim.faults import Faults
    from services.pacs_sim.simulator import PacsSimulator

    try:
        faults = Faults(latency=latency, failure_rate=failure_rate, failure_mode=failure_mode, hang=hang,
                        result_cap=result_cap, malformed=malformed, seed=seed)
        destinations = dict(_destination(text) for text in move_destination)
    except ValueError as exc:
        raise typer.BadParameter(str(exc)) from None
    catalog = generate_catalog(seed, studies=studies, patients=max(1, studies // 2))
    simulator = PacsSimulator(ae_title, ae_title, catalog, dimse_port=port, http_port=http_port, faults=faults,
                              bind=bind, move_destinations=destinations, charset=charset)
    with simulator:
        typer.echo(f"serving {simulator.describe()}")
        if faults != Faults(seed=seed):
            typer.echo(f"faults: {faults}")
        for title, (host, dest_port) in destinations.items():
            typer.echo(f"C-MOVE destination {title} -> {host}:{dest_port}")
        typer.echo("Ctrl-C to stop")
        try:
            threading.Event().wait()
        except KeyboardInterrupt:
            typer.echo("stopping")


def _destination(text: str) -> tuple[str, tuple[str, int]]:
    title, sep, address = text.partition("=")
    host, _, port = address.rpartition(":")
    if not sep or not host or not port.isdigit():
        raise ValueError(f"--move-destination wants AE=HOST:PORT, got {text!r}")
    return title.strip(), (host, int(port))
