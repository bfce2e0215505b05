"""Prometheus metrics of spans, sources, queues and log shipping, served as /metrics by the API and the coordinator.

Span metrics are recorded once per finished span, at the one place each mode passes through:

* in-process spans (shared.span_client.InProcessSpanClient._finish): `record_span` updates this process's
  metrics objects (the API's /metrics shows the spans the API ran);
* distributed spans (shared.distributed.spans._commit, run by whichever worker or coordinator finalises the span):
  `record_distributed_span` adds them to one Redis hash shared by every process of the deployment, which the
  coordinator's /metrics exposes through `SharedSpanMetrics` (so the coordinator reports every span, whoever
  finalised it; a Redis flush resets these counters, which Prometheus treats as a counter reset).

Families: `axiom_spans_total{status,query_type}`, `axiom_span_duration_seconds{query_type}` (histogram),
`axiom_source_query_duration_seconds{source}` (histogram; sources that were asked: ok, failed, timeout),
`axiom_source_failures_total{source,status}` (failed, timeout, skipped by an open breaker),
`axiom_queue_depth{queue}` and `axiom_queue_consumers{queue}` (RabbitMQ, `QueueDepthCollector`),
`axiom_dicomweb_requests_total{service,code}` (API), `axiom_log_records_{shipped,dropped}_total` (Fluentd).
A span answered from the result cache counts in axiom_spans_total and its latency, not in the per-source metrics
(its sources were not asked again). Metrics objects live in this module's LOCAL registry, rendered with
prometheus_client's default registry (process collectors) and the per-app collectors (queue depths, shared span
metrics) by `render_metrics`; nothing per-app is registered globally.
"""

from __future__ import annotations

import hmac
import json
import logging
from typing import Any, Callable, Iterable, Iterator, Sequence

from prometheus_client import REGISTRY, CollectorRegistry, Counter, Histogram, generate_latest
from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily, HistogramMetricFamily, Metric

from shared.fluentd import FluentForwardHandler
from shared.logging import log_event
from shared.security.authenticator import presented_credential
from shared.spanning.model import SourceStatus, SpanResult

logger = logging.getLogger(__name__)
CONTENT_TYPE = "text/plain; version=0.0.4; charset=utf-8"  # the Prometheus text exposition format
LATENCY_BUCKETS = (0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0, 60.0, 120.0)
ASKED = (SourceStatus.OK, SourceStatus.FAILED, SourceStatus.TIMEOUT)
FAILURES = (SourceStatus.FAILED, SourceStatus.TIMEOUT, SourceStatus.SKIPPED)
UNKNOWN = "unknown"

HELP = {"axiom_spans": "Finished spans by status and query type", "axiom_span_duration_seconds": "Span latency",
        "axiom_source_query_duration_seconds": "Latency of one source's answer in a span",
        "axiom_source_failures": "Sources that did not answer a span"}
LABELS = {"axiom_spans": ("status", "query_type"), "axiom_span_duration_seconds": ("query_type",),
          "axiom_source_query_duration_seconds": ("source",), "axiom_source_failures": ("source", "status")}
# This process's own metrics; the default registry keeps prometheus_client's process, platform and GC collectors.
LOCAL = CollectorRegistry()
SPANS = Counter("axiom_spans", HELP["axiom_spans"], LABELS["axiom_spans"], registry=LOCAL)
SPAN_DURATION = Histogram("axiom_span_duration_seconds", HELP["axiom_span_duration_seconds"],
                          LABELS["axiom_span_duration_seconds"], buckets=LATENCY_BUCKETS, registry=LOCAL)
SOURCE_DURATION = Histogram("axiom_source_query_duration_seconds", HELP["axiom_source_query_duration_seconds"],
                            LABELS["axiom_source_query_duration_seconds"], buckets=LATENCY_BUCKETS, registry=LOCAL)
SOURCE_FAILURES = Counter("axiom_source_failures", HELP["axiom_source_failures"], LABELS["axiom_source_failures"],
                          registry=LOCAL)
DICOMWEB_REQUESTS = Counter("axiom_dicomweb_requests", "DICOMweb requests answered by the API", ["service", "code"],
                            registry=LOCAL)
Observation = tuple[str, tuple[str, ...], float]  # (family, label values, value): counters add, histograms observe


