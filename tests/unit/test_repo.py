"""shared.db.repo on SQLite: sources, spanner configs, the span plan and the query log."""

from __future__ import annotations

from datetime import datetime, timedelta, timezone

import pytest
from pydantic import ValidationError
from pydicom import Dataset
from sqlalchemy import delete, insert, select
from sqlalchemy.exc import IntegrityError

from shared.connections import DicomwebConnection, DimseConnection
from shared.db.models import Base, DicomDestination, Source, SpannerConfig, SpannerSourceMapping
from shared.db.repo.destinations import delete_destination, get_destination, list_destinations, upsert_destination
from shared.db.repo.query_logs import finish_query_log, get_query_log, list_query_logs, start_query_log
from shared.db.repo.sources import get_source, list_sources, upsert_source
from shared.db.repo.spanner_configs import (
    MappingSpec,
    get_config_by_scp_ae_title,
    get_spanner_config,
    load_span_plan,
    replace_mappings,
    upsert_spanner_config,
)
from shared.db.session import make_engine, make_sessionmaker, normalize_database_url
from shared.spanning.model import (
    DedupStrategy,
    FailureStrategy,
    Match,
    SourceOutcome,
    SourceStatus,
    SpanResult,
    SpanStatus,
)


@pytest.fixture()
def session(tmp_path):
    engine = make_engine(f"sqlite:///{tmp_path / 'axiom.db'}")
    Base.metadata.create_all(engine)
    with make_sessionmaker(engine)() as session:
        yield session
    engine.dispose()


def seed(session) -> SpannerConfig:
    upsert_source(session, name="PACS0", kind="dimse", connection=DimseConnection(ae_title="ORTHANC", host="h", port=1))
    upsert_source(session, name="WEB1", kind="dicomweb", connection={"base_url": "http://web/dicom-web"})
    upsert_source(session, name="OFF", kind="dimse", is_enabled=False,
                  connection={"ae_title": "OFF", "host": "h", "port": 2})
    upsert_source(session, name="PACS9", kind="dimse", connection={"ae_title": "P9", "host": "h", "port": 9})
    config, _ = upsert_spanner_config(session, name="main", failure_strategy=FailureStrategy.MINIMUM_THRESHOLD,
                                      minimum_success_threshold=2, deduplication_strategy=DedupStrategy.MERGE_ALL,
                                      query_timeout_seconds=12.5, max_concurrent_sources=3)
    replace_mappings(session, config=config, mappings=[
        MappingSpec(source="WEB1", priority=2),
        MappingSpec(source="PACS0", priority=1, timeout_seconds=7, max_retries=2,
                    additional_query_filters={"Modality": "CT"}),
        MappingSpec(source="OFF", priority=0),
        MappingSpec(source="PACS9", priority=0, is_enabled=False),
    ])
    session.commit()
    return config


def test_upsert_source_reports_what_it_did(session):
    conn = {"ae_title": "A", "host": "h", "port": 1}
    assert upsert_source(session, name="A", kind="dimse", connection=conn).action == "created"
    assert upsert_source(session, name="A", kind="dimse", connection=conn).action == "unchanged"
    assert upsert_source(session, name="A", kind="dimse", connection={**conn, "port": 2}).action == "updated"
    assert get_source(session, name="A").connection == DimseConnection(ae_title="A", host="h", port=2)
    assert [s.name for s in list_sources(session)] == ["A"]
    with pytest.raises(ValueError, match="does not match"):
        upsert_source(session, name="A", kind="dicomweb", connection={**conn, "kind": "dimse"})


def test_connection_json_is_validated_on_write_and_read(session):
    with pytest.raises(ValidationError, match="port"):
        Source(name="bad", kind="dimse", connection_data={"kind": "dimse", "ae_title": "A", "host": "h", "port": 0})
    source = Source(name="web", kind="dimse")
    source.connection = DicomwebConnection(base_url="https://x/")
    assert source.kind == "dicomweb" and source.connection_data["base_url"] == "https://x"


