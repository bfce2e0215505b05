"""Merge benchmark: 8 sources x 5,000 STUDY matches, 50 % overlap, each dedup strategy vs a plain dict baseline.

Overlap: each source's 5,000 matches are 2,500 studies *shared by all 8 sources* (same StudyInstanceUIDs, attribute
values varying per source so strategies have something to decide) plus 2,500 studies *only that source* holds.
So 40,000 arrivals, 22,500 distinct studies. Arrivals are interleaved round-robin across sources, as a real span.

`Merger.add` takes ownership of (and may modify) the datasets it is given, so every merger run gets its own fresh
inputs, built outside the timed region and collected into the old generation first (`gc.collect()`), as a span's
matches are by the time they are merged; the previous run's inputs and outputs are released before that.

Time (best of 3), two columns: "merge" is the dedup strategy alone (every arrival into a Merger, then matches());
"engine" is the engine's consuming thread, exactly as shared/spanning/engine.py runs it: merge, then finalise the
output character set (`normalize_output_charset`). The per-source cut of each answer to the requested keys
(`keep_response_keys`) runs in the source workers, overlapping other sources' network waits; it is timed apart.
Memory: tracemalloc
peak during one more such run (inputs are built before tracing starts, so it is the merger's own overhead).
Baseline: a plain `dict.setdefault(StudyInstanceUID, ds)` first-wins dedup without copies (it does not modify its
inputs, so it reuses one input set). Target: each strategy under TARGET_SECONDS; exit status 1 only if one misses.
Run: .venv/bin/python bench/merge.py   (about a minute: building the 13 input sets dominates)
"""

from __future__ import annotations

import gc
import sys
import time
import tracemalloc
from functools import partial
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from pydicom import Dataset  # noqa: E402

from shared.dicom.charset import normalize_output_charset  # noqa: E402
from shared.dicom.levels import QueryLevel  # noqa: E402
from shared.dicom.matching import keep_response_keys, response_tags  # noqa: E402
from shared.spanning.merge import Merger  # noqa: E402
from shared.spanning.model import DedupStrategy, SourceSpec  # noqa: E402

SOURCES, PER_SOURCE, SHARED = 8, 5_000, 2_500
TARGET_SECONDS = 0.5


def make_study(uid: str, source: int, index: int) -> Dataset:
    """One match as an adapter hands it over (add_new: the same elements as keyword assignment, built faster)."""
    ds = Dataset()
    ds.add_new(0x0020000D, "UI", uid)  # StudyInstanceUID
    ds.add_new(0x00100010, "PN", f"Patient^{index}")  # PatientName
    ds.add_new(0x00100020, "LO", f"P{index}")  # PatientID
    ds.add_new(0x00080020, "DA", "20240101")  # StudyDate
    ds.add_new(0x00080030, "TM", "101010")  # StudyTime
    ds.add_new(0x00080050, "SH", f"A{index}" if source % 2 == 0 else "")  # AccessionNumber
    ds.add_new(0x00081030, "LO", f"Study {index} at source {source}")  # StudyDescription
    ds.add_new(0x00080061, "CS", ["CT", ["MR", "US", "XA"][source % 3]])  # ModalitiesInStudy
    ds.add_new(0x00201208, "IS", str(100 + source))  # NumberOfStudyRelatedInstances
    ds.add_new(0x00080054, "AE", f"SRC{source}")  # RetrieveAETitle (the merger replaces it)
    return ds


def make_arrivals() -> list[tuple[str, Dataset]]:
    """Fresh inputs for one run, already collected into the old GC generation."""
    arrivals = _build_arrivals()
    gc.collect()
    return arrivals


def _build_arrivals() -> list[tuple[str, Dataset]]:
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


def requested_tags() -> frozenset[int]:
    """The response tags of a query asking for every attribute make_study fills (what the engine keeps)."""
    identifier = Dataset()
    for element in make_study("1", 0, 0):
        identifier.add_new(element.tag, element.VR, None)
    return response_tags(identifier, QueryLevel.STUDY)


