"""The engine's per-source worker: runs one source's query (with retries) on an executor thread.

Private to the engine. A worker never touches span state: it only reports events through `emit` (a
`queue.Queue.put`), and the engine's consuming thread decides. Once the engine has given up on a source (deadline,
fail-fast, caller cancel) it cancels the source's token and ignores whatever the worker still reports; the worker
notices the token at its next match, retry wait or through the adapter's own cancel hooks.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Callable

from pydicom import Dataset

from shared.dicom.matching import keep_response_keys
from shared.spanning.model import FindSummary, SourceSpec, SpanRequest
from shared.spanning.policy import backoff_delay
from shared.spanning.ports import CancelToken, QueryFailedError, QueryPort, TransportError


@dataclass(frozen=True)
class Started:
    """The worker began (per-source timeouts and latency count from here)."""

    source: str
    at: float


@dataclass(frozen=True)
class Received:
    """One match from the source."""

    source: str
    dataset: Dataset


@dataclass(frozen=True)
class Retrying:
    """A transport error; retry number `retry` follows after the backoff."""

    source: str
    retry: int
    error: str


@dataclass(frozen=True)
class Finished:
    """The source answered completely (or up to its max_results cap)."""

    source: str
    retries: int
    truncated: bool
    warning: str | None = None


@dataclass(frozen=True)
class Crashed:
    """The source failed: transport errors past max_retries, a query failure, or any other exception."""

    source: str
    retries: int
    error: str


Event = Started | Received | Retrying | Finished | Crashed


@dataclass(frozen=True)
class SourceJob:
    """Everything a worker needs for one source."""

    request: SpanRequest
    source: SourceSpec
    port: QueryPort
    token: CancelToken
    clock: Callable[[], float]
    response_tags: frozenset[int] | None = None  # answers are cut to these (PS3.4 C.4.1.2.3) before they are emitted


def run_source(job: SourceJob, emit: Callable[[Event], None]) -> None:
    """Query one source, retrying only TransportError with exponential backoff (policy.backoff_delay)."""
    name, token = job.source.name, job.token
    emit(Started(name, job.clock()))
    retries = 0
    while True:
        try:
            summary, truncated = _consume(job, emit)
        except TransportError as exc:
            if retries >= job.source.max_retries or token.cancelled:
                emit(Crashed(name, retries, _describe(exc, "transport error")))
                return
            retries += 1
            emit(Retrying(name, retries, _describe(exc, "transport error")))
            if token.wait(backoff_delay(retries, job.source.retry_backoff_seconds)):
                return
            continue
        except QueryFailedError as exc:
            emit(Crashed(name, retries, _describe(exc, "query failed")))
        except Exception as exc:  # an adapter bug must fail its source, never the span
            emit(Crashed(name, retries, _describe(exc, type(exc).__name__)))
        else:
            truncated = truncated or bool(summary is not None and summary.truncated)
            emit(Finished(name, retries, truncated, summary.warning if summary is not None else None))
        return


def _consume(job: SourceJob, emit: Callable[[Event], None]) -> tuple[FindSummary | None, bool]:
    """Pull matches until the source is done, cancelled or over its cap; returns (summary, truncated).

    The cap (SourceSpec.max_results) is proven by a (max_results + 1)-th match, which is dropped: a source with
    exactly max_results matches is not reported truncated.
    """
    stream = iter(job.port.find(job.request, job.source, job.token))
    limit, count = job.source.max_results, 0
    try:
        while not job.token.cancelled:
            try:
                dataset = next(stream)
            except StopIteration as stop:
                return _summary(stop.value), False
            if not isinstance(dataset, Dataset):
                raise QueryFailedError(f"source produced a {type(dataset).__name__}, not a Dataset")
            if limit is not None and count >= limit:
                job.token.cancel()  # adapters hook C-CANCEL / connection close on the token
                return None, True
            count += 1
            if job.response_tags is not None:  # per-source work: done here, not on the engine's consuming thread
                keep_response_keys(dataset, job.response_tags)
            emit(Received(job.source.name, dataset))
        return None, False
    finally:
        close = getattr(stream, "close", None)
        if close is not None:
            close()


def _summary(value: object) -> FindSummary | None:
    if value is None or isinstance(value, FindSummary):
        return value
    raise QueryFailedError(f"source returned a {type(value).__name__}, not a FindSummary")


def _describe(exc: BaseException, kind: str) -> str:
    text = str(exc).strip()
    return f"{kind}: {text}" if text else kind
