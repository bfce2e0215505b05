"""Real peers for tests: PostgreSQL, Orthanc, DCMTK and the PACS simulator, started on free loopback ports.

On a user's machine without a peer the test skips with the reason; with AXIOM_REQUIRE_SERVICES=1 (CI) it fails.
"""

from __future__ import annotations

import os
import socket

import pytest


def services_required() -> bool:
    return os.environ.get("AXIOM_REQUIRE_SERVICES", "") == "1"


def require(condition: bool, reason: str) -> None:
    """Skip (or, under AXIOM_REQUIRE_SERVICES=1, fail) the current test when `condition` is false."""
    if condition:
        return
    if services_required():
        pytest.fail(f"required service missing: {reason}", pytrace=False)
    pytest.skip(reason)


def free_port() -> int:
    """A TCP port free on 127.0.0.1 right now."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]
