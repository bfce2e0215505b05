"""The process supervisor of `axiom stack up`: runs a StackPlan's processes, prefixes their output, restarts or stops.

* Each process runs in its own session (process group), so a terminal's Ctrl-C reaches only the supervisor, which
  then stops everything in order: SIGTERM to every group at once, up to `grace` seconds for them to exit, SIGKILL
  to what is left (reported). A second Ctrl-C / SIGTERM skips the grace period.
* Every line a process writes (stdout and stderr) is printed as `<label> | <line>`, in a colour per service when
  the output is a terminal.
* A process that exits on its own is reported (`[stack] <label> exited with code N`). Then, by default, its
  compose `restart` policy applies (`no`; `on-failure[:max]`; `always` / `unless-stopped`) with a backoff doubling
  from `backoff` seconds up to 30 s (reset after it ran 30 s); with `exit_on_failure` the first failure stops
  the whole stack instead.
* `run()` returns 0 when nothing failed, 1 when a process exited with a nonzero code (even if restarted since),
  could not be started, or had to be killed after the grace period.
"""

from __future__ import annotations

import logging
import os
import signal
import subprocess
import threading
import time
from dataclasses import dataclass, field
from typing import Callable, TextIO

from services.cli.stack_plan import REPO_ROOT, ProcessSpec
from shared.logging import log_event

logger = logging.getLogger(__name__)
COLOURS = ("36", "33", "32", "35", "34", "96", "93", "92", "95", "94")
MAX_BACKOFF = 30.0
STABLE_AFTER = 30.0
POLL_SECONDS = 0.1


class LinePrinter:
    """Writes prefixed lines to one stream from many threads (whole lines, never interleaved)."""

    def __init__(self, out: TextIO, width: int, colour: bool) -> None:
        self.out, self.width, self.colour = out, width, colour
        self._lock = threading.Lock()
        self._colours: dict[str, str] = {}

    def line(self, label: str, text: str, *, service: str | None = None) -> None:
        prefix = f"{label:<{self.width}} |"
        if self.colour:
            code = self._colours.setdefault(service or label, COLOURS[len(self._colours) % len(COLOURS)])
            prefix = f"\x1b[{code}m{prefix}\x1b[0m"
        with self._lock:
            self.out.write(f"{prefix} {text}\n")
            self.out.flush()

    def note(self, text: str) -> None:
        self.line("[stack]", text, service="[stack]")


def pump_output(stream, label: str, service: str, printer: LinePrinter) -> threading.Thread:
    """A daemon thread printing each line of a child's output with its label, until the pipe closes."""

    def pump() -> None:
        with stream:
            for raw in iter(stream.readline, b""):
                printer.line(label, raw.decode("utf-8", errors="replace").rstrip("\r\n"), service=service)

    thread = threading.Thread(target=pump, name=f"stack-output-{label}", daemon=True)
    thread.start()
    return thread


def spawn(argv: tuple[str, ...], env: dict[str, str] | None) -> subprocess.Popen:
    """A child in its own session, stdout and stderr on one pipe, no stdin."""
    return subprocess.Popen(list(argv), env=env, cwd=REPO_ROOT, stdin=subprocess.DEVNULL, stdout=subprocess.PIPE,
                            stderr=subprocess.STDOUT, start_new_session=True)


def signal_group(popen: subprocess.Popen, sig: int) -> None:
    """`sig` to the child's whole process group (it is the group leader); gone already is fine."""
    try:
        os.killpg(popen.pid, sig)
    except (ProcessLookupError, PermissionError):
        pass


def restart_wanted(policy: str, code: int, restarts: int) -> bool:
    """The compose restart policy: `no`, `always`, `unless-stopped`, `on-failure` or `on-failure:MAX`."""
    name, _, limit = policy.partition(":")
    if name in ("always", "unless-stopped"):
        return True
    if name == "on-failure":
        return code != 0 and (not limit or restarts < int(limit))
    return False


@dataclass
class Child:
    spec: ProcessSpec
    popen: subprocess.Popen | None = None
    reader: threading.Thread | None = None
    started_at: float = 0.0
    restarts: int = 0
    restart_at: float | None = None  # monotonic time of a pending restart
    done: bool = False  # exited and not to be restarted
    exit_codes: list[int] = field(default_factory=list)


