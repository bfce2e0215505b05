"""The main API's DICOMweb path against Orthanc's own: QIDO-RS search latency and WADO-RS retrieve throughput.

* Sources: `--sources` real Orthancs (tests.peers.orthanc, DICOMweb plugin), each its own process, configured in a
  temp SQLite database (`shared.provisioning`, as `axiom config apply` does) as DICOMweb sources of one spanner
  config (priority = position, `max_concurrent_sources` = all of them, no cache, default deduplication).
* The API runs as deployed: `python -m services.api` (uvicorn) with DATABASE_URL, SECRET_KEY and AXIOM_API_PORT; a
  fresh process per half, so each half's peak memory is its own. The bench's user exists in that database and its
  access token is signed with the same SECRET_KEY (tests do the login route; here it would add argon2's 64 MiB to
  the API's peak memory, which is meant to measure streaming).
* QIDO: every Orthanc holds `--studies` studies (one series, one instance each, no pixel data), every study held by
  exactly two Orthancs (50 % shared: the union is sources x studies / 2). One search, `PatientName=--patient-name`
  with `includefield=StudyDescription&includefield=ModalitiesInStudy` (a realistic subset: one family name), goes
  through the API (`GET /api/v1/spanner/qido/studies`) and straight to the first Orthanc's `/dicom-web/studies`
  (the baseline), interleaved, `--rounds` rounds after `--warmup` untimed ones; each round also asks all Orthancs
  at once straight (reference: what the sources alone take in parallel on this machine, the floor of any span).
  Reported: p50/p95 per path, the ratio p50 API / p50 Orthanc (target <= 1.3), and whether every API answer held
  exactly the expected union (every Orthanc answer its own share).
* WADO: one study of `--wado-instances` x `--wado-instance-mb` MiB of random 16-bit pixel data, loaded into the
  Orthancs at positions 1..`--wado-holders` (not the first: the API must find the holders and take the one of
  highest priority); `GET /api/v1/spanner/wado/studies/{uid}` and that holder's own `/dicom-web/studies/{uid}`,
  both `Accept: multipart/related; type="application/dicom"`, streamed to nothing (parts counted on the fly),
  `--wado-rounds` interleaved rounds. Reported: MB/s each, the median per-round ratio API / Orthanc (target >= 0.8),
  time to first byte, the API's peak RSS (VmHWM of the fresh process, target < 200 MB: streaming, not buffering).
  Before the timed rounds one untimed retrieve each way is parsed completely: every SOP Instance UID once and
  every PixelData identical to what was loaded.
  Until the API serves the WADO-RS route (not in its OpenAPI schema) the WADO half reports so and fails.

    .venv/bin/python bench/qido.py [--studies 2000] [--rounds 40] [--wado-instances 100] [--wado-instance-mb 2]
                                   [--wado-rounds 5] [--only qido|wado] [--keep DIR]
    .venv/bin/python bench/qido.py --only qido --studies 200 --rounds 20     # a quick check
"""

from __future__ import annotations

import argparse
import concurrent.futures
import fnmatch
import os
import re
import secrets
import signal
import statistics
import sys
import tempfile
import time
from pathlib import Path

import httpx

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from bench.scp_volume import free_port, holders, load_orthanc, memory_mb, study_rows  # noqa: E402
from bench.wado_study import checked_retrieve, load_wado_study, streamed_retrieve  # noqa: E402
from tests.peers.orthanc import OrthancPeer, orthanc_available  # noqa: E402
from tests.peers.services import STACK_VARIABLES, ServiceProcess  # noqa: E402

PYTHON = str(Path(sys.executable))
CONFIG = "bench-dicomweb"
QIDO_ROOT, WADO_ROOT = "/api/v1/spanner/qido", "/api/v1/spanner/wado"
INCLUDE = ("StudyDescription", "ModalitiesInStudy")
DICOM_JSON = {"Accept": "application/dicom+json"}
STUDY_UID_TAG = "0020000D"


