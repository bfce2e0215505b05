"""One span across two real Orthanc archives and the PACS simulator, over DIMSE and DICOMweb at once.

Orthanc A is queried over DIMSE (it answers in Latin-1), Orthanc B over DICOMweb (UTF-8 JSON) and the simulator over
DIMSE. A holds studies 1-5, B holds 3, 4 and 6, the simulator 2 and 6: the merged answer is studies 1-6, each naming
the archives that hold it.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

from services.pacs_sim import Catalog, Faults, PacsSimulator
from shared.adapters.executor import ThreadExecutor
from shared.adapters.query_ports import build_query_ports
from shared.connections import DicomwebConnection, DimseConnection
from shared.dicom.levels import QueryLevel
from shared.dicom.query_keys import build_identifier
from shared.spanning.engine import run_span
from shared.spanning.model import DedupStrategy, SourceSpec, SourceStatus, SpanPolicy, SpanRequest, SpanStatus
from tests.peers import free_port
from tests.peers.studies import build_instances, study, study_uid

pytestmark = pytest.mark.integration
REPO = Path(__file__).resolve().parents[2]
SIM_STUDIES = (2, 6)


@pytest.fixture(scope="module")
def simulator():
    catalog = Catalog()
    for instance in build_instances(SIM_STUDIES):
        catalog.add(instance)
    with PacsSimulator("SIM", "SIMPACS", catalog).start() as sim:
        yield sim


@pytest.fixture(scope="module")
def sources(two_orthancs, simulator) -> list[SourceSpec]:
    a, b = two_orthancs.a, two_orthancs.b
    return [
        SourceSpec("A", "dimse", DimseConnection(ae_title=a.aet, host="127.0.0.1", port=a.dicom_port), priority=1,
                   retrieve_ae_title=a.aet),
        SourceSpec("B", "dicomweb", DicomwebConnection(base_url=b.dicomweb_url), priority=2),
        SourceSpec("SIM", "dimse", DimseConnection(ae_title="SIMPACS", host="127.0.0.1", port=simulator.dimse_port),
                   priority=3, retrieve_ae_title="SIMPACS"),
    ]


def span(sources, keys, *, level=QueryLevel.STUDY, **policy):
    request = SpanRequest(level=level, identifier=build_identifier(keys, level))
    executor = ThreadExecutor()
    try:
        with build_query_ports() as ports:
            return run_span(request, sources, ports=ports, executor=executor,
                            policy=SpanPolicy(query_timeout_seconds=20, **policy))
    finally:
        executor.shutdown()


def test_one_span_merges_dimse_and_dicomweb_archives(sources):
    result = span(sources, ["StudyInstanceUID", "PatientID", "PatientName", "StudyDate", "ModalitiesInStudy"])

    assert result.status is SpanStatus.COMPLETED, result.outcomes
    assert [o.status for o in result.outcomes] == [SourceStatus.OK] * 3
    assert {o.source: o.match_count for o in result.outcomes} == {"A": 5, "B": 3, "SIM": 2}
    assert result.raw_count == 10
    holders = {m.dataset.StudyInstanceUID: m.sources for m in result.matches}
    assert holders == {
        study_uid(1): ("A",), study_uid(2): ("A", "SIM"), study_uid(3): ("A", "B"),
        study_uid(4): ("A", "B"), study_uid(5): ("A",), study_uid(6): ("B", "SIM"),
    }
    by_uid = {m.dataset.StudyInstanceUID: m.dataset for m in result.matches}
    assert list(by_uid[study_uid(6)].RetrieveAETitle) == ["B", "SIMPACS"]
    assert by_uid[study_uid(2)].RetrieveAETitle == ["ORTHANCA", "SIMPACS"]


def test_each_archive_is_decoded_with_its_own_charset_and_merged_output_is_utf8(sources):
    for dedup in DedupStrategy:
        result = span(sources, ["PatientID=PAT002", "PatientName", "StudyInstanceUID"], dedup_strategy=dedup)
        assert [o.match_count for o in result.outcomes] == [1, 1, 0]  # Latin-1 over DIMSE, UTF-8 JSON over QIDO
        (match,) = result.matches
        assert str(match.dataset.PatientName) == study(3).patient_name == "Müller^Jürgen"
        assert match.dataset.SpecificCharacterSet == "ISO_IR 192"
        assert match.sources == ("A", "B")


def test_a_dead_archive_is_failed_with_the_reason_and_the_others_still_answer(sources):
    dead_port = free_port()
    dead = SourceSpec("DEAD", "dimse", DimseConnection(ae_title="DEAD", host="127.0.0.1", port=dead_port), priority=9)
    result = span([*sources, dead], ["PatientID=PAT003", "StudyInstanceUID"])
    assert result.status is SpanStatus.PARTIAL
    outcome = {o.source: o for o in result.outcomes}["DEAD"]
    assert outcome.status is SourceStatus.FAILED
    assert f"connection refused 127.0.0.1:{dead_port}" in outcome.error
    assert {m.dataset.StudyInstanceUID for m in result.matches} == {study_uid(4), study_uid(5)}


@pytest.mark.timeout(60)
def test_an_archive_sending_malformed_datasets_is_failed_and_the_others_answer(sources):
    """Regression: pynetdicom yields an undecodable identifier while holding the AE-wide lock; the adapter must
    release it (close the response generator) before aborting, or every association of the AE deadlocks."""
    catalog = Catalog()
    for instance in build_instances((1,)):
        catalog.add(instance)
    with PacsSimulator("BAD", "BADPACS", catalog, faults=Faults(malformed=True)).start() as bad:
        broken = SourceSpec("BAD", "dimse", DimseConnection(ae_title="BADPACS", host="127.0.0.1", port=bad.dimse_port),
                            priority=0, max_retries=2)
        result = span([broken, *sources], ["PatientID=PAT001", "StudyInstanceUID"])
    outcome = result.outcomes[0]
    assert outcome.status is SourceStatus.FAILED and outcome.retries == 0  # malformed data is not retried
    assert "could not be decoded" in outcome.error or "malformed" in outcome.error
    assert result.status is SpanStatus.PARTIAL
    assert {m.dataset.StudyInstanceUID for m in result.matches} == {study_uid(1), study_uid(2)}


def test_series_and_image_levels_span_both_protocols(sources):
    series = span(sources, [f"StudyInstanceUID={study_uid(4)}", "SeriesInstanceUID", "Modality"],
                  level=QueryLevel.SERIES)
    assert len(series.matches) == 2 and all(m.sources == ("A", "B") for m in series.matches)
    images = span(sources, [f"StudyInstanceUID={study_uid(6)}", "SOPInstanceUID"], level=QueryLevel.IMAGE)
    assert len(images.matches) == study(6).instance_count
    assert all(m.sources == ("B", "SIM") for m in images.matches)


def run_cli(*args: str, data_dir: Path) -> subprocess.CompletedProcess:
    env = {**os.environ, "AXIOM_DATA_DIR": str(data_dir)}
    env.pop("DATABASE_URL", None)
    return subprocess.run([sys.executable, "-m", "services.cli.main", *args], capture_output=True, text=True,
                          env=env, cwd=REPO, timeout=60)


def test_cli_find_json_across_real_archives(two_orthancs, tmp_path):
    a, b = two_orthancs.a, two_orthancs.b
    proc = run_cli("find", "--source", f"A=dimse://{a.aet}@127.0.0.1:{a.dicom_port}",
                   "--source", f"B={b.dicomweb_url}", "-k", "PatientName=Smith*", "-k", "StudyDate",
                   "--json", data_dir=tmp_path)
    assert proc.returncode == 0, proc.stderr
    doc = json.loads(proc.stdout)
    assert doc["status"] == "completed" and doc["deduplicated_count"] == 2 and doc["raw_count"] == 3
    assert [s["source"] for s in doc["sources"]] == ["A", "B"]
    uids = {m["0020000D"]["Value"][0] for m in doc["matches"]}
    assert uids == {study_uid(4), study_uid(5)}


def test_cli_find_through_a_config_writes_the_query_log(two_orthancs, tmp_path):
    a, b = two_orthancs.a, two_orthancs.b
    config = tmp_path / "axiom.yaml"
    config.write_text(f"""