class Supervisor:
    """Runs and watches `specs` (module doc). `stop` ends the run; `force` skips the grace period."""

    def __init__(self, specs: list[ProcessSpec] | tuple[ProcessSpec, ...], printer: LinePrinter, *,
                 exit_on_failure: bool = False, grace: float = 10.0, backoff: float = 1.0,
                 on_started: Callable[["Supervisor"], None] | None = None) -> None:
        self.children = [Child(spec) for spec in specs]
        self.printer, self.exit_on_failure, self.grace, self.backoff = printer, exit_on_failure, grace, backoff
        self.stop, self.force = threading.Event(), threading.Event()
        self.failed = False
        self._on_started = on_started

    def request_stop(self) -> None:
        """First call: graceful stop. Later calls: no grace (SIGKILL at once)."""
        if self.stop.is_set():
            self.force.set()
        self.stop.set()

    def run(self) -> int:
        """Start every process, watch them until stopped or all are done, then shut down; the exit code."""
        try:
            for child in self.children:
                if not self.stop.is_set():
                    self._start(child)
            if self._on_started is not None:
                self._on_started(self)
            while not self.stop.is_set() and not all(child.done for child in self.children):
                self._watch()
                self.stop.wait(POLL_SECONDS)
        finally:
            self.shutdown()
        return 1 if self.failed else 0

    def pids(self) -> list[int]:
        return [child.popen.pid for child in self.children if child.popen is not None]

    def _start(self, child: Child) -> None:
        spec = child.spec
        child.restart_at = None
        try:
            child.popen = spawn(spec.argv, dict(spec.env))
        except OSError as exc:
            self._report_failure(child, f"{spec.label} could not be started: {exc}")
            child.done = True
            return
        child.started_at = time.monotonic()
        child.reader = pump_output(child.popen.stdout, spec.label, spec.service, self.printer)
        port = f" on port {spec.port}" if spec.port else ""
        self.printer.note(f"{spec.label} started (pid {child.popen.pid}){port}: {' '.join(spec.argv[1:])}")
        log_event(logger, "stack_service_started", service=spec.service, label=spec.label, pid=child.popen.pid)

    def _watch(self) -> None:
        now = time.monotonic()
        for child in self.children:
            if child.restart_at is not None and now >= child.restart_at:
                child.restarts += 1
                self._start(child)
            elif child.popen is not None and not child.done and child.restart_at is None:
                code = child.popen.poll()
                if code is not None:
                    self._exited(child, code, now)

    def _exited(self, child: Child, code: int, now: float) -> None:
        spec = child.spec
        child.exit_codes.append(code)
        if child.reader is not None:
            child.reader.join(timeout=2)
        if now - child.started_at >= STABLE_AFTER:
            child.restarts = 0
        what = f"{spec.label} exited with code {code}"
        if code != 0:
            self._report_failure(child, what)
        if self.exit_on_failure and code != 0:
            self.printer.note(f"{what}: stopping the stack (--exit-on-failure)")
            self.stop.set()
            child.done = True
        elif restart_wanted(spec.restart, code, child.restarts):
            delay = min(MAX_BACKOFF, self.backoff * 2 ** child.restarts)
            self.printer.note(f"{what}: restarting in {delay:.1f} s (restart: {spec.restart})")
            child.restart_at = now + delay
        else:
            self.printer.note(f"{what}; not restarted (restart: {spec.restart})")
            child.done = True

    def _report_failure(self, child: Child, message: str) -> None:
        self.failed = True
        log_event(logger, "stack_service_failed", logging.WARNING, service=child.spec.service,
                  label=child.spec.label, detail=message)

    def shutdown(self) -> None:
        """SIGTERM to every running group, wait up to the grace period, SIGKILL the rest; reap everything."""
        running = [c for c in self.children if c.popen is not None and c.popen.poll() is None]
        if running:
            self.printer.note(f"stopping {len(running)} process(es): SIGTERM, SIGKILL after {self.grace:.0f} s")
        for child in running:
            signal_group(child.popen, signal.SIGTERM)
        deadline = time.monotonic() + self.grace
        while any(c.popen.poll() is None for c in running) and time.monotonic() < deadline and not self.force.is_set():
            time.sleep(POLL_SECONDS)
        for child in running:
            if child.popen.poll() is None:
                self._report_failure(child, f"{child.spec.label} did not stop within {self.grace:.0f} s")
                self.printer.note(f"{child.spec.label} did not stop in time: SIGKILL")
            signal_group(child.popen, signal.SIGKILL)  # also any straggler of its group
            child.popen.wait()
            if child.reader is not None:
                child.reader.join(timeout=2)
            child.done = True
        for child in self.children:
            child.restart_at = None
        if running:
            self.printer.note("stopped: " + ", ".join(f"{c.spec.label} ({c.popen.returncode})" for c in running))
