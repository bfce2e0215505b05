"""`PacsSimulator`: one simulated PACS (DIMSE and optionally DICOMweb) running in threads of this process.

    with PacsSimulator("A", "PACS_A", generate_catalog(1), faults=Faults(latency=0.2)) as pacs:
        ...  # C-FIND to 127.0.0.1:pacs.dimse_port, QIDO to pacs.http_url

Port 0 (the default) takes a free port; stop() aborts open associations, closes both listening sockets and
joins the server threads, so the ports can be reused at once.
"""

from __future__ import annotations

import threading
from typing import Mapping

from services.pacs_sim.catalog import Catalog
from services.pacs_sim.faults import FaultInjector, Faults
from services.pacs_sim.scp import DimseService, build_ae, handlers
from services.pacs_sim.web import DicomWebServer, DicomWebService


class PacsSimulator:
    """A lab PACS: C-ECHO/FIND/MOVE/GET/STORE on `dimse_port`, QIDO-RS/WADO-RS on `http_url` when `http_port`
    is not None (0 = any free port)."""

    def __init__(
        self,
        name: str,
        ae_title: str,
        catalog: Catalog,
        *,
        dimse_port: int = 0,
        http_port: int | None = None,
        faults: Faults = Faults(),
        bind: str = "127.0.0.1",
        move_destinations: Mapping[str, tuple[str, int]] | None = None,
        charset: str = "ISO_IR 192",
        pn_case_insensitive: bool = False,
        qido_empty_status: int = 200,
    ) -> None:
        self.name = name
        self.ae_title = ae_title
        self.catalog = catalog
        self.faults = faults
        self.bind = bind
        self._stopping = threading.Event()
        injector = FaultInjector(faults, self._stopping)
        self.dimse = DimseService(catalog, injector, dict(move_destinations or {}), charset, pn_case_insensitive)
        self._requested_dimse_port = dimse_port
        self._requested_http_port = http_port
        self._web = DicomWebService(catalog, injector, empty_status=qido_empty_status)
        self._ae = None
        self._dimse_server = None
        self._http_server: DicomWebServer | None = None

    @property
    def move_destinations(self) -> dict[str, tuple[str, int]]:
        """AE title -> (host, port) for C-MOVE; may be changed while running."""
        return self.dimse.move_destinations

    @property
    def dimse_port(self) -> int:
        if self._dimse_server is None:
            raise RuntimeError(f"simulator {self.name} is not running")
        return self._dimse_server.server_address[1]

    @property
    def http_url(self) -> str | None:
        """The DICOMweb root, e.g. http://127.0.0.1:PORT/dicom-web, or None without an HTTP port."""
        if self._http_server is None:
            return None
        return f"http://{self.bind}:{self._http_server.port}{self._web.root}"

    def start(self) -> "PacsSimulator":
        """Open the listening sockets and serve in background threads (returns at once)."""
        if self._dimse_server is not None:
            return self
        self._stopping.clear()
        self._ae = build_ae(self.dimse, self.ae_title)
        self._dimse_server = self._ae.start_server(
            (self.bind, self._requested_dimse_port), block=False, evt_handlers=handlers(self.dimse)
        )
        if self._requested_http_port is not None:
            self._http_server = DicomWebServer(self._web, self.bind, self._requested_http_port)
            self._http_server.start()
        return self

    def stop(self) -> None:
        """Release hung handlers, abort associations, close the ports."""
        self._stopping.set()
        if self._ae is not None:
            self._ae.shutdown()
        if self._http_server is not None:
            self._http_server.stop()
        self._ae = self._dimse_server = self._http_server = None

    def __enter__(self) -> "PacsSimulator":
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()

    def describe(self) -> str:
        """One line: what this simulator serves where."""
        http = f", DICOMweb {self.http_url}" if self.http_url else ""
        return (f"{self.name}: AE {self.ae_title} on {self.bind}:{self.dimse_port}{http}, "
                f"{len(self.catalog.study_uids())} studies / {len(self.catalog)} instances")