def test_load_span_plan_uses_enabled_sources_by_priority(session):
    config = seed(session)
    plan = load_span_plan(session, config_name="main")
    assert plan.config.id == config.id
    assert [s.name for s in plan.sources] == ["PACS0", "WEB1"]
    pacs, web = plan.sources
    assert (pacs.priority, pacs.timeout_seconds, pacs.max_retries) == (1, 7.0, 2)
    assert pacs.retrieve_ae_title == "ORTHANC" and web.retrieve_ae_title == "WEB1"
    assert dict(pacs.additional_filters) == {"Modality": "CT"}
    assert isinstance(pacs.connection, DimseConnection) and web.kind == "dicomweb"
    assert plan.policy.failure_strategy is FailureStrategy.MINIMUM_THRESHOLD
    assert plan.policy.minimum_success_threshold == 2 and plan.policy.max_concurrent_sources == 3
    assert plan.policy.dedup_strategy is DedupStrategy.MERGE_ALL and plan.policy.query_timeout_seconds == 12.5
    assert load_span_plan(session, config_id=config.id).config.name == "main"


def test_load_span_plan_errors(session):
    seed(session)
    with pytest.raises(LookupError, match="nope"):
        load_span_plan(session, config_name="nope")
    get_spanner_config(session, name="main").is_enabled = False
    with pytest.raises(ValueError, match="disabled"):
        load_span_plan(session, config_name="main")


def test_replace_mappings_refuses_unknown_sources(session):
    config = seed(session)
    with pytest.raises(LookupError, match="GHOST"):
        replace_mappings(session, config=config, mappings=[MappingSpec(source="GHOST")])
    assert not replace_mappings(session, config=config, mappings=[
        MappingSpec(source="WEB1", priority=2),
        MappingSpec(source="PACS0", priority=1, timeout_seconds=7, max_retries=2,
                    additional_query_filters={"Modality": "CT"}),
        MappingSpec(source="OFF", priority=0),
        MappingSpec(source="PACS9", priority=0, is_enabled=False),
    ])


def test_foreign_keys_cascade_and_restrict(session):
    config = seed(session)
    with pytest.raises(IntegrityError):
        session.execute(delete(Source).where(Source.name == "PACS0"))
    session.rollback()
    session.execute(delete(SpannerConfig).where(SpannerConfig.id == config.id))
    assert session.scalars(select(SpannerSourceMapping)).all() == []


def test_destinations_upsert_get_list_delete(session):
    assert upsert_destination(session, ae_title=" STORESCP ", host=" ws1 ", port=11112).action == "created"
    assert upsert_destination(session, ae_title="STORESCP", host="ws1", port=11112).action == "unchanged"
    updated = upsert_destination(session, ae_title="STORESCP", host="ws1", port=104, description="workstation")
    assert updated.action == "updated" and (updated.row.ae_title, updated.row.port) == ("STORESCP", 104)
    upsert_destination(session, ae_title="OFF", host="ws2", port=104, is_enabled=False)
    session.commit()
    assert get_destination(session, ae_title="  STORESCP").host == "ws1"
    assert get_destination(session, ae_title="storescp") is None  # exact match
    assert get_destination(session, ae_title="OFF") is None
    assert get_destination(session, ae_title="OFF", include_disabled=True).port == 104
    assert [d.ae_title for d in list_destinations(session)] == ["OFF", "STORESCP"]
    assert [d.ae_title for d in list_destinations(session, enabled_only=True)] == ["STORESCP"]
    assert delete_destination(session, ae_title="OFF ") is True
    assert delete_destination(session, ae_title="OFF") is False
    assert [d.ae_title for d in list_destinations(session)] == ["STORESCP"]


@pytest.mark.parametrize("fields, match", [
    ({"ae_title": "BAD\\AE"}, "AE title"),
    ({"ae_title": "WAY_TOO_LONG_AE_TITLE"}, "AE title"),
    ({"port": 0}, "port"),
    ({"port": 65536}, "port"),
    ({"host": "  "}, "host"),
])
def test_destination_values_are_validated(session, fields, match):
    with pytest.raises(ValueError, match=match):
        upsert_destination(session, **{"ae_title": "DEST", "host": "h", "port": 104, **fields})
    with pytest.raises(ValueError, match=match):
        DicomDestination(**{"ae_title": "DEST", "host": "h", "port": 104, **fields})


def test_destination_port_check_constraint(session):
    session.execute(insert(DicomDestination.__table__).values(ae_title="RAW", host="h", port=1))
    with pytest.raises(IntegrityError, match="port_range"):
        session.execute(insert(DicomDestination.__table__).values(ae_title="RAW2", host="h", port=70000))


