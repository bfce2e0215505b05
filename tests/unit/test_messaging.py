"""The Celery app factory's delivery settings, the task contracts, and the span plan's plain-data round trip."""

from __future__ import annotations

import pytest
from pydicom import Dataset

from shared.config import Settings
from shared.distributed.plan import Plan, PlannedSource
from shared.dicom.levels import InformationModel, QueryLevel
from shared.messaging.celery_app import create_celery_app
from shared.messaging.contracts import (
    ALL_QUEUES, DIMSE_TASKS, QUERY_SOURCE, RESULTS_AGGREGATION, SPANNING_QUERIES, TASK_QUEUES, queues_for_worker,
)
from shared.spanning.model import DedupStrategy, FailureStrategy, SpanPolicy, SpanRequest


def test_celery_app_acknowledges_late_with_confirms_and_durable_queues(monkeypatch):
    monkeypatch.setenv("RABBITMQ_URL", "amqp://guest:guest@broker:5672/axiom")
    conf = create_celery_app(Settings()).conf
    assert conf.task_acks_late and conf.task_reject_on_worker_lost and conf.worker_prefetch_multiplier == 1
    assert conf.task_serializer == "json" and conf.accept_content == ["json"]
    assert conf.broker_transport_options["confirm_publish"] is True
    assert conf.task_default_delivery_mode == "persistent" and conf.task_publish_retry
    assert {queue.name for queue in conf.task_queues} == set(ALL_QUEUES)
    assert all(queue.durable for queue in conf.task_queues)
    assert conf.task_routes[QUERY_SOURCE]["queue"] == DIMSE_TASKS


def test_celery_app_needs_a_broker_url(monkeypatch):
    monkeypatch.delenv("RABBITMQ_URL", raising=False)
    with pytest.raises(ValueError, match="RABBITMQ_URL"):
        create_celery_app(Settings())


def test_worker_types_select_queues():
    assert queues_for_worker("dimse-query") == (DIMSE_TASKS,)
    assert set(queues_for_worker("aggregation")) == {SPANNING_QUERIES, RESULTS_AGGREGATION}
    assert set(queues_for_worker("all")) == set(ALL_QUEUES) == set(TASK_QUEUES.values())
    with pytest.raises(ValueError, match="dimse-query"):
        queues_for_worker("router")


def test_plan_round_trips_through_plain_data():
    identifier = Dataset()
    identifier.PatientID = "12345"
    identifier.StudyInstanceUID = ""
    request = SpanRequest(level=QueryLevel.STUDY, identifier=identifier, model=InformationModel.STUDY_ROOT,
                          query_id="a" * 32)
    plan = Plan(query_id="a" * 32, config_id=3, config_name="main", request=request,
                policy=SpanPolicy(failure_strategy=FailureStrategy.MINIMUM_THRESHOLD, minimum_success_threshold=2,
                                  dedup_strategy=DedupStrategy.MERGE_ALL, max_concurrent_sources=2,
                                  query_timeout_seconds=12.5),
                sources=(PlannedSource("A", "dimse", 1, 5.0, "PACSA", "health:A:x"),
                         PlannedSource("B", "dicomweb", 2, None, None)),
                skipped={"B": "circuit open"}, accepted_at=1000.0, deadline=1012.5, cache_key="span:1",
                cache_ttl_seconds=60)
    again = Plan.from_dict(plan.to_dict())
    assert again.policy == plan.policy and again.sources == plan.sources and again.skipped == plan.skipped
    assert again.request.identifier.PatientID == "12345" and again.request.level is QueryLevel.STUDY
    assert [s.name for s in again.queried] == ["A"] and again.deadline == 1012.5 and again.cache_key == "span:1"


@pytest.mark.parametrize("secret", [None, "too-short"])
def test_the_coordinator_refuses_to_start_without_a_real_secret_key(monkeypatch, secret):
    from services.spanner_coordinator.app import create_app

    monkeypatch.setenv("RABBITMQ_URL", "amqp://guest:guest@broker:5672/axiom")
    if secret is None:
        monkeypatch.delenv("SECRET_KEY", raising=False)
    else:
        monkeypatch.setenv("SECRET_KEY", secret)
    with pytest.raises(ValueError, match="SECRET_KEY must be set to at least 32"):
        create_app(Settings())