# --- the API as a process -----------------------------------------------------------------------------------------


class Api:
    """The bench's database (migrated, one user, the sources and one spanner config) and `python -m services.api`
    processes on it, one per half."""

    def __init__(self, work: Path, peers: list[OrthancPeer], log_level: str) -> None:
        from shared.config import ScpSettings
        from shared.db.migrations import upgrade_to_head
        from shared.db.models import Role
        from shared.db.session import make_engine, make_sessionmaker, session_scope
        from shared.provisioning import apply_config_yaml
        from shared.security.principal import Principal, PrincipalKind
        from shared.security.tokens import issue_token
        from shared.security.users import create_user

        self.work, self.log_level = work, log_level
        self.url, self.secret = f"sqlite:///{work / 'axiom.db'}", secrets.token_hex(32)
        upgrade_to_head(self.url)
        engine = make_engine(self.url)
        try:
            with session_scope(make_sessionmaker(engine)) as session:
                create_user(session, username="bench", password=secrets.token_hex(16))
                apply_config_yaml(session, config_yaml(peers), scp=ScpSettings())
        finally:
            engine.dispose()
        principal = Principal("bench", Role.USER, PrincipalKind.USER)
        self.headers = {"Authorization": f"Bearer {issue_token(principal, self.secret, 6 * 3600)}"}
        self.process: ServiceProcess | None = None

    def start(self, tag: str) -> str:
        """A fresh API process; its base URL once /health answers 200."""
        port = free_port()
        env = {k: v for k, v in os.environ.items()  # the embedded mode with our settings only
               if k not in STACK_VARIABLES and not k.startswith("AXIOM_")}
        env.update({"DATABASE_URL": self.url, "SECRET_KEY": self.secret, "AXIOM_API_HOST": "127.0.0.1",
                    "AXIOM_API_PORT": str(port), "AXIOM_DATA_DIR": str(self.work),
                    "AXIOM_SPOOL_DIR": str(self.work / f"spool-{tag}"), "LOG_LEVEL": self.log_level,
                    "PYTHONUNBUFFERED": "1"})
        self.process = ServiceProcess(f"api-{tag}", [PYTHON, "-m", "services.api"], env,
                                      self.work / f"api-{tag}.log").start()
        base = f"http://127.0.0.1:{port}"
        deadline = time.monotonic() + 60
        while time.monotonic() < deadline:
            if not self.process.running:
                raise SystemExit(f"the API exited: {self.process.tail()}")
            try:
                if httpx.get(f"{base}/health", timeout=2).status_code == 200:
                    return base
            except httpx.TransportError:
                pass
            time.sleep(0.2)
        tail = self.process.tail()
        self.stop()
        raise SystemExit(f"the API did not answer /health with 200 within 60 s: {tail}")

    def stop(self) -> None:
        if self.process is not None:
            self.process.stop()
            self.process = None


def config_yaml(peers: list[OrthancPeer]) -> str:
    """The sources (DICOMweb) and the spanner config, as `axiom config apply` takes them."""
    lines = ["sources:"]
    lines += [f'  - {{name: {p.name}, kind: dicomweb, base_url: "{p.dicomweb_url}"}}' for p in peers]
    lines += ["spanner_configs:", f"  - name: {CONFIG}", "    query_timeout_seconds: 300",
              f"    max_concurrent_sources: {len(peers)}", "    cache_ttl_seconds: 0", "    sources:"]
    lines += [f"      - {{source: {p.name}, priority: {i + 1}}}" for i, p in enumerate(peers)]
    return "\n".join(lines) + "\n"


def config_id(client: httpx.Client) -> int:
    """The bench config's id, as a client finds it (GET /api/v1/config/spanner)."""
    answer = client.get("/api/v1/config/spanner")
    answer.raise_for_status()
    return next(int(item["id"]) for item in answer.json() if item["name"] == CONFIG)


