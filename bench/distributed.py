"""Distributed spanning benchmark: do spans per second scale with dimse-query workers, and what does the
coordinator path add to a span?

A real deployment on this machine (tests.peers.services.DistributedStack: its own PostgreSQL database, Redis index
and RabbitMQ vhost; `python -m services.spanner_coordinator`, `python -m services.worker`): one aggregation worker,
N dimse-query workers with concurrency 1 each, and `--sources` simulated PACS (each in its own process) answering a
STUDY C-FIND after `--latency` seconds. Spans are submitted over HTTP and awaited with long-polls, as a client would.

* Throughput: for N = 1, 2, 4 workers, `--clients` × N closed-loop clients keep the queue full for `--seconds`;
  spans per second, and the ratio per doubling of workers (target >= 1.8).
* Overhead: with one dimse-query worker per source, spans one at a time; span wall time (POST to the long-poll's
  answer) minus the slowest source's own latency; p50 and p95 (target p50 <= 120 ms).

    .venv/bin/python bench/distributed.py [--sources 4] [--latency 0.1] [--seconds 12] [--overhead-spans 40]
"""

from __future__ import annotations

import argparse
import statistics
import sys
import tempfile
import threading
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from bench.fanout import start_archives  # noqa: E402
from tests.peers.services import DistributedStack  # noqa: E402

CONFIG = "bench"


def configure(stack: DistributedStack, names: list[str], addresses: list, workdir: Path) -> None:
    """Sources (DIMSE ports or DICOMweb URLs) and one spanner config over all of them (`axiom config apply`)."""
    lines = ["sources:"]
    for name, address in zip(names, addresses):
        lines.append(f"  - {{name: {name}, kind: dicomweb, base_url: \"{address}\"}}" if isinstance(address, str)
                     else f"  - {{name: {name}, kind: dimse, ae_title: {name}, host: 127.0.0.1, port: {address}}}")
    lines += ["spanner_configs:", f"  - name: {CONFIG}", "    query_timeout_seconds: 30",
              "    max_concurrent_sources: 8", "    sources:"]
    lines += [f"      - {{source: {n}, priority: {i + 1}}}" for i, n in enumerate(names)]
    path = workdir / "bench.yaml"
    path.write_text("\n".join(lines) + "\n")
    stack.run_cli("config", "apply", str(path))


def run_span(client, patient_id: str) -> dict:
    """Submit one span and long-poll it to its end; the final view (without results)."""
    accepted = client.post("/spanning-query", params={"spanner_config": CONFIG, "query_level": "STUDY"},
                           json={"PatientID": patient_id, "StudyInstanceUID": "", "StudyDate": ""})
    accepted.raise_for_status()
    query_id = accepted.json()["query_id"]
    while True:
        view = client.get(f"/spanning-query/{query_id}", params={"wait": 30, "limit": 0}).json()
        if view["status"] not in ("accepted", "running"):
            return view


def throughput(stack: DistributedStack, patient_id: str, clients: int, seconds: float) -> tuple[float, int]:
    """Spans per second completed by `clients` closed-loop clients in `seconds` (and how many were not ok)."""
    done, bad, stop = [], [], threading.Event()
    lock = threading.Lock()

    def loop() -> None:
        with stack.client(timeout=60) as client:
            while not stop.is_set():
                view = run_span(client, patient_id)
                with lock:
                    done.append(time.monotonic())
                    if view["status"] != "completed":
                        bad.append(view["status"])

    threads = [threading.Thread(target=loop, daemon=True) for _ in range(clients)]
    for thread in threads:
        thread.start()
    time.sleep(2.0)  # warm-up: pools filled, queues at a steady state
    start = time.monotonic()
    time.sleep(seconds)
    end = time.monotonic()
    stop.set()
    for thread in threads:
        thread.join(timeout=60)
    counted = [t for t in done if start <= t < end]
    return len(counted) / (end - start), len(bad)


