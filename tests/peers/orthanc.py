"""A real Orthanc (DIMSE + DICOMweb) on loopback for tests, configured as /work/shared/PEERS.md describes."""

from __future__ import annotations

import json
import os
import shutil
import signal
import subprocess
import time
from pathlib import Path
from typing import Iterable, Mapping

import httpx
from pydicom import Dataset

from tests.peers.studies import to_part10

ORTHANC_BINARY = os.environ.get("AXIOM_ORTHANC_BINARY", "/usr/sbin/Orthanc")
DICOMWEB_PLUGIN = "/usr/share/orthanc/plugins/libOrthancDicomWeb.so"


def orthanc_available() -> bool:
    """True when the Orthanc binary and its DICOMweb plugin are installed."""
    return (Path(ORTHANC_BINARY).exists() or shutil.which(ORTHANC_BINARY) is not None) and Path(
        DICOMWEB_PLUGIN
    ).exists()


class OrthancPeer:
    """One Orthanc process with its own config, storage and ports.

    `modalities`: DicomModalities entries, e.g. {"WS": ("WS", "127.0.0.1", 11200)} (C-MOVE destinations).
    """

    def __init__(self, name: str, aet: str, dicom_port: int, http_port: int, tmpdir: Path | str,
                 modalities: Mapping[str, tuple[str, str, int]] | None = None) -> None:
        self.name, self.aet, self.dicom_port, self.http_port = name, aet, dicom_port, http_port
        self.workdir = Path(tmpdir) / name
        self.modalities = dict(modalities or {})
        self._process: subprocess.Popen | None = None
        self._http = httpx.Client(base_url=self.base_url, timeout=10.0)

    @property
    def base_url(self) -> str:
        return f"http://127.0.0.1:{self.http_port}"

    @property
    def dicomweb_url(self) -> str:
        return f"{self.base_url}/dicom-web"

    @property
    def log_path(self) -> Path:
        return self.workdir / "orthanc.log"

    def config(self) -> dict:
        """The Orthanc JSON configuration this peer runs with."""
        return {
            "Name": self.name,
            "DicomAet": self.aet,
            "DicomPort": self.dicom_port,
            "HttpPort": self.http_port,
            "HttpBindAddress": "127.0.0.1",
            "StorageDirectory": str(self.workdir / "storage"),
            "IndexDirectory": str(self.workdir / "index"),
            "RemoteAccessAllowed": False,
            "AuthenticationEnabled": False,
            "DicomCheckCalledAet": False,
            "DicomAlwaysAllowEcho": True,
            "DicomAlwaysAllowStore": True,
            "DicomAlwaysAllowFind": True,
            "DicomAlwaysAllowMove": True,
            "DicomAlwaysAllowGet": True,
            "DicomModalities": {k: list(v) for k, v in self.modalities.items()},
            "Plugins": [DICOMWEB_PLUGIN],
            "DicomWeb": {"Enable": True, "Root": "/dicom-web/"},
        }

    def start(self, timeout: float = 20.0) -> "OrthancPeer":
        """Write the config, start Orthanc and wait until GET /system answers."""
        self.workdir.mkdir(parents=True, exist_ok=True)
        config_path = self.workdir / "orthanc.json"
        config_path.write_text(json.dumps(self.config(), indent=2))
        log = open(self.log_path, "wb")
        self._process = subprocess.Popen([ORTHANC_BINARY, str(config_path)], stdout=log, stderr=subprocess.STDOUT,
                                         cwd=self.workdir)
        log.close()
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self._process.poll() is not None:
                raise RuntimeError(f"Orthanc {self.name} exited with {self._process.returncode}: {self.log_tail()}")
            try:
                if self._http.get("/system", timeout=1.0).status_code == 200:
                    return self
            except httpx.TransportError:
                pass
            time.sleep(0.05)
        self.stop()
        raise RuntimeError(f"Orthanc {self.name} did not answer GET /system within {timeout} s: {self.log_tail()}")

    def stop(self, timeout: float = 10.0) -> None:
        """SIGTERM and wait for the process to exit (SIGKILL after `timeout`), so its ports can be reused."""
        process, self._process = self._process, None
        if process is not None and process.poll() is None:
            process.send_signal(signal.SIGTERM)
            try:
                process.wait(timeout)
            except subprocess.TimeoutExpired:
                process.kill()
                process.wait(5)
        self._http.close()

    def load(self, datasets: Iterable[Dataset]) -> int:
        """Store each dataset via POST /instances (Part-10 bytes); returns how many were stored."""
        stored = 0
        for ds in datasets:
            response = self._http.post("/instances", content=to_part10(ds),
                                       headers={"Content-Type": "application/dicom"})
            response.raise_for_status()
            stored += 1
        return stored

    def statistics(self) -> dict:
        """GET /statistics (CountPatients, CountStudies, CountSeries, CountInstances, ...)."""
        response = self._http.get("/statistics")
        response.raise_for_status()
        return response.json()

    def log_tail(self, lines: int = 20) -> str:
        try:
            return "\n".join(self.log_path.read_text(errors="replace").splitlines()[-lines:])
        except OSError:
            return "(no log)"

    def __enter__(self) -> "OrthancPeer":
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()