# --- QIDO ---------------------------------------------------------------------------------------------------------


def matching(rows: list[dict], pattern: str) -> set[str]:
    """StudyInstanceUIDs of the rows whose PatientName matches `pattern` (PS3.4 C.2.2.2.4 wildcards; Orthanc
    matches PN case-insensitively)."""
    return {r["StudyInstanceUID"] for r in rows if fnmatch.fnmatchcase(r["PatientName"].lower(), pattern.lower())}


def qido_query(pattern: str) -> str:
    """The query string both paths get, built by hand: Orthanc's DICOMweb plugin does not percent-decode (`*`)."""
    return f"?PatientName={pattern}" + "".join(f"&includefield={k}" for k in INCLUDE)


def timed_search(client: httpx.Client, url: str) -> tuple[float, set[str], int]:
    """(milliseconds, StudyInstanceUIDs, matches) of one search; the clock covers the whole answer's bytes."""
    started = time.perf_counter()
    answer = client.get(url, headers=DICOM_JSON)
    elapsed = (time.perf_counter() - started) * 1000.0
    if answer.status_code == 204:
        return elapsed, set(), 0
    if answer.status_code != 200:
        raise SystemExit(f"GET {url}: {answer.status_code} {answer.text[:300]}")
    matches = answer.json()
    return elapsed, {m[STUDY_UID_TAG]["Value"][0] for m in matches}, len(matches)


def parallel_search(clients: list[httpx.Client], url: str, pool) -> float:
    """Milliseconds until every source answered the search, all asked at once."""
    started = time.perf_counter()
    for answer in pool.map(lambda client: client.get(url, headers=DICOM_JSON), clients):
        if answer.status_code not in (200, 204):
            raise SystemExit(f"direct search: {answer.status_code} {answer.text[:300]}")
    return (time.perf_counter() - started) * 1000.0


def run_qido(args, peers: list[OrthancPeer], api: Api, rows: list[dict], held: list[list[int]]) -> dict:
    """Interleaved rounds API / first Orthanc / all Orthancs at once; latencies and answer checks."""
    query = qido_query(args.patient_name)
    union = matching(rows, args.patient_name)
    own = matching([rows[i] for i in held[0]], args.patient_name)
    base = api.start("qido")
    clients = [httpx.Client(base_url=p.dicomweb_url, timeout=120) for p in peers]
    pool = concurrent.futures.ThreadPoolExecutor(len(peers))
    try:
        with httpx.Client(base_url=base, headers=api.headers, timeout=300) as client:
            api_url = f"{QIDO_ROOT}/studies{query}&spanner_config_id={config_id(client)}"
            times: dict[str, list[float]] = {"api": [], "direct": [], "parallel": []}
            wrong = []
            for round_ in range(-args.warmup, args.rounds):
                steps = ["api", "direct", "parallel"]
                for step in steps[round_ % 3:] + steps[:round_ % 3]:  # each path goes first in turn
                    if step == "parallel":
                        figure = parallel_search(clients, f"/studies{query}", pool)
                    else:
                        target, url = (client, api_url) if step == "api" else (clients[0], f"/studies{query}")
                        figure, uids, count = timed_search(target, url)
                        if (uids, count) != ((union, len(union)) if step == "api" else (own, len(own))):
                            wrong.append(f"round {round_}: {step} answered {count} matches, {len(uids)} unique")
                    if round_ >= 0:
                        times[step].append(figure)
            rss = {"peak": memory_mb(api.process.pid, "VmHWM"), "now": memory_mb(api.process.pid, "VmRSS")}
            inside = span_figures(client, args.rounds)
    finally:
        pool.shutdown()
        for c in clients:
            c.close()
        api.stop()
    return {"times": times, "wrong": wrong, "union": len(union), "own": len(own), "rss": rss, "inside": inside}


