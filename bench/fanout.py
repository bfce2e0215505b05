"""Fan-out benchmark: does spanning 8 archives cost no more than waiting for the slowest one?

8 simulated PACS (DIMSE) each answer a STUDY C-FIND for one patient's studies after 200 ms. Each runs in its own
process, as real archives run on other machines, so what is measured is Axiom's side. Queries go through the
product path (InProcessSpanClient: engine + DIMSE adapter with its association pool), in the same run:
- single: each source alone (the slowest single source of a round is the baseline);
- sequential: the 8 sources queried one after another;
- span: one span over all 8 (max_concurrent_sources=8).
Reported: medians over --reps rounds; span / slowest single (target <= 1.1), the absolute overhead (target <= 30 ms)
and span / sequential. `--fresh` opens new associations for every query (a one-shot CLI's case) instead of reusing.

    .venv/bin/python bench/fanout.py [--reps 15] [--latency 0.2] [--sources 8] [--fresh]
"""

from __future__ import annotations

import argparse
import multiprocessing
import statistics
import sys
import time
from contextlib import ExitStack
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from services.pacs_sim import Faults, PacsSimulator, overlapping_catalogs  # noqa: E402
from shared.connections import DimseConnection  # noqa: E402
from shared.dicom.levels import QueryLevel  # noqa: E402
from shared.dicom.query_keys import build_identifier  # noqa: E402
from shared.span_client import InProcessSpanClient  # noqa: E402
from shared.spanning.model import SourceSpec, SpanPolicy, SpanRequest, SpanStatus  # noqa: E402

SEED = 11


def serve_archive(names: list[str], name: str, latency: float, conn, http: bool = False) -> None:
    """Child process: one simulated archive; sends back (patient id, DIMSE port or, with `http`, its DICOMweb
    URL), serves until told to stop."""
    catalogs = overlapping_catalogs(SEED, names, studies=200, patients=50, series_per_study=1, instances_per_series=1)
    with ExitStack() as stack:
        sim = stack.enter_context(PacsSimulator(name, name, catalogs[name], faults=Faults(latency=latency),
                                                http_port=0 if http else None).start())
        conn.send((catalogs[names[0]].records(QueryLevel.STUDY)[0].PatientID, sim.http_url if http else sim.dimse_port))
        conn.recv()


def start_archives(names: list[str], latency: float, http: bool = False) -> tuple[str, list, list]:
    """One archive process per name: (a patient id they all hold, their DIMSE ports or DICOMweb URLs, children)."""
    context = multiprocessing.get_context("spawn")
    children = []
    for name in names:
        parent, child = context.Pipe()
        process = context.Process(target=serve_archive, args=(names, name, latency, child, http))
        process.start()
        children.append((process, parent))
    answers = [parent.recv() for _, parent in children]
    return answers[0][0], [port for _, port in answers], children


def timed_span(client_factory, sources, patient_id: str) -> float:
    keys = [f"PatientID={patient_id}", "StudyInstanceUID", "StudyDate", "StudyDescription"]
    request = SpanRequest(level=QueryLevel.STUDY, identifier=build_identifier(keys, QueryLevel.STUDY))
    policy = SpanPolicy(max_concurrent_sources=len(sources), query_timeout_seconds=30)
    client, owned = client_factory()
    started = time.perf_counter()
    result = client.run(request, sources, policy)
    if owned:
        client.close()
    elapsed = time.perf_counter() - started
    if result.status is not SpanStatus.COMPLETED:
        raise SystemExit(f"span did not complete: {[o.as_dict() for o in result.outcomes]}")
    return elapsed


def measure(args, sources, patient_id: str) -> tuple[list[float], list[float], list[float]]:
    shared = InProcessSpanClient()
    factory = (lambda: (InProcessSpanClient(), True)) if args.fresh else (lambda: (shared, False))
    try:
        timed_span(factory, sources, patient_id)  # warm-up (and, when reusing, the pool)
        single, sequential, span = [], [], []
        for _ in range(args.reps):
            per_source = [timed_span(factory, [source], patient_id) for source in sources]
            single.append(max(per_source))
            sequential.append(sum(per_source))
            span.append(timed_span(factory, sources, patient_id))
        return single, sequential, span
    finally:
        shared.close()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--reps", type=int, default=15)
    parser.add_argument("--latency", type=float, default=0.2)
    parser.add_argument("--sources", type=int, default=8)
    parser.add_argument("--fresh", action="store_true", help="new associations for every query (no pool)")
    args = parser.parse_args()
    names = [f"PACS{i}" for i in range(args.sources)]
    patient_id, ports, children = start_archives(names, args.latency)
    sources = [SourceSpec(n, "dimse", DimseConnection(ae_title=n, host="127.0.0.1", port=p), priority=i)
               for i, (n, p) in enumerate(zip(names, ports))]
    try:
        single, sequential, span = measure(args, sources, patient_id)
    finally:
        for process, parent in children:
            parent.send("stop")
            process.join(10)
    report(args, statistics.median(single), statistics.median(sequential), statistics.median(span), span)


def report(args, slowest: float, sequential: float, span: float, spans: list[float]) -> None:
    overhead_ms = (span - slowest) * 1000
    mode = "new associations per query" if args.fresh else "pooled associations"
    p90 = sorted(spans)[int(0.9 * (len(spans) - 1))] * 1000
    print(f"fan-out: {args.sources} simulated DIMSE sources, {args.latency * 1000:.0f} ms each, {mode}, "
          f"{args.reps} rounds (medians)")
    print(f"  slowest single source   {slowest * 1000:8.1f} ms   (baseline)")
    print(f"  sequential, all sources {sequential * 1000:8.1f} ms")
    print(f"  span, all sources       {span * 1000:8.1f} ms   (p90 {p90:.1f} ms)")
    print(f"  span / slowest single   {span / slowest:8.3f}      target <= 1.10  {'PASS' if span / slowest <= 1.1 else 'MISS'}")
    print(f"  overhead vs slowest     {overhead_ms:8.1f} ms   target <= 30 ms {'PASS' if overhead_ms <= 30 else 'MISS'}")
    print(f"  span / sequential       {span / sequential:8.3f}")


if __name__ == "__main__":
    main()