def test_config_by_scp_ae_title_only_enabled_dimse_configs(session):
    upsert_spanner_config(session, name="main", scp_ae_title="AXIOM", allowed_calling_ae_titles=["FINDSCU"])
    upsert_spanner_config(session, name="web", scp_ae_title="WEBONLY", supports_dimse_scp=False)
    upsert_spanner_config(session, name="off", scp_ae_title="OFF", is_enabled=False)
    session.commit()
    config = get_config_by_scp_ae_title(session, ae_title=" AXIOM ")
    assert config.name == "main" and config.allowed_calling_ae_titles == ["FINDSCU"]
    assert get_config_by_scp_ae_title(session, ae_title="WEBONLY") is None
    assert get_config_by_scp_ae_title(session, ae_title="OFF") is None
    assert get_config_by_scp_ae_title(session, ae_title="NOPE") is None


def test_calling_ae_titles_default_to_none_and_upsert_cleanly(session):
    config, _ = upsert_spanner_config(session, name="main")
    session.commit()
    session.expire_all()
    assert config.allowed_calling_ae_titles is None
    assert upsert_spanner_config(session, name="main").action == "unchanged"
    assert upsert_spanner_config(session, name="main", allowed_calling_ae_titles=["A", "B"]).action == "updated"
    session.commit()
    session.expire_all()
    assert config.allowed_calling_ae_titles == ["A", "B"]
    assert upsert_spanner_config(session, name="main", allowed_calling_ae_titles=["A", "B"]).action == "unchanged"
    assert upsert_spanner_config(session, name="main").action == "updated"  # omitted: back to the default
    session.commit()
    session.expire_all()
    assert config.allowed_calling_ae_titles is None


def result(query_id: str, status: SpanStatus = SpanStatus.PARTIAL) -> SpanResult:
    ds = Dataset()
    ds.StudyInstanceUID = "1.2.3"
    return SpanResult(
        query_id=query_id, status=status, matches=(Match(dataset=ds, key=("1.2.3",), sources=("PACS0",)),),
        outcomes=(SourceOutcome("PACS0", SourceStatus.OK, match_count=2, latency_ms=12.34),
                  SourceOutcome("WEB1", SourceStatus.TIMEOUT, error="timed out")),
        raw_count=2, duration_ms=45.678, error=None)


def test_query_log_start_finish_and_list(session):
    config = seed(session)
    log = start_query_log(session, query_id="q1", config_id=config.id, query_type="C-FIND", level="STUDY",
                          filters={"0020000D": {"vr": "UI"}}, requester_ae_title="FINDSCU", client_address="1.2.3.4")
    assert log.status.value == "running" and log.started_at.tzinfo is not None
    start_query_log(session, query_id="q2", config_id=None, query_type="QIDO", level="SERIES", filters=None)
    session.commit()
    finish_query_log(session, query_id="q1", result=result("q1"))
    session.commit()
    done = get_query_log(session, query_id="q1")
    assert (done.status.value, done.raw_result_count, done.deduplicated_result_count) == ("partial", 2, 1)
    assert done.duration_ms == 45.7 and done.completed_at >= done.started_at
    assert [o["status"] for o in done.source_outcomes] == ["ok", "timeout"]
    assert [l.query_id for l in list_query_logs(session, limit=10)] == ["q2", "q1"]
    assert [l.query_id for l in list_query_logs(session, limit=10, status="partial")] == ["q1"]
    assert [l.query_id for l in list_query_logs(session, limit=10, config_id=config.id)] == ["q1"]
    future = datetime.now(timezone.utc) + timedelta(minutes=1)
    assert list_query_logs(session, limit=10, since=future) == []
    assert len(list_query_logs(session, limit=1)) == 1


def test_query_log_errors(session):
    with pytest.raises(ValueError, match="query type"):
        start_query_log(session, query_id="q", config_id=None, query_type="C-ECHO", level="STUDY", filters=None)
    with pytest.raises(LookupError):
        finish_query_log(session, query_id="missing", result=result("missing"))


@pytest.mark.parametrize("url, expected", [
    ("postgresql://axiom:pw@db:5432/axiom", "postgresql+psycopg2://axiom:pw@db:5432/axiom"),
    ("postgres://axiom@db/axiom", "postgresql+psycopg2://axiom@db/axiom"),
    ("postgresql+psycopg://axiom@db/axiom", "postgresql+psycopg://axiom@db/axiom"),
    ("sqlite:///axiom-data/axiom.db", "sqlite:///axiom-data/axiom.db"),
])
def test_plain_postgresql_urls_use_the_shipped_psycopg2_driver(url, expected):
    assert normalize_database_url(url) == expected
