"""Merge benchmark: 8 sources x 5,000 STUDY matches, 50 % overlap, each dedup strategy vs a plain dict baseline.

Overlap: each source's 5,000 matches are 2,500 studies *shared by all 8 sources* (same StudyInstanceUIDs, attribute
values varying per source so strategies have something to decide) plus 2,500 studies *only that source* holds.
So 40,000 arrivals, 22,500 distinct studies. Arrivals are interleaved round-robin across sources, as a real span.

Time: wall-clock of feeding every arrival to a Merger and collecting `matches()` (best of 3). Memory: tracemalloc
peak during one such run (inputs are built beforehand, so it is the merger's own overhead). Baseline: a plain
`dict.setdefault(StudyInstanceUID, ds)` first-wins dedup without copies, measured in the same run.
Run: .venv/bin/python bench/merge.py
"""

from __future__ import annotations

import gc
import sys
import time
import tracemalloc
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from pydicom import Dataset  # noqa: E402

from shared.dicom.levels import QueryLevel  # noqa: E402
from shared.spanning.merge import Merger  # noqa: E402
from shared.spanning.model import DedupStrategy, SourceSpec  # noqa: E402

SOURCES, PER_SOURCE, SHARED = 8, 5_000, 2_500
TARGET_SECONDS = 0.5


def make_study(uid: str, source: int, index: int) -> Dataset:
    ds = Dataset()
    ds.StudyInstanceUID = uid
    ds.PatientName = f"Patient^{index}"
    ds.PatientID = f"P{index}"
    ds.StudyDate = "20240101"
    ds.StudyTime = "101010"
    ds.AccessionNumber = f"A{index}" if source % 2 == 0 else ""
    ds.StudyDescription = f"Study {index} at source {source}"
    ds.ModalitiesInStudy = ["CT", ["MR", "US", "XA"][source % 3]]
    ds.NumberOfStudyRelatedInstances = str(100 + source)
    ds.RetrieveAETitle = f"SRC{source}"
    return ds


def make_arrivals() -> list[tuple[str, Dataset]]:
    per_source = []
    for source in range(SOURCES):
        shared = [make_study(f"1.2.826.0.1.{i}", source, i) for i in range(SHARED)]
        own = [make_study(f"1.2.826.{source + 2}.{i}", source, i) for i in range(PER_SOURCE - SHARED)]
        per_source.append([(f"src{source}", ds) for ds in shared + own])
    return [per_source[s][i] for i in range(PER_SOURCE) for s in range(SOURCES)]


def baseline(arrivals):
    seen: dict[str, Dataset] = {}
    for _, ds in arrivals:
        seen.setdefault(ds.StudyInstanceUID, ds)
    return list(seen.values())


def run_merger(strategy, specs, arrivals):
    merger = Merger(QueryLevel.STUDY, strategy, specs)
    for source, ds in arrivals:
        merger.add(source, ds)
    return merger.matches()


def measure(fn, *args):
    timings = []
    for _ in range(3):
        started = time.perf_counter()
        result = fn(*args)
        timings.append(time.perf_counter() - started)
    tracemalloc.start()
    fn(*args)
    peak = tracemalloc.get_traced_memory()[1]
    tracemalloc.stop()
    return min(timings), peak, len(result)


def main() -> int:
    specs = [SourceSpec(f"src{i}", "bench", priority=i % 3) for i in range(SOURCES)]
    arrivals = make_arrivals()
    gc.collect()  # the inputs are old objects by the time a span merges them
    base_time, base_mem, base_count = measure(baseline, arrivals)
    print(f"{len(arrivals):,} arrivals from {SOURCES} sources, {base_count:,} distinct studies\n")
    print(f"{'strategy':<14}{'time s':>9}{'x base':>9}{'peak MiB':>10}{'x base':>9}{'matches':>9}  target")
    print(f"{'baseline dict':<14}{base_time:>9.3f}{1:>9.1f}{base_mem / 2**20:>10.2f}{1:>9.1f}{base_count:>9,}")
    missed = False
    for strategy in DedupStrategy:
        seconds, peak, count = measure(run_merger, strategy, specs, arrivals)
        ok = seconds < TARGET_SECONDS
        missed |= not ok
        print(f"{strategy.value:<14}{seconds:>9.3f}{seconds / base_time:>9.1f}{peak / 2**20:>10.2f}"
              f"{peak / max(base_mem, 1):>9.1f}{count:>9,}  {'ok' if ok else 'MISSED'} (< {TARGET_SECONDS}s)")
    return 1 if missed else 0


if __name__ == "__main__":
    raise SystemExit(main())
