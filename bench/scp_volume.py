"""Volume through the spanning SCP: how fast does `findscu` get 20,000 studies spanned over 8 archives, compared
with `findscu` straight to one Orthanc holding the same 20,000 studies, and how much memory does the listener take?

* Sources: `--sources` simulated PACS (services.pacs_sim, DIMSE), each in its own process, each holding
  `--studies-per-source` studies (one series, one instance each) with 50 % overlap: every study is held by exactly
  two archives, so the union is sources × studies-per-source ÷ 2 unique studies (8 × 5,000 → 20,000).
* Spanning: `python -m services.listener` in its own process (embedded SQLite in a temp AXIOM_DATA_DIR), one spanner
  config per deduplication strategy over the sources (max_concurrent_sources 8, no cache, a long deadline), queried
  on the config's `scp_ae_title`. Each strategy gets a fresh listener process, so its peak memory is its own.
* Baseline: one real Orthanc (tests.peers.orthanc) holding the same unique studies (minimal instances, no pixel
  data, loaded over REST before the runs; the load time is reported, not counted), with no C-FIND result limits.
* Both are queried with DCMTK's `/usr/bin/findscu -S -v` for every study (StudyInstanceUID, PatientName, PatientID,
  StudyDate, ModalitiesInStudy, AccessionNumber, StudyDescription returned; output to a file, parsed afterwards);
  responses/s = Pending responses ÷ wall time of the findscu process. Each round runs spanning, then Orthanc;
  `--rounds` rounds per strategy. Reported: medians, the median of the per-round ratios spanning ÷ Orthanc (target
  >= 0.7), whether every spanning answer held exactly the unique StudyInstanceUIDs with a final Success, the
  listener's peak RSS (VmHWM) after its runs (target < 300 MB), and the CPU seconds the listener, the archives and
  Orthanc used during each run.
* Reference: in the first `--direct-rounds` rounds of the first strategy, the archives are also queried directly,
  one findscu each, all at once (no listener): the unique studies per second they deliver on this machine is the
  ceiling of any spanning here, since they share its 2 cores with the listener.

    .venv/bin/python bench/scp_volume.py [--studies-per-source 5000] [--sources 8] [--rounds 3]
                                         [--strategies FIRST_WINS,MOST_COMPLETE] [--direct-rounds 1] [--keep DIR]
    .venv/bin/python bench/scp_volume.py --studies-per-source 250 --sources 4 --rounds 1   # a quick check
"""
from __future__ import annotations

import argparse
import json
import multiprocessing
import os
import random
import re
import signal
import socket
import statistics
import subprocess
import sys
import tempfile
import threading
import time
from contextlib import ExitStack
from io import BytesIO
from pathlib import Path

import httpx

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from pydicom import Dataset  # noqa: E402
from pydicom.dataset import FileMetaDataset  # noqa: E402
from pydicom.filewriter import dcmwrite  # noqa: E402
from pydicom.uid import PYDICOM_IMPLEMENTATION_UID, ExplicitVRLittleEndian  # noqa: E402
from pynetdicom import _config as pynetdicom_config  # noqa: E402

from services.pacs_sim import Catalog, PacsSimulator  # noqa: E402
from services.pacs_sim.catalog import (  # noqa: E402
    DESCRIPTIONS, FAMILY, GIVEN, PHYSICIANS, SOP_CLASSES, make_uid,
)
from shared.dicom.levels import QueryLevel  # noqa: E402
from tests.peers.orthanc import OrthancPeer  # noqa: E402
from tests.peers.services import ServiceProcess  # noqa: E402

SEED = 23
FINDSCU = "/usr/bin/findscu"
PYTHON = str(Path(sys.executable))
REPO = Path(__file__).resolve().parents[1]
RETURN_KEYS = ["StudyInstanceUID", "PatientName", "PatientID", "StudyDate", "ModalitiesInStudy", "AccessionNumber",
               "StudyDescription"]
RESPONSE_LINE = re.compile(r"Find Response: (\d+) \((\w+)\)")
STUDY_UID_LINE = re.compile(r"\(0020,000d\) UI \[([0-9.]+)\x00?\]")  # an odd-length UID shows its NUL pad
FINAL_LINE = re.compile(r"Received Final Find Response \((\w+)\)")


# --- the studies --------------------------------------------------------------------------------------------------


