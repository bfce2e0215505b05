"""Session fixtures with real peers (skipped, or failed under AXIOM_REQUIRE_SERVICES=1, when missing)."""

from __future__ import annotations

from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from typing import Iterator

import pytest

from tests.integration.distributed_fixtures import (  # noqa: F401  (fixtures of the distributed-span tests)
    database_url, harness, migrated_template, redis_prefix,
)
from tests.peers import free_port, require
from tests.peers.orthanc import OrthancPeer, orthanc_available
from tests.peers.studies import ARCHIVE_A, ARCHIVE_B, build_instances


@dataclass(frozen=True)
class TwoOrthancs:
    """Two running Orthancs: A holds studies ARCHIVE_A, B holds ARCHIVE_B (overlapping on studies 3 and 4)."""

    a: OrthancPeer
    b: OrthancPeer
    studies_a: tuple[int, ...] = ARCHIVE_A
    studies_b: tuple[int, ...] = ARCHIVE_B


@pytest.fixture(scope="session")
def two_orthancs(tmp_path_factory: pytest.TempPathFactory) -> Iterator[TwoOrthancs]:
    require(orthanc_available(), "Orthanc with the DICOMweb plugin is not installed (apt-get install orthanc "
                                 "orthanc-dicomweb)")
    tmp = tmp_path_factory.mktemp("orthancs")
    peers = [
        OrthancPeer("ORTHANC_A", "ORTHANCA", free_port(), free_port(), tmp),
        OrthancPeer("ORTHANC_B", "ORTHANCB", free_port(), free_port(), tmp),
    ]
    contents = [ARCHIVE_A, ARCHIVE_B]

    def start_and_load(index: int) -> None:
        peers[index].start()
        peers[index].load(build_instances(contents[index]))

    try:
        with ThreadPoolExecutor(max_workers=2) as pool:
            list(pool.map(start_and_load, range(2)))
        yield TwoOrthancs(peers[0], peers[1])
    finally:
        with ThreadPoolExecutor(max_workers=2) as pool:
            list(pool.map(lambda p: p.stop(), peers))
