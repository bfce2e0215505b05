"""Fan-out benchmark: does spanning 8 archives cost no more than waiting for the slowest one?

8 simulated PACS (DIMSE) each answer a STUDY C-FIND for one patient's studies after 200 ms. They run in a child
process, as real archives run on other machines, so the client's own work is what is measured. In the same run:
- single: each source alone through the same engine and adapters (the slowest single source is the baseline);
- sequential: the 8 sources queried one after another;
- span: one span over all 8 (max_concurrent_sources=8).
Reported: medians over --reps runs; span / slowest single (target <= 1.1), the absolute overhead (target <= 30 ms)
and span / sequential.

    .venv/bin/python bench/fanout.py [--reps 15] [--latency 0.2] [--sources 8]
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
from shared.adapters.executor import ThreadExecutor  # noqa: E402
from shared.adapters.query_ports import build_query_ports  # noqa: E402
from shared.connections import DimseConnection  # noqa: E402
from shared.dicom.levels import QueryLevel  # noqa: E402
from shared.dicom.query_keys import build_identifier  # noqa: E402
from shared.spanning.engine import run_span  # noqa: E402
from shared.spanning.model import SourceSpec, SpanPolicy, SpanRequest, SpanStatus  # noqa: E402


def serve_archives(names: list[str], latency: float, conn) -> None:
    """Child process: start the simulators, send back (patient id, ports), serve until told to stop."""
    catalogs = overlapping_catalogs(11, names, studies=200, patients=50, series_per_study=1, instances_per_series=1)
    with ExitStack() as stack:
        sims = [stack.enter_context(PacsSimulator(n, n, catalogs[n], faults=Faults(latency=latency)).start())
                for n in names]
        conn.send((catalogs[names[0]].records(QueryLevel.STUDY)[0].PatientID, [s.dimse_port for s in sims]))
        conn.recv()


def timed_span(sources, executor, patient_id: str) -> float:
    keys = [f"PatientID={patient_id}", "StudyInstanceUID", "StudyDate", "StudyDescription"]
    request = SpanRequest(level=QueryLevel.STUDY, identifier=build_identifier(keys, QueryLevel.STUDY))
    started = time.perf_counter()
    with build_query_ports() as ports:
        result = run_span(request, sources, ports=ports, executor=executor,
                          policy=SpanPolicy(max_concurrent_sources=len(sources), query_timeout_seconds=30))
    elapsed = time.perf_counter() - started
    if result.status is not SpanStatus.COMPLETED:
        raise SystemExit(f"span did not complete: {[o.as_dict() for o in result.outcomes]}")
    return elapsed


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--reps", type=int, default=15)
    parser.add_argument("--latency", type=float, default=0.2)
    parser.add_argument("--sources", type=int, default=8)
    args = parser.parse_args()
    names = [f"PACS{i}" for i in range(args.sources)]
    parent, child = multiprocessing.Pipe()
    archives = multiprocessing.get_context("spawn").Process(target=serve_archives, args=(names, args.latency, child))
    archives.start()
    patient_id, ports = parent.recv()
    sources = [SourceSpec(n, "dimse", DimseConnection(ae_title=n, host="127.0.0.1", port=p), priority=i)
               for i, (n, p) in enumerate(zip(names, ports))]
    executor = ThreadExecutor()
    try:
        timed_span(sources, executor, patient_id)  # warm-up
        single, sequential, span = [], [], []
        for _ in range(args.reps):
            per_source = [timed_span([source], executor, patient_id) for source in sources]
            single.append(max(per_source))
            sequential.append(sum(per_source))
            span.append(timed_span(sources, executor, patient_id))
    finally:
        executor.shutdown()
        parent.send("stop")
        archives.join(10)
    report(args, statistics.median(single), statistics.median(sequential), statistics.median(span), span)


def report(args, slowest: float, sequential: float, span: float, spans: list[float]) -> None:
    overhead_ms = (span - slowest) * 1000
    print(f"fan-out: {args.sources} simulated DIMSE sources, {args.latency * 1000:.0f} ms each, {args.reps} reps (medians)")
    print(f"  slowest single source   {slowest * 1000:8.1f} ms   (baseline)")
    print(f"  sequential, all sources {sequential * 1000:8.1f} ms")
    print(f"  span, all sources       {span * 1000:8.1f} ms   (p90 {sorted(spans)[int(0.9 * (len(spans) - 1))] * 1000:.1f} ms)")
    print(f"  span / slowest single   {span / slowest:8.3f}      target <= 1.10  {'PASS' if span / slowest <= 1.1 else 'MISS'}")
    print(f"  overhead vs slowest     {overhead_ms:8.1f} ms   target <= 30 ms {'PASS' if overhead_ms <= 30 else 'MISS'}")
    print(f"  span / sequential       {span / sequential:8.3f}")


if __name__ == "__main__":
    main()