def span_figures(client: httpx.Client, rounds: int) -> dict[str, list[float]]:
    """What the API's query log says of the timed rounds' spans (the newest `rounds`, up to 1000): each span's
    duration and its slowest source's latency as the API measured it (ms)."""
    answer = client.get("/api/v1/spanner/services/logs", params={"limit": min(rounds, 1000)})
    answer.raise_for_status()
    logs = [log for log in answer.json() if log["query_type"] == "QIDO" and log["duration_ms"] is not None]
    return {"span": [log["duration_ms"] for log in logs],
            "source": [max(o["latency_ms"] or 0.0 for o in log["source_outcomes"]) for log in logs]}


# --- WADO ---------------------------------------------------------------------------------------------------------


def wado_route_missing(client: httpx.Client) -> str | None:
    """Why the API cannot be benchmarked on WADO-RS (None when its schema has the study retrieve route)."""
    schema = client.get("/api/v1/openapi.json")
    schema.raise_for_status()
    route = re.compile(re.escape(WADO_ROOT) + r"/studies/\{[^/{}]+\}")
    if not any(route.fullmatch(path) and "get" in operations
               for path, operations in schema.json().get("paths", {}).items()):
        return f"route not available: GET {WADO_ROOT}/studies/{{study}} is not in the API's OpenAPI schema"
    return None


def run_wado(args, peers: list[OrthancPeer], api: Api) -> dict:
    """Load the study, then a fresh API: one checked retrieve each way, then interleaved timed rounds."""
    holders_ = peers[1:1 + args.wado_holders]
    started = time.perf_counter()
    study, digests, total = load_wado_study(holders_, args.wado_instances, args.wado_instance_mb)
    loaded = time.perf_counter() - started
    base = api.start("wado")
    try:
        with httpx.Client(base_url=base, headers=api.headers, timeout=600) as client, \
                httpx.Client(base_url=holders_[0].dicomweb_url, timeout=600) as direct:
            missing = wado_route_missing(client)
            if missing:
                return {"error": missing}
            rest = memory_mb(api.process.pid, "VmRSS")
            paths = {"api": (client, f"{WADO_ROOT}/studies/{study}?spanner_config_id={config_id(client)}"),
                     "direct": (direct, f"/studies/{study}")}
            problems = [f"{step}: {problem}" for step, (target, url) in paths.items()
                        for problem in checked_retrieve(target, url, digests)]
            runs: dict[str, list[dict]] = {"api": [], "direct": []}
            for round_ in range(args.wado_rounds):
                for step in (["api", "direct"] if round_ % 2 == 0 else ["direct", "api"]):
                    runs[step].append(streamed_retrieve(*paths[step]))
            peak = memory_mb(api.process.pid, "VmHWM")
    finally:
        api.stop()
    return {"runs": runs, "problems": problems, "peak": peak, "rest": rest, "total": total, "loaded": loaded,
            "holders": [p.name for p in holders_], "instances": len(digests)}


# --- report -------------------------------------------------------------------------------------------------------


def percentile(values: list[float], fraction: float) -> float:
    ordered = sorted(values)
    return ordered[max(0, int(round(fraction * len(ordered))) - 1)]