def run_merger(strategy, specs, arrivals):
    """The dedup strategy alone: every arrival into a Merger, then matches()."""
    merger = Merger(QueryLevel.STUDY, strategy, specs)
    for source, ds in arrivals:
        merger.add(source, ds)
    return merger.matches()


def run_engine_path(strategy, specs, arrivals):
    """What the engine's consuming thread does per match: merge, then finalise the output character set."""
    merger = Merger(QueryLevel.STUDY, strategy, specs, finalize=normalize_output_charset)
    for source, ds in arrivals:
        merger.add(source, ds)
    return merger.matches()


def run_cut(arrivals):
    """What the source workers do per answer before handing it over: cut it to the requested keys."""
    tags = requested_tags()
    return [keep_response_keys(ds, tags) for _, ds in arrivals]


def measure(fn, make_inputs) -> tuple[float, int, int]:
    """(best time of 3, tracemalloc peak of a 4th run, result count); every run on `make_inputs()`, built untimed."""
    timings, count = [], 0
    for _ in range(3):
        inputs = make_inputs()
        started = time.perf_counter()
        result = fn(inputs)
        timings.append(time.perf_counter() - started)
        count = len(result)
        del inputs, result  # release this run's datasets before the next inputs are built
    inputs = make_inputs()
    tracemalloc.start()
    fn(inputs)
    peak = tracemalloc.get_traced_memory()[1]
    tracemalloc.stop()
    return min(timings), peak, count


def main() -> int:
    specs = [SourceSpec(f"src{i}", "bench", priority=i % 3) for i in range(SOURCES)]
    shared_inputs = [make_arrivals()]  # the baseline does not modify its inputs: one set serves all its runs
    base_time, base_mem, base_count = measure(baseline, lambda: shared_inputs[0])
    shared_inputs.clear()
    print(f"{SOURCES * PER_SOURCE:,} arrivals from {SOURCES} sources, {base_count:,} distinct studies\n")
    print(f"{'strategy':<14}{'merge s':>9}{'x base':>8}{'engine s':>10}{'x base':>8}{'peak MiB':>10}{'x base':>8}"
          f"{'matches':>9}  target (< {TARGET_SECONDS}s: merge / engine path)")
    print(f"{'baseline dict':<14}{base_time:>9.3f}{1:>8.1f}{'':>18}{base_mem / 2**20:>10.2f}{1:>8.1f}{base_count:>9,}")
    missed = []
    for strategy in DedupStrategy:
        seconds, peak, count = measure(partial(run_merger, strategy, specs), make_arrivals)
        engine_seconds, _, _ = measure(partial(run_engine_path, strategy, specs), make_arrivals)
        verdicts = ["PASS" if t < TARGET_SECONDS else "MISS" for t in (seconds, engine_seconds)]
        missed += [f"{strategy.value} ({what})" for what, v in zip(("merge", "engine path"), verdicts) if v == "MISS"]
        print(f"{strategy.value:<14}{seconds:>9.3f}{seconds / base_time:>8.1f}{engine_seconds:>10.3f}"
              f"{engine_seconds / base_time:>8.1f}{peak / 2**20:>10.2f}{peak / max(base_mem, 1):>8.1f}{count:>9,}"
              f"  {' / '.join(verdicts)}")
    cut_seconds, _, _ = measure(run_cut, make_arrivals)
    print(f"\nper-source cut to the requested keys (in the source workers, not the consuming thread): "
          f"{cut_seconds:.3f} s for {SOURCES * PER_SOURCE:,} answers")
    if missed:
        print(f"\nMISSED the {TARGET_SECONDS}s target: {', '.join(missed)}")
    return 1 if missed else 0


if __name__ == "__main__":
    raise SystemExit(main())