def overhead(stack: DistributedStack, patient_id: str, spans: int) -> list[float]:
    """Per span: wall time minus the slowest source's latency (ms), spans one at a time."""
    figures = []
    with stack.client(timeout=60) as client:
        for _ in range(3):
            run_span(client, patient_id)  # warm-up
        for _ in range(spans):
            started = time.perf_counter()
            view = run_span(client, patient_id)
            wall = (time.perf_counter() - started) * 1000.0
            figures.append(wall - max(source["latency_ms"] for source in view["sources"]))
    return figures


def scale_to(stack: DistributedStack, count: int) -> None:
    """Exactly `count` dimse-query workers (concurrency 1), all consuming."""
    dimse = [w for w in stack.workers if w.name in stack.dimse_names]
    for worker in dimse[count:]:
        stack.kill_worker(worker)
    for _ in range(count - len(dimse)):
        stack.dimse_names.add(stack.start_worker(worker_type="dimse-query", concurrency=1).name)
    deadline = time.monotonic() + 60
    while [queue for queue, _ in stack.vhost.consumers()].count("dimse_tasks") != count:
        if time.monotonic() > deadline:
            raise RuntimeError(f"{count} dimse-query workers not consuming after 60 s\n{stack.tails()}")
        time.sleep(0.3)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--sources", type=int, default=4)
    parser.add_argument("--latency", type=float, default=0.1)
    parser.add_argument("--seconds", type=float, default=12.0)
    parser.add_argument("--clients", type=int, default=3, help="closed-loop clients per dimse-query worker")
    parser.add_argument("--workers", default="1,2,4")
    parser.add_argument("--overhead-spans", type=int, default=40)
    parser.add_argument("--protocol", choices=("dicomweb", "dimse"), default="dicomweb",
                        help="how the simulated archives are queried (QIDO-RS or C-FIND)")
    parser.add_argument("--log-level", default="WARNING", help="the services' LOG_LEVEL (DEBUG shows every task)")
    parser.add_argument("--keep-logs", type=Path, help="write the services' logs here (kept) instead of a temp dir")
    args = parser.parse_args()
    names = [f"BENCH{i}" for i in range(args.sources)]
    patient_id, addresses, children = start_archives(names, args.latency, http=args.protocol == "dicomweb")
    with tempfile.TemporaryDirectory(prefix="axiom-bench-") as tmp:
        tmp = args.keep_logs or tmp
        stack = DistributedStack(Path(tmp), log_level=args.log_level).setup()
        stack.dimse_names = set()
        try:
            configure(stack, names, addresses, Path(tmp))
            stack.start_coordinator()
            stack.start_worker(worker_type="aggregation", concurrency=8)
            rates = {}
            for count in [int(n) for n in args.workers.split(",")]:
                scale_to(stack, count)
                rates[count], bad = throughput(stack, patient_id, args.clients * count, args.seconds)
                print(f"{count} dimse-query worker(s): {rates[count]:.2f} spans/s ({bad} not completed)", flush=True)
            counts = sorted(rates)
            for low, high in zip(counts, counts[1:]):
                print(f"  {low} -> {high} workers: x{rates[high] / rates[low]:.2f} (target >= 1.8 per doubling)")
            scale_to(stack, args.sources)
            figures = sorted(overhead(stack, patient_id, args.overhead_spans))
            p95 = figures[max(0, int(round(0.95 * len(figures))) - 1)]
            print(f"coordinator overhead over the slowest source ({len(figures)} spans, {args.sources} {args.protocol} "
                  f"sources, {args.latency * 1000:.0f} ms each): p50 {statistics.median(figures):.1f} ms, p95 {p95:.1f} ms "
                  "(target p50 <= 120 ms)")
        finally:
            stack.close()
            for process, pipe in children:
                pipe.send("stop")
                process.join(timeout=10)


if __name__ == "__main__":
    main()