def report_qido(args, result: dict) -> bool:
    times = result["times"]
    ratio = statistics.median(times["api"]) / statistics.median(times["direct"])
    print(f"\nQIDO-RS studies search PatientName={args.patient_name} (+includefield {', '.join(INCLUDE)}): "
          f"{args.sources} Orthanc DICOMweb sources x {args.studies} studies (each study in 2), "
          f"{args.rounds} interleaved rounds after {args.warmup} warm-up")
    print(f"  {'':<38}{'matches':>8}{'p50 ms':>9}{'p95 ms':>9}{'x Orthanc p50':>15}")
    for label, key, matches in (("Orthanc direct (first source)", "direct", result["own"]),
                                (f"API spanning {args.sources} sources (merged)", "api", result["union"]),
                                (f"{args.sources} Orthancs direct at once (reference)", "parallel", None)):
        p50 = statistics.median(times[key])
        shown = "" if matches is None else str(matches)
        print(f"  {label:<38}{shown:>8}{p50:>9.1f}{percentile(times[key], 0.95):>9.1f}"
              f"{p50 / statistics.median(times['direct']):>15.2f}")
    print(f"    ratio p50 API / Orthanc {ratio:.2f}, target <= 1.3 {'PASS' if ratio <= 1.3 else 'MISS'}; "
          f"API / Orthancs at once {statistics.median(times['api']) / statistics.median(times['parallel']):.2f}; "
          f"answers {'exact in every round' if not result['wrong'] else 'WRONG'}; API peak RSS "
          f"{result['rss']['peak']:.0f} MB (now {result['rss']['now']:.0f} MB)")
    inside = result["inside"]
    if inside["span"]:
        span, source = statistics.median(inside["span"]), statistics.median(inside["source"])
        print(f"    inside the API (its query log, p50 of {len(inside['span'])}): span {span:.1f} ms, of which the "
              f"slowest source as the API saw it {source:.1f} ms; outside the span (HTTP, auth, plan, JSON) "
              f"{statistics.median(times['api']) - span:.1f} ms")
    for line in result["wrong"][:10]:
        print(f"    !! {line}")
    return not result["wrong"]


def report_wado(args, result: dict) -> bool:
    print(f"\nWADO-RS study retrieve: {args.wado_instances} instances x {args.wado_instance_mb:g} MiB of pixel data",
          end="")
    if "error" in result:
        print(f"\n    !! {result['error']}")
        return False
    runs = result["runs"]
    ratios = [a["mbps"] / d["mbps"] for a, d in zip(runs["api"], runs["direct"])]
    ratio, peak = statistics.median(ratios), result["peak"]
    print(f" ({result['total'] / 1e6:.0f} MB), held by {', '.join(result['holders'])} (loaded in "
          f"{result['loaded']:.0f} s, not counted); {args.wado_rounds} interleaved rounds (medians)")
    print(f"  {'':<34}{'parts':>6}{'MB':>8}{'seconds':>9}{'MB/s':>8}{'first byte s':>14}{'x Orthanc':>11}")
    for label, key, factor in ((f"Orthanc direct ({result['holders'][0]})", "direct", 1.0),
                               ("API spanning", "api", ratio)):
        mid = {name: statistics.median(r[name] for r in runs[key]) for name in ("parts", "bytes", "seconds", "mbps",
                                                                                 "ttfb")}
        print(f"  {label:<34}{mid['parts']:>6.0f}{mid['bytes'] / 1e6:>8.1f}{mid['seconds']:>9.2f}{mid['mbps']:>8.1f}"
              f"{mid['ttfb']:>14.2f}{factor:>11.2f}")
    parts_ok = all(r["parts"] == result["instances"] for rounds in runs.values() for r in rounds)
    print(f"    throughput ratio per round {', '.join(f'{r:.2f}' for r in ratios)} -> {ratio:.2f}, target >= 0.8 "
          f"{'PASS' if ratio >= 0.8 else 'MISS'}; API peak RSS {peak:.0f} MB (at rest {result['rest']:.0f} MB), "
          f"target < 200 MB {'PASS' if peak < 200 else 'MISS'}; parts {'all' if parts_ok else 'NOT all'} "
          f"{result['instances']} in every run; content {'identical' if not result['problems'] else 'WRONG'}")
    for line in result["problems"][:10]:
        print(f"    !! {line}")
    return parts_ok and not result["problems"]


# --- the run ------------------------------------------------------------------------------------------------------


def start_peers(count: int, work: Path) -> list[OrthancPeer]:
    peers = []
    for index in range(count):
        peers.append(OrthancPeer(f"BENCH{index}", f"BENCH{index}", free_port(), free_port(), work))
        peers[-1].start()
    return peers