sources:
  - {{name: A, kind: dimse, ae_title: {a.aet}, host: 127.0.0.1, port: {a.dicom_port}}}
  - {{name: B, kind: dicomweb, base_url: "{b.dicomweb_url}"}}
spanner_configs:
  - name: main
    deduplication_strategy: MERGE_ALL
    sources:
      - {{source: A, priority: 1}}
      - {{source: B, priority: 2}}
""")
    assert run_cli("config", "apply", str(config), data_dir=tmp_path).returncode == 0
    proc = run_cli("find", "--config", "main", "-k", "PatientID=PAT001", "--json", data_dir=tmp_path)
    assert proc.returncode == 0, proc.stderr
    doc = json.loads(proc.stdout)
    assert doc["deduplicated_count"] == 2

    from shared.db.repo.query_logs import get_query_log
    from shared.db.session import make_engine, make_sessionmaker

    with make_sessionmaker(make_engine(f"sqlite:///{tmp_path / 'axiom.db'}"))() as session:
        row = get_query_log(session, query_id=doc["query_id"])
        assert row.status.value == "completed" and row.deduplicated_result_count == 2
        assert [o["source"] for o in row.source_outcomes] == ["A", "B"]


def test_cli_find_at_patient_level(two_orthancs, tmp_path):
    a = two_orthancs.a
    proc = run_cli("find", "--source", f"A=dimse://{a.aet}@127.0.0.1:{a.dicom_port}", "--level", "PATIENT",
                   "-k", "PatientID=PAT00*", "-k", "PatientName", "--json", data_dir=tmp_path)
    assert proc.returncode == 0, proc.stderr
    doc = json.loads(proc.stdout)
    assert sorted(m["00100020"]["Value"][0] for m in doc["matches"]) == ["PAT001", "PAT002", "PAT003"]


@pytest.mark.parametrize("args, message", [
    (["-k", "PatientNme=X"], "PatientNme"),
    (["--level", "VOLUME"], "invalid query level 'VOLUME'"),
    (["-k", "StudyDate=2024-13-45"], "StudyDate"),
])
def test_cli_user_errors_are_one_line_and_exit_2(args, message, tmp_path):
    proc = run_cli("find", "--source", "A=dimse://X@127.0.0.1:1", *args, data_dir=tmp_path)
    assert proc.returncode == 2
    assert message in proc.stderr and "Traceback" not in proc.stderr + proc.stdout
