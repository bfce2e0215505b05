"""ScriptedPort: a QueryPort whose behaviour per source name is scripted, for engine tests.

Every wait is a `cancel.wait(...)`, so a cancelled source stops promptly (as real adapters must); `hang` waits for
the cancel (or `hang_seconds`, whichever first). The port records calls, cancels observed and peak concurrency.
"""

from __future__ import annotations

import copy

import threading
import time
from dataclasses import dataclass, field
from typing import Any

from pydicom import Dataset

from shared.spanning.model import FindSummary, SourceSpec, SpanRequest
from shared.spanning.ports import CancelToken, FindStream, QueryFailedError, TransportError


@dataclass
class Script:
    """How one source behaves. Matches are Datasets (or anything, to test malformed output)."""

    matches: list[Any] = field(default_factory=list)
    first_delay: float = 0.0
    per_match_delay: float = 0.0
    transport_failures: int = 0  # raise TransportError on the first N attempts, then behave
    query_failure: str | None = None  # raise QueryFailedError(text) before any match
    error: BaseException | None = None  # raise this after the matches (e.g. a bug: RuntimeError)
    hang: bool = False  # after the matches, wait until cancelled (or hang_seconds)
    hang_seconds: float = 10.0
    truncated: bool = False  # return FindSummary(truncated=True)
    warning: str | None = None


@dataclass
class Call:
    """One `find` call as the port saw it."""

    source: str
    identifier: Dataset
    started: float
    finished: float | None = None
    yielded: int = 0
    cancel_observed: bool = False
    closed_early: bool = False


class ScriptedPort:
    """A QueryPort for tests: `ScriptedPort({"a": Script(...), ...})`; unknown sources answer nothing."""

    def __init__(self, scripts: dict[str, Script] | None = None) -> None:
        self.scripts = dict(scripts or {})
        self.calls: list[Call] = []
        self._lock = threading.Lock()
        self._attempts: dict[str, int] = {}
        self.active = 0
        self.max_active = 0

    def attempts(self, source: str) -> int:
        """How many times `find` was called for `source`."""
        return self._attempts.get(source, 0)

    def calls_for(self, source: str) -> list[Call]:
        return [call for call in self.calls if call.source == source]

    def cancel_observed(self, source: str) -> bool:
        return any(call.cancel_observed for call in self.calls_for(source))

    def find(self, request: SpanRequest, source: SourceSpec, cancel: CancelToken) -> FindStream:
        script = self.scripts.get(source.name, Script())
        call = Call(source.name, request.identifier, time.monotonic())
        with self._lock:
            self.calls.append(call)
            attempt = self._attempts[source.name] = self._attempts.get(source.name, 0) + 1
            self.active += 1
            self.max_active = max(self.max_active, self.active)
        try:
            return (yield from self._play(script, attempt, call, cancel))
        except GeneratorExit:
            call.closed_early = True
            raise
        finally:
            call.cancel_observed = call.cancel_observed or cancel.cancelled
            call.finished = time.monotonic()
            with self._lock:
                self.active -= 1

    def _play(self, script: Script, attempt: int, call: Call, cancel: CancelToken) -> FindStream:
        if cancel.wait(script.first_delay) and script.first_delay:
            return None
        if attempt <= script.transport_failures:
            raise TransportError(f"connection refused (attempt {attempt})")
        if script.query_failure is not None:
            raise QueryFailedError(script.query_failure)
        for index, match in enumerate(script.matches):
            if index and script.per_match_delay and cancel.wait(script.per_match_delay):
                return None
            call.yielded += 1
            # like a real adapter, hand out a fresh Dataset per find (the merger takes ownership of what it gets)
            yield copy.deepcopy(match) if isinstance(match, Dataset) else match
        if script.error is not None:
            raise script.error
        if script.hang:
            cancel.wait(script.hang_seconds)
            return None
        return FindSummary(truncated=script.truncated, warning=script.warning)


def study(uid: str, **attributes: Any) -> Dataset:
    """A STUDY-level match with StudyInstanceUID `uid` and the given keyword attributes."""
    ds = Dataset()
    ds.StudyInstanceUID = uid
    for keyword, value in attributes.items():
        setattr(ds, keyword, value)
    return ds