def study_rows(count: int, seed: int = SEED) -> list[dict]:
    """`count` studies as plain attribute dicts (one series, one instance each), over about count ÷ 2.5 patients;
    some names are non-ASCII (Latin-1 representable, as Orthanc answers in Latin-1)."""
    rng = random.Random(seed)
    patients = []
    for index in range(max(1, int(count / 2.5))):
        patients.append({"PatientName": f"{rng.choice(FAMILY)}^{rng.choice(GIVEN)}", "PatientID": f"VP{index:07d}",
                         "PatientBirthDate": f"{rng.randint(1935, 2015)}{rng.randint(1, 12):02d}"
                                             f"{rng.randint(1, 28):02d}",
                         "PatientSex": rng.choice("FMO")})
    rows = []
    for index in range(count):
        modality = rng.choice(list(SOP_CLASSES))
        rows.append({
            **rng.choice(patients),
            "StudyInstanceUID": make_uid(seed, "study", index),
            "StudyDate": f"{rng.randint(2012, 2025)}{rng.randint(1, 12):02d}{rng.randint(1, 28):02d}",
            "StudyTime": f"{rng.randint(7, 19):02d}{rng.randint(0, 59):02d}{rng.randint(0, 59):02d}",
            "AccessionNumber": f"ACC{index:08d}",
            "StudyID": str(index % 10000 + 1),
            "StudyDescription": rng.choice(DESCRIPTIONS[modality]),
            "ReferringPhysicianName": rng.choice(PHYSICIANS),
            "SeriesInstanceUID": make_uid(seed, "series", index),
            "Modality": modality,
            "SeriesNumber": "1",
            "SOPClassUID": SOP_CLASSES[modality],
            "SOPInstanceUID": make_uid(seed, "instance", index),
            "InstanceNumber": "1",
        })
    return rows