def span_observations(result: SpanResult, query_type: str | None, *, cache_hit: bool = False) -> list[Observation]:
    """What a finished span adds to the span and source families (see the module doc)."""
    kind = query_type or UNKNOWN
    found: list[Observation] = [("axiom_spans", (result.status.value, kind), 1.0),
                                ("axiom_span_duration_seconds", (kind,), result.duration_ms / 1000.0)]
    if cache_hit:
        return found
    for outcome in result.outcomes:
        if outcome.status in ASKED:
            found.append(("axiom_source_query_duration_seconds", (outcome.source,), outcome.latency_ms / 1000.0))
        if outcome.status in FAILURES:
            found.append(("axiom_source_failures", (outcome.source, outcome.status.value), 1.0))
    return found


def record_span(result: SpanResult, query_type: str | None, *, cache_hit: bool = False) -> None:
    """Count a span finished in this process (the in-process mode) in this process's metrics."""
    families = {"axiom_spans": SPANS, "axiom_span_duration_seconds": SPAN_DURATION,
                "axiom_source_query_duration_seconds": SOURCE_DURATION, "axiom_source_failures": SOURCE_FAILURES}
    for family, labels, value in span_observations(result, query_type, cache_hit=cache_hit):
        metric = families[family].labels(*labels)
        if family.endswith("_seconds"):
            metric.observe(value)
        else:
            metric.inc(value)


def record_dicomweb_request(service: str, code: int) -> None:
    """Count one answered QIDO-RS / WADO-RS request by its HTTP status code."""
    DICOMWEB_REQUESTS.labels(service, str(code)).inc()


class SharedSpanMetrics:
    """Span metrics of the distributed mode in one Redis hash every process adds to and any process reads.

    Fields are JSON `[family, labels]` for counters, `[family, labels, bucket index]` (non-cumulative counts,
    index len(LATENCY_BUCKETS) is +Inf) and `[family, labels, "sum"]` for histograms.
    """

    def __init__(self, client: Any, key: str) -> None:
        self.client, self.key = client, key

    @classmethod
    def of_store(cls, store: Any) -> "SharedSpanMetrics":
        """The hash next to a shared.distributed.store.SpanStore's keys (same Redis, same AXIOM_REDIS_PREFIX)."""
        return cls(store.redis, f"{store._prefix}metrics:spans")

    def record(self, result: SpanResult, query_type: str | None, *, cache_hit: bool = False) -> None:
        """Add a finished span (one round trip)."""
        pipe = self.client.pipeline(transaction=False)
        for family, labels, value in span_observations(result, query_type, cache_hit=cache_hit):
            if family.endswith("_seconds"):
                index = next((i for i, bound in enumerate(LATENCY_BUCKETS) if value <= bound), len(LATENCY_BUCKETS))
                pipe.hincrby(self.key, json.dumps([family, labels, index]), 1)
                pipe.hincrbyfloat(self.key, json.dumps([family, labels, "sum"]), value)
            else:
                pipe.hincrby(self.key, json.dumps([family, labels]), int(value))
        pipe.execute()

    def collect(self) -> Iterator[Metric]:
        """The hash as Prometheus families (a collector for `render_metrics`)."""
        counters: dict[str, CounterMetricFamily] = {}
        histograms: dict[str, dict[tuple, dict]] = {}
        for field, value in self.client.hgetall(self.key).items():
            family, labels, *part = json.loads(field)
            if not part:
                counters.setdefault(family, CounterMetricFamily(family, HELP[family], labels=LABELS[family]))
                counters[family].add_metric(labels, float(value))
            else:
                series = histograms.setdefault(family, {}).setdefault(tuple(labels), {"sum": 0.0})
                series[part[0]] = float(value)
        yield from counters.values()
        for family, all_series in histograms.items():
            metric = HistogramMetricFamily(family, HELP[family], labels=LABELS[family])
            for labels, series in all_series.items():
                metric.add_metric(list(labels), _cumulative(series), series["sum"])
            yield metric


def _cumulative(series: dict) -> list[tuple[str, float]]:
    total, buckets = 0.0, []
    for index, bound in enumerate((*LATENCY_BUCKETS, float("inf"))):
        total += series.get(index, 0.0)
        buckets.append(("+Inf" if bound == float("inf") else str(bound), total))
    return buckets


