"""ThreadExecutor: the in-process Executor (shared.spanning.ports.Executor) over a ThreadPoolExecutor.

The engine never joins its workers: a source that hangs past its deadline keeps a pool thread busy until the
adapter notices its CancelToken. So `shutdown()` does not wait either: it stops accepting work, drops queued work
and returns at once. Hung threads are left to finish on their own; note that concurrent.futures still joins its
worker threads at interpreter exit, so adapters must honour cancellation (they do: C-CANCEL/abort, HTTP timeouts).
"""

from __future__ import annotations

import threading
from concurrent.futures import Future, ThreadPoolExecutor
from typing import Callable


class ThreadExecutor:
    """Runs callables on a bounded thread pool; `submit(fn, *args) -> Future` as the Executor protocol requires."""

    def __init__(self, max_workers: int = 64, *, thread_name_prefix: str = "axiom-span") -> None:
        if max_workers < 1:
            raise ValueError("max_workers must be at least 1")
        self.max_workers = max_workers
        self._pool = ThreadPoolExecutor(max_workers=max_workers, thread_name_prefix=thread_name_prefix)
        self._lock = threading.Lock()
        self._closed = False

    def submit(self, fn: Callable[..., object], /, *args: object) -> Future:
        """Schedule `fn(*args)`; RuntimeError once shut down."""
        with self._lock:
            if self._closed:
                raise RuntimeError("executor is shut down")
            return self._pool.submit(fn, *args)

    def shutdown(self) -> None:
        """Stop accepting work and cancel queued work, without waiting for running (possibly hung) threads."""
        with self._lock:
            self._closed = True
        self._pool.shutdown(wait=False, cancel_futures=True)

    @property
    def closed(self) -> bool:
        return self._closed

    def __enter__(self) -> "ThreadExecutor":
        return self

    def __exit__(self, *exc_info: object) -> None:
        self.shutdown()
