"""The process supervisor of `axiom stack up` (services/cli/stack.py) with real `python -c` children, and the command
itself under SIGINT (services/cli/stack_cmd.py)."""

from __future__ import annotations

import io
import os
import signal
import subprocess
import sys
import threading
import time
from pathlib import Path

import pytest

from services.cli.stack import LinePrinter, Supervisor, restart_wanted
from services.cli.stack_plan import ProcessSpec

REPO = Path(__file__).resolve().parents[2]
SERVE = ("import signal, sys, time\n"
         "signal.signal(signal.SIGTERM, lambda *_: (print('bye', flush=True), sys.exit(0)))\n"
         "print('up', flush=True)\n"
         "while True: time.sleep(0.05)\n")
STUBBORN = "import signal, time\nsignal.signal(signal.SIGTERM, signal.SIG_IGN)\nprint('up', flush=True)\ntime.sleep(60)\n"


def spec(service: str, code: str, *, instance: int = 0, restart: str = "no") -> ProcessSpec:
    return ProcessSpec(service=service, instance=instance, argv=(sys.executable, "-c", code),
                       env={**os.environ, "PYTHONUNBUFFERED": "1"}, restart=restart)


def alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    return True


class Running:
    """A Supervisor run in a thread; `out` holds what it printed."""

    def __init__(self, specs, **options) -> None:
        self.out = io.StringIO()
        self.supervisor = Supervisor(specs, LinePrinter(self.out, 24, colour=False), backoff=0.1, **options)
        self.code: int | None = None
        self.thread = threading.Thread(target=self._run, daemon=True)
        self.thread.start()

    def _run(self) -> None:
        self.code = self.supervisor.run()

    def wait_for(self, text: str, count: int = 1, timeout: float = 10.0) -> None:
        deadline = time.monotonic() + timeout
        while self.out.getvalue().count(text) < count:
            assert time.monotonic() < deadline, f"no {count}x {text!r} in:\n{self.out.getvalue()}"
            time.sleep(0.02)

    def finish(self, timeout: float = 15.0) -> int:
        self.thread.join(timeout)
        assert not self.thread.is_alive(), self.out.getvalue()
        return self.code


def test_output_is_prefixed_and_sigint_semantics_stop_every_child_gracefully():
    run = Running([spec("web", SERVE), spec("worker", SERVE, instance=1), spec("worker", SERVE, instance=2)])
    run.wait_for(" | up", count=3)
    pids = run.supervisor.pids()
    assert len(pids) == 3 and all(alive(pid) for pid in pids)
    run.supervisor.request_stop()  # what the command's SIGINT/SIGTERM handler calls
    assert run.finish() == 0
    text = run.out.getvalue()
    for label in ("web", "worker-1", "worker-2"):
        assert f"{label:<24} | up" in text and f"{label:<24} | bye" in text, text
    assert "stopped: web (0), worker-1 (0), worker-2 (0)" in text
    assert not any(alive(pid) for pid in pids)


def test_a_killed_child_is_reported_and_restarted_by_its_policy():
    run = Running([spec("api", SERVE, restart="unless-stopped"), spec("once", SERVE, restart="no")])
    run.wait_for(" | up", count=2)
    first_api, once = run.supervisor.pids()
    os.kill(first_api, signal.SIGKILL)
    os.kill(once, signal.SIGKILL)
    run.wait_for("api exited with code -9: restarting in 0.1 s (restart: unless-stopped)")
    run.wait_for("once exited with code -9; not restarted (restart: no)")
    run.wait_for("api                      | up", count=2)
    second_api = run.supervisor.children[0].popen.pid
    assert second_api != first_api and alive(second_api)
    run.supervisor.request_stop()
    assert run.finish() == 1  # a service failed during the run, even though it was restarted
    assert not alive(second_api)


def test_exit_on_failure_stops_the_whole_stack():
    run = Running([spec("web", SERVE, restart="always"), spec("crash", "import sys; sys.exit(3)", restart="always")],
                  exit_on_failure=True)
    assert run.finish() == 1
    text = run.out.getvalue()
    assert "crash exited with code 3: stopping the stack (--exit-on-failure)" in text
    assert "web (0)" in text
    assert not any(alive(pid) for pid in run.supervisor.pids())


def test_all_children_done_ends_the_run_with_their_verdict():
    run = Running([spec("ok", "print('done')"), spec("fine", "pass")])
    assert run.finish() == 0
    assert "ok exited with code 0; not restarted (restart: no)" in run.out.getvalue()
    assert Running([spec("bad", "import sys; sys.exit(2)")]).finish() == 1


def test_a_child_ignoring_sigterm_is_killed_after_the_grace_period():
    run = Running([spec("stubborn", STUBBORN)], grace=0.5)
    run.wait_for(" | up")
    started = time.monotonic()
    run.supervisor.request_stop()
    assert run.finish() == 1
    assert 0.4 < time.monotonic() - started < 5
    assert "stubborn did not stop in time: SIGKILL" in run.out.getvalue()


def test_a_second_stop_request_skips_the_grace_period():
    run = Running([spec("stubborn", STUBBORN)], grace=30)
    run.wait_for(" | up")
    run.supervisor.request_stop()
    time.sleep(0.3)
    run.supervisor.request_stop()
    assert run.finish(timeout=5) == 1


@pytest.mark.parametrize("policy, code, restarts, wanted", [
    ("no", 1, 0, False), ("always", 0, 9, True), ("unless-stopped", 1, 0, True), ("on-failure", 0, 0, False),
    ("on-failure", 1, 5, True), ("on-failure:2", 1, 1, True), ("on-failure:2", 1, 2, False),
])
def test_restart_policies(policy, code, restarts, wanted):
    assert restart_wanted(policy, code, restarts) is wanted


def test_the_command_stops_everything_on_sigint(tmp_path):
    """`axiom stack up -f FILE` as a real process: prefixed output, then SIGINT -> every child stopped, exit 0."""
    compose = tmp_path / "docker-compose.yml"
    compose.write_text("services:\n  cache:\n    image: redis:7-alpine\n" + "".join(
        f"  {name}:\n    build: .\n    command: [python, -c, {SERVE!r}]\n    ports: []\n" for name in ("one", "two")))
    env = {**os.environ, "DATABASE_URL": "postgresql://unused@127.0.0.1/none", "REDIS_URL": "redis://127.0.0.1/9",
           "RABBITMQ_URL": "amqp://guest:guest@127.0.0.1//", "SECRET_KEY": "s" * 32}
    proc = subprocess.Popen([sys.executable, "-m", "services.cli.main", "stack", "up", "-f", str(compose),
                             "--scale", "two=2", "--no-color"], cwd=REPO, env=env, stdout=subprocess.PIPE,
                            stderr=subprocess.STDOUT, text=True)
    lines = []
    try:
        while sum(" | up" in line for line in lines) < 3:
            line = proc.stdout.readline()
            assert line, "".join(lines)
            lines.append(line)
        proc.send_signal(signal.SIGINT)
        rest, _ = proc.communicate(timeout=20)
    finally:
        if proc.poll() is None:
            proc.kill()
    text = "".join(lines) + rest
    assert proc.returncode == 0, text
    assert "not started (infrastructure from the environment): cache" in text
    pids = [int(line.split("(pid ")[1].split(")")[0]) for line in text.splitlines() if "started (pid" in line]
    assert len(pids) == 3 and not any(alive(pid) for pid in pids)
    assert text.count(" | bye") == 3 and "one (0), two-1 (0), two-2 (0)" in text