def record_distributed_span(store: Any, result: SpanResult, query_type: str | None, *, cache_hit: bool) -> None:
    """Count a distributed span where every process can read it (SharedSpanMetrics); a Redis error is logged,
    never raised: the span is already finished and published."""
    try:
        SharedSpanMetrics.of_store(store).record(result, query_type, cache_hit=cache_hit)
    except Exception as exc:
        log_event(logger, "span_metrics_failed", logging.WARNING, query_id=result.query_id,
                  error=f"{type(exc).__name__}: {exc}")


class QueueDepthCollector:
    """`axiom_queue_depth{queue}` and `axiom_queue_consumers{queue}` from RabbitMQ: a passive queue_declare per
    queue on a connection from `connect` (a kombu Connection factory), bounded by `timeout` seconds.
    `axiom_broker_up` is 0 (and the depths absent) when the broker does not answer."""

    def __init__(self, connect: Callable[[], Any], queues: Sequence[str], timeout: float = 2.0) -> None:
        self.connect, self.queues, self.timeout = connect, tuple(queues), timeout

    def depths(self) -> dict[str, tuple[int, int]]:
        """queue -> (ready messages, consumers); queues that do not exist (yet) are left out."""
        found: dict[str, tuple[int, int]] = {}
        with self.connect() as connection:
            connection.ensure_connection(max_retries=1, interval_start=0, timeout=self.timeout)
            for queue in self.queues:
                channel = connection.channel()
                try:
                    _, messages, consumers = channel.queue_declare(queue=queue, passive=True)
                    found[queue] = (messages, consumers)
                except connection.channel_errors:  # 404: not declared yet (no worker has started)
                    pass
                finally:
                    _close_quietly(channel)
        return found

    def collect(self) -> Iterator[Metric]:
        up = GaugeMetricFamily("axiom_broker_up", "1 when RabbitMQ answered the queue-depth probe")
        try:
            found = self.depths()
        except Exception as exc:
            log_event(logger, "queue_depth_unavailable", logging.WARNING, error=f"{type(exc).__name__}: {exc}"[:300])
            up.add_metric([], 0.0)
            yield up
            return
        up.add_metric([], 1.0)
        depth = GaugeMetricFamily("axiom_queue_depth", "Messages ready in a RabbitMQ queue", labels=["queue"])
        consumers = GaugeMetricFamily("axiom_queue_consumers", "Consumers of a RabbitMQ queue", labels=["queue"])
        for queue, (messages, count) in found.items():
            depth.add_metric([queue], float(messages))
            consumers.add_metric([queue], float(count))
        yield from (up, depth, consumers)


def _close_quietly(channel: Any) -> None:
    try:
        channel.close()
    except Exception:  # a channel the broker closed (404) may refuse a second close
        pass


class LogShippingCollector:
    """`axiom_log_records_{shipped,dropped}_total` of this process's Fluentd handlers (shared.fluentd)."""

    def collect(self) -> Iterator[Metric]:
        handlers = [h for h in logging.getLogger().handlers if isinstance(h, FluentForwardHandler)]
        if not handlers:
            return
        shipped = CounterMetricFamily("axiom_log_records_shipped", "Log records sent to Fluentd")
        dropped = CounterMetricFamily("axiom_log_records_dropped", "Log records dropped: Fluentd queue full")
        shipped.add_metric([], float(sum(h.sent for h in handlers)))
        dropped.add_metric([], float(sum(h.dropped for h in handlers)))
        yield from (shipped, dropped)


def render_metrics(collectors: Iterable[Any] = (), *, local_spans: bool = True) -> bytes:
    """Process metrics, log shipping, the given per-app `collectors` and (`local_spans`) the spans recorded in this
    process, in the Prometheus text format. The coordinator passes SharedSpanMetrics instead of local spans: one
    exposition must not hold a family twice."""
    extra = CollectorRegistry(auto_describe=False)
    for collector in (LogShippingCollector(), *collectors):
        extra.register(collector)
    return generate_latest(REGISTRY) + (generate_latest(LOCAL) if local_spans else b"") + generate_latest(extra)


def metrics_token_matches(headers: Any, token: Any) -> bool:
    """True when the request's bearer credential (or X-API-Key) is AXIOM_METRICS_TOKEN (`token`, a SecretStr or
    None: never matches), compared in constant time."""
    credential = presented_credential(headers)
    if token is None or credential is None:
        return False
    return hmac.compare_digest(credential.encode(), token.get_secret_value().encode())