def load_qido_studies(args, peers: list[OrthancPeer]) -> tuple[list[dict], list[list[int]]]:
    """Every Orthanc's share of the unique studies, loaded over REST by all at once; checked by /statistics."""
    rows = study_rows(args.sources * args.studies // 2)
    held = holders(len(rows), len(peers))
    started = time.perf_counter()
    with concurrent.futures.ThreadPoolExecutor(len(peers)) as pool:
        list(pool.map(lambda pair: load_orthanc(pair[0], [rows[i] for i in pair[1]], args.load_threads),
                      zip(peers, held)))
    for peer, indexes in zip(peers, held):
        if int(peer.statistics()["CountStudies"]) != len(indexes):
            raise SystemExit(f"{peer.name} holds {peer.statistics()['CountStudies']} studies, expected {len(indexes)}")
    print(f"{len(peers)} Orthancs loaded with {len(held[0])} studies each ({len(rows)} unique) in "
          f"{time.perf_counter() - started:.0f} s (not counted)", flush=True)
    return rows, held


def parse_args() -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--only", choices=("qido", "wado"), help="run one half only")
    parser.add_argument("--sources", type=int, default=4)
    parser.add_argument("--studies", type=int, default=2000, help="studies per Orthanc (each study in two)")
    parser.add_argument("--patient-name", default="Smith*", help="the QIDO PatientName matching key")
    parser.add_argument("--rounds", type=int, default=40)
    parser.add_argument("--warmup", type=int, default=3)
    parser.add_argument("--wado-instances", type=int, default=100)
    parser.add_argument("--wado-instance-mb", type=float, default=2.0, help="MiB of pixel data per instance")
    parser.add_argument("--wado-rounds", type=int, default=5)
    parser.add_argument("--wado-holders", type=int, default=2, help="Orthancs holding the big study (from the 2nd)")
    parser.add_argument("--load-threads", type=int, default=2, help="REST clients per Orthanc while loading")
    parser.add_argument("--log-level", default="WARNING", help="the API's LOG_LEVEL")
    parser.add_argument("--keep", type=Path, help="work here (kept: logs, Orthanc storage) instead of a temp dir")
    args = parser.parse_args()
    if args.sources < 2 or not 1 <= args.wado_holders < args.sources or args.warmup < 0 \
            or min(args.studies, args.rounds, args.wado_rounds, args.wado_instances) < 1 or args.wado_instance_mb <= 0:
        parser.error("--sources >= 2, 1 <= --wado-holders < --sources, --warmup >= 0, --wado-instance-mb > 0, and "
                     "--studies, --rounds, --wado-rounds, --wado-instances >= 1")
    return args


def main() -> int:
    args = parse_args()
    if not orthanc_available():
        raise SystemExit("Orthanc with its DICOMweb plugin is not installed (see /work/shared/PEERS.md)")
    signal.signal(signal.SIGTERM, lambda *_: sys.exit(143))  # clean up (finally) on SIGTERM as on Ctrl-C
    ok = True
    with tempfile.TemporaryDirectory(prefix="axiom-bench-qido-") as tmp:
        work = args.keep or Path(tmp)
        work.mkdir(parents=True, exist_ok=True)
        peers: list[OrthancPeer] = []
        api = None
        try:
            peers = start_peers(args.sources, work)
            api = Api(work, peers, args.log_level)
            if args.only != "wado":
                rows, held = load_qido_studies(args, peers)
                ok = report_qido(args, run_qido(args, peers, api, rows, held)) and ok
            if args.only != "qido":
                ok = report_wado(args, run_wado(args, peers, api)) and ok
        finally:
            if api is not None:
                api.stop()
            for peer in peers:
                peer.stop()
    return 0 if ok else 1


if __name__ == "__main__":
    sys.exit(main())