def holders(count: int, sources: int) -> list[list[int]]:
    """Which studies each archive holds: every study exactly two archives. Studies go in rounds of `sources`:
    in round r, study a of the round goes to archives a and (a + 1 + r mod (sources - 1)) mod sources, a
    permutation, so every archive gets exactly two studies per full round."""
    held: list[list[int]] = [[] for _ in range(sources)]
    for index in range(count):
        first = index % sources
        second = (first + 1 + (index // sources) % max(1, sources - 1)) % sources
        held[first].append(index)
        if second != first:
            held[second].append(index)
    return held


def record(row: dict) -> Dataset:
    """A study row as a simulator catalog record (an instance record carries every level's attributes)."""
    ds = Dataset()
    for keyword, value in row.items():
        setattr(ds, keyword, value)
    return ds


def part10(row: dict) -> bytes:
    """A study row as a minimal Part-10 instance (no pixel data) for Orthanc."""
    ds = record(row)
    ds.SpecificCharacterSet = "ISO_IR 192"
    meta = FileMetaDataset()
    meta.MediaStorageSOPClassUID = ds.SOPClassUID
    meta.MediaStorageSOPInstanceUID = ds.SOPInstanceUID
    meta.TransferSyntaxUID = ExplicitVRLittleEndian
    meta.ImplementationClassUID = PYDICOM_IMPLEMENTATION_UID
    ds.file_meta = meta
    buffer = BytesIO()
    dcmwrite(buffer, ds, enforce_file_format=True)
    return buffer.getvalue()


# --- the simulated archives ---------------------------------------------------------------------------------------


def serve_archive(name: str, rows: list[dict], conn, quiet: bool = True) -> None:
    """Child process: one simulated archive holding `rows`; sends its DIMSE port, serves until told to stop.

    With `quiet`, pynetdicom does not pretty-print every request and response identifier: it does so by default
    (`_config.LOG_*_IDENTIFIERS`) even when its logger discards the lines, ~7 % of a simulated archive's CPU per
    response here. The archives stand in for machines of their own and share this machine's 2 cores with the
    listener, so they are made as cheap as they can be without changing their code."""
    if quiet:
        pynetdicom_config.LOG_REQUEST_IDENTIFIERS = pynetdicom_config.LOG_RESPONSE_IDENTIFIERS = False
    catalog = Catalog(record(row) for row in rows)
    catalog.records(QueryLevel.STUDY)  # derive the study records now, not during the first query
    with PacsSimulator(name, name, catalog) as sim:
        conn.send(sim.dimse_port)
        conn.recv()


def spawn_archives(names: list[str], rows: list[dict], quiet: bool = True) -> list:
    """One archive process per name, holding its share of `rows` (see `holders`); (process, pipe) pairs. They
    start in the background: `archive_ports` waits for them."""
    context = multiprocessing.get_context("spawn")
    children = []
    for name, indexes in zip(names, holders(len(rows), len(names))):
        parent, child = context.Pipe()
        process = context.Process(target=serve_archive, args=(name, [rows[i] for i in indexes], child, quiet),
                                  daemon=True)
        process.start()
        children.append((process, parent))
    return children


def archive_ports(children: list) -> list[int]:
    return [parent.recv() for _, parent in children]


def stop_archives(children: list) -> None:
    for _process, parent in children:
        try:
            parent.send("stop")
        except OSError:
            pass
    for process, _ in children:
        process.join(10)
        if process.is_alive():
            process.terminate()


# --- Orthanc ------------------------------------------------------------------------------------------------------


class VolumeOrthanc(OrthancPeer):
    """An Orthanc whose C-FIND answers every match (no result limits), without the DICOMweb plugin."""

    def config(self) -> dict:
        config = super().config()
        config.update({"LimitFindResults": 0, "LimitFindInstances": 0, "Plugins": [], "SaveJobs": False,
                       "StorageCompression": False})
        config.pop("DicomWeb", None)
        return config


def load_orthanc(peer: OrthancPeer, rows: list[dict], threads: int = 4) -> float:
    """POST every study's instance to /instances with `threads` clients; the seconds it took."""
    started = time.perf_counter()
    lock, position, errors = threading.Lock(), [0], []

    def work() -> None:
        with httpx.Client(base_url=peer.base_url, timeout=60.0) as client:
            while True:
                with lock:
                    index = position[0]
                    position[0] += 1
                if index >= len(rows) or errors:
                    return
                response = client.post("/instances", content=part10(rows[index]),
                                       headers={"Content-Type": "application/dicom"})
                if response.status_code != 200:
                    errors.append(f"{response.status_code} {response.text[:200]}")

    workers = [threading.Thread(target=work) for _ in range(threads)]
    for worker in workers:
        worker.start()
    for worker in workers:
        worker.join()
    if errors:
        raise SystemExit(f"loading Orthanc failed: {errors[0]}")
    return time.perf_counter() - started


# --- the listener -------------------------------------------------------------------------------------------------


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def configure(data_dir: Path, names: list[str], ports: list[int], strategies: list[str]) -> dict[str, str]:
    """Migrate the embedded database under `data_dir` and apply the sources and one spanner config per strategy;
    the called AE title of each strategy's config."""
    os.environ["AXIOM_DATA_DIR"] = str(data_dir)
    from shared.config import Settings
    from shared.db.migrations import upgrade_to_head
    from shared.db.session import make_engine, make_sessionmaker, session_scope
    from shared.provisioning import apply_config_yaml

    settings = Settings()
    data_dir.mkdir(parents=True, exist_ok=True)
    upgrade_to_head(settings.db.url)
    lines = ["sources:"]
    lines += [f"  - {{name: {n}, kind: dimse, ae_title: {n}, host: 127.0.0.1, port: {p}}}"
              for n, p in zip(names, ports)]
    lines.append("spanner_configs:")
    titles = {}
    for strategy in strategies:
        titles[strategy] = f"SPAN_{strategy[:11]}"
        lines += [f"  - name: volume-{strategy.lower().replace('_', '-')}", f"    scp_ae_title: {titles[strategy]}",
                  f"    deduplication_strategy: {strategy}", "    failure_strategy: BEST_EFFORT",
                  "    query_timeout_seconds: 600", "    max_concurrent_sources: 8", "    cache_ttl_seconds: 0",
                  "    sources:"]
        lines += [f"      - {{source: {n}, priority: {i + 1}}}" for i, n in enumerate(names)]
    engine = make_engine(settings.db.url)
    try:
        with session_scope(make_sessionmaker(engine)) as session:
            apply_config_yaml(session, "\n".join(lines) + "\n", scp=settings.scp)
    finally:
        engine.dispose()
    return titles


def start_listener(data_dir: Path, port: int, log_path: Path, log_level: str) -> ServiceProcess:
    env = {**os.environ, "AXIOM_DATA_DIR": str(data_dir), "AXIOM_SCP_HOST": "127.0.0.1", "AXIOM_SCP_PORT": str(port),
           "AXIOM_SCP_AE_TITLE": "AXIOM_VOLUME", "LOG_LEVEL": log_level, "PYTHONUNBUFFERED": "1"}
    env.pop("DATABASE_URL", None)
    listener = ServiceProcess("listener", [PYTHON, "-m", "services.listener"], env, log_path).start()
    deadline = time.monotonic() + 60
    while time.monotonic() < deadline:
        if not listener.running:
            raise SystemExit(f"the listener exited: {listener.tail()}")
        try:
            with socket.create_connection(("127.0.0.1", port), timeout=1):
                return listener
        except OSError:
            time.sleep(0.1)
    listener.stop()
    raise SystemExit(f"the listener did not listen within 60 s: {listener.tail()}")


def memory_mb(pid: int, field: str) -> float:
    """VmHWM (peak resident set) or VmRSS of a process, in MB (10^6 bytes)."""
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith(field + ":"):
            return int(line.split()[1]) * 1024 / 1e6
    raise RuntimeError(f"{field} not in /proc/{pid}/status")


def cpu_seconds(pid: int) -> float:
    """User + system CPU seconds a process has used so far (/proc/PID/stat, clock ticks)."""
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


class CpuMeter:
    """CPU seconds used by groups of processes between `start()` and `stop()`."""

    def __init__(self, groups: dict[str, list[int]]) -> None:
        self.groups = groups
        self._before: dict[int, float] = {}

    def start(self) -> None:
        self._before = {pid: cpu_seconds(pid) for pids in self.groups.values() for pid in pids}

    def stop(self) -> dict[str, float]:
        return {name: sum(cpu_seconds(pid) - self._before[pid] for pid in pids) for name, pids in self.groups.items()}


# --- one query ----------------------------------------------------------------------------------------------------


def findscu_argv(ae_title: str, port: int) -> list[str]:
    return [FINDSCU, "-S", "-v", "-aet", "VOLUMEBENCH", "-aec", ae_title, "-to", "600", "-ta", "600", "-td", "600",
            "-k", "QueryRetrieveLevel=STUDY", *[arg for key in RETURN_KEYS for arg in ("-k", key)],
            "127.0.0.1", str(port)]


def parse_output(output: Path, code: int) -> tuple[int, str, list[str]]:
    """Pending responses, the final status and the StudyInstanceUIDs of one findscu -v output."""
    text = output.read_text(encoding="latin-1")
    pending = sum(1 for _, status in RESPONSE_LINE.findall(text) if status == "Pending")
    finals = FINAL_LINE.findall(text)
    return pending, (finals[-1] if finals else f"none (exit {code})"), STUDY_UID_LINE.findall(text)


def run_findscu(ae_title: str, port: int, output: Path, meter: CpuMeter) -> dict:
    """One `findscu -S -v` for every study (output to a file, parsed afterwards); its wall time, Pending
    responses, final status, StudyInstanceUIDs, and the CPU the measured processes used meanwhile."""
    with open(output, "wb") as sink:
        meter.start()
        started = time.perf_counter()
        code = subprocess.run(findscu_argv(ae_title, port), check=False, stdout=sink,
                              stderr=subprocess.STDOUT).returncode
        seconds = time.perf_counter() - started
        cpu = meter.stop()
    pending, final, uids = parse_output(output, code)
    return {"seconds": seconds, "responses": pending, "rate": pending / seconds, "final": final, "exit": code,
            "uids": len(uids), "unique": len(set(uids)), "cpu": cpu}


def run_direct(names: list[str], ports: list[int], work: Path, tag: str, meter: CpuMeter) -> dict:
    """One findscu per archive, all at once, straight to the archives (no listener): how fast the archives alone
    deliver their answers on this machine, the ceiling of any spanning. `rate` counts unique studies per second."""
    outputs = [work / f"direct-{tag}-{name}.txt" for name in names]
    with ExitStack() as stack:
        sinks = [stack.enter_context(open(output, "wb")) for output in outputs]
        meter.start()
        started = time.perf_counter()
        processes = [subprocess.Popen(findscu_argv(name, port), stdout=sink, stderr=subprocess.STDOUT)
                     for name, port, sink in zip(names, ports, sinks)]
        codes = [process.wait() for process in processes]
        seconds = time.perf_counter() - started
        cpu = meter.stop()
    parsed = [parse_output(output, code) for output, code in zip(outputs, codes)]
    unique = len({uid for _, _, uids in parsed for uid in uids})
    finals = {final for _, final, _ in parsed}
    return {"seconds": seconds, "responses": sum(p for p, _, _ in parsed), "unique": unique,
            "rate": unique / seconds, "final": ",".join(sorted(finals)), "cpu": cpu}


# --- the run ------------------------------------------------------------------------------------------------------


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--studies-per-source", type=int, default=5000)
    parser.add_argument("--sources", type=int, default=8)
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--strategies", default="FIRST_WINS,MOST_COMPLETE")
    parser.add_argument("--direct-rounds", type=int, default=1,
                        help="rounds (of the first strategy) that also query the archives directly (0: never)")
    parser.add_argument("--loud-archives", action="store_true",
                        help="leave pynetdicom's identifier pretty-printing on in the simulated archives")
    parser.add_argument("--load-threads", type=int, default=4)
    parser.add_argument("--log-level", default="WARNING", help="the listener's LOG_LEVEL")
    parser.add_argument("--keep", type=Path, help="work here (kept: logs, findscu outputs) instead of a temp dir")
    parser.add_argument("--hold", action="store_true",
                        help="after each strategy's runs, keep everything up until Ctrl-C (to profile by hand)")
    args = parser.parse_args()
    strategies = [s.strip().upper() for s in args.strategies.split(",") if s.strip()]
    unique = args.sources * args.studies_per_source // 2
    names = [f"VOL{i}" for i in range(args.sources)]
    with tempfile.TemporaryDirectory(prefix="axiom-scp-volume-") as tmp:
        work = args.keep or Path(tmp)
        work.mkdir(parents=True, exist_ok=True)
        rows = study_rows(unique)
        children = spawn_archives(names, rows, quiet=not args.loud_archives)  # they start while Orthanc loads
        orthanc = VolumeOrthanc("orthanc", "ORTHANC", free_port(), free_port(), work)
        try:
            orthanc.start()
            load_seconds = load_orthanc(orthanc, rows, args.load_threads)
            stats = orthanc.statistics()
            print(f"Orthanc {stats['CountStudies']} studies / {stats['CountInstances']} instances, loaded in "
                  f"{load_seconds:.1f} s ({args.load_threads} REST clients; not counted)", flush=True)
            if int(stats["CountStudies"]) != unique:
                raise SystemExit(f"Orthanc holds {stats['CountStudies']} studies, expected {unique}")
            ports = archive_ports(children)
            print(f"{args.sources} simulated archives up, {args.studies_per_source} studies each", flush=True)
            titles = configure(work / "axiom-data", names, ports, strategies)
            setup = Setup(names, ports, [process.pid for process, _ in children], orthanc, unique, work)
            results = {}
            for position, strategy in enumerate(strategies):
                results[strategy] = measure(args, setup, titles[strategy], strategy,
                                            direct=position == 0)
        finally:
            orthanc.stop()
            stop_archives(children)
        (work / "results.json").write_text(json.dumps(results, indent=2))
        report(args, unique, load_seconds, results)


class Setup:
    """What every measurement needs: the archives, the baseline Orthanc, the expected count, the work dir."""

    def __init__(self, names: list[str], ports: list[int], archive_pids: list[int], orthanc: OrthancPeer,
                 unique: int, work: Path) -> None:
        self.names, self.ports, self.archive_pids = names, ports, archive_pids
        self.orthanc, self.unique, self.work = orthanc, unique, work

    @property
    def orthanc_pid(self) -> int:
        return self.orthanc._process.pid  # the peer keeps its Popen private; only read here


def measure(args, setup: Setup, ae_title: str, strategy: str, *, direct: bool) -> dict:
    """A fresh listener for `strategy`; `--rounds` rounds of spanning, Orthanc (and, with `direct`, the archives
    queried directly) findscu runs, one after the other; the listener's resident memory at rest and at its peak."""
    port = free_port()
    tag = strategy.lower()
    listener = start_listener(setup.work / "axiom-data", port, setup.work / f"listener-{tag}.log", args.log_level)
    meter = CpuMeter({"listener": [listener.pid], "archives": setup.archive_pids, "orthanc": [setup.orthanc_pid]})
    try:
        idle = memory_mb(listener.pid, "VmRSS")
        runs: dict[str, list[dict]] = {"span": [], "orthanc": [], "direct": []}
        for round_ in range(args.rounds):
            span = run_findscu(ae_title, port, setup.work / f"span-{tag}-{round_}.txt", meter)
            base = run_findscu(setup.orthanc.aet, setup.orthanc.dicom_port, setup.work / f"orthanc-{tag}-{round_}.txt",
                               meter)
            runs["span"].append(span)
            runs["orthanc"].append(base)
            line = (f"  {strategy} round {round_ + 1}: spanning {span['responses']} in {span['seconds']:.2f} s "
                    f"({span['rate']:.0f}/s, {span['unique']} unique, {span['final']}); Orthanc {base['responses']} "
                    f"in {base['seconds']:.2f} s ({base['rate']:.0f}/s, {base['final']})")
            if direct and round_ < args.direct_rounds:
                runs["direct"].append(run_direct(setup.names, setup.ports, setup.work, f"{tag}-{round_}", meter))
                line += (f"; archives direct {runs['direct'][-1]['unique']} unique in "
                         f"{runs['direct'][-1]['seconds']:.2f} s")
            print(line, flush=True)
            if span["unique"] != setup.unique or span["responses"] != setup.unique or span["final"] != "Success":
                print(f"  !! spanning answer: {span['responses']} responses, {span['unique']} unique UIDs, final "
                      f"{span['final']} (expected {setup.unique}, Success)", flush=True)
        peak = memory_mb(listener.pid, "VmHWM")
        if args.hold:
            hold(f"listener pid {listener.pid} on 127.0.0.1:{port}, called AE {ae_title}")
        return {**runs, "peak_rss_mb": peak, "idle_rss_mb": idle}
    finally:
        listener.stop()


def hold(what: str) -> None:
    """Keep everything up until SIGINT (Ctrl-C) or SIGTERM, to profile the listener by hand; then go on and clean
    up. The handlers are installed here: a shell starts background jobs with SIGINT ignored."""
    release = threading.Event()
    previous = {sig: signal.signal(sig, lambda *_: release.set()) for sig in (signal.SIGINT, signal.SIGTERM)}
    print(f"holding: {what}; SIGINT or SIGTERM to pid {os.getpid()} goes on", flush=True)
    try:
        while not release.wait(1.0):
            pass
    finally:
        for sig, handler in previous.items():
            signal.signal(sig, handler)


def median(runs: list[dict], key: str) -> float:
    return statistics.median(run[key] for run in runs)


def cpu_text(runs: list[dict]) -> str:
    return " / ".join(f"{statistics.median(run['cpu'][group] for run in runs):5.1f}"
                      for group in ("listener", "archives", "orthanc"))


def report(args, unique: int, load_seconds: float, results: dict) -> None:
    print(f"\nSCP volume: findscu STUDY query for all {unique} studies; spanning SCP over {args.sources} simulated "
          f"archives x {args.studies_per_source} studies (each study in 2 archives) vs one Orthanc holding the "
          f"{unique} (loaded in {load_seconds:.0f} s, not counted); {args.rounds} rounds (medians)")
    print(f"  {'':<30}{'responses':>10}{'seconds':>9}{'resp/s':>9}{'x Orthanc':>11}   CPU s listener / archives / "
          "Orthanc")
    for strategy, result in results.items():
        base, span, direct = result["orthanc"], result["span"], result["direct"]
        ratios = [s["rate"] / b["rate"] for s, b in zip(span, base)]
        ratio = statistics.median(ratios)
        exact = all(s["unique"] == unique and s["responses"] == unique and s["final"] == "Success" for s in span)
        rows = [("Orthanc (baseline)", base, 1.0), (f"spanning SCP, {strategy}", span, ratio)]
        if direct:
            rows.append(("archives direct (unique/s)", direct,
                         statistics.median(d["rate"] / b["rate"] for d, b in zip(direct, base))))  # same rounds
        for label, runs, factor in rows:
            print(f"  {label:<30}{median(runs, 'responses'):>10.0f}{median(runs, 'seconds'):>9.2f}"
                  f"{median(runs, 'rate'):>9.0f}{factor:>11.2f}   {cpu_text(runs)}")
        print(f"    {strategy}: ratio per round {', '.join(f'{r:.2f}' for r in ratios)} -> {ratio:.2f}, target >= 0.70 "
              f"{'PASS' if ratio >= 0.7 else 'MISS'}; answers {'exact' if exact else 'WRONG'} ({unique} unique "
              f"StudyInstanceUIDs, final Success, in every run); listener peak RSS {result['peak_rss_mb']:.0f} MB "
              f"(at rest {result['idle_rss_mb']:.0f} MB), target < 300 MB "
              f"{'PASS' if result['peak_rss_mb'] < 300 else 'MISS'}")
        if direct:
            ceiling = statistics.median(s["rate"] / d["rate"] for s, d in zip(span, direct))
            print(f"    spanning / archives direct: {ceiling:.2f} (the archives alone, {args.sources} findscu at "
                  "once: the ceiling of any spanning on this machine)")


if __name__ == "__main__":
    main()
