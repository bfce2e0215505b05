"""Typed connection configs for the archives the spanner queries, one pydantic model per source kind.

`SourceConnection` is a discriminated union on `kind`; the database stores it as JSON and validates it on the way
in and out, so a bad port or URL is refused with the field named.
"""

from __future__ import annotations

from typing import Annotated, Literal, Union
from urllib.parse import urlsplit

from pydantic import BaseModel, ConfigDict, Field, TypeAdapter, field_validator, model_validator

from shared.db.base import check_storable_text

AE_TITLE_PATTERN = r"^[\x20-\x5b\x5d-\x7e]{1,16}$"  # PS3.5 6.2 AE: 16 chars, no backslash or control chars


def check_ae_title(value: str) -> str:
    """The AE title stripped, or ValueError: 1-16 printable ASCII characters without backslash (PS3.5 6.2)."""
    text = value.strip()
    if not text or len(text) > 16 or "\\" in text or any(ord(c) < 0x20 or ord(c) > 0x7E for c in text):
        raise ValueError("an AE title is 1-16 printable ASCII characters without backslash (PS3.5 6.2)")
    return text


def check_host(value: str) -> str:
    """A host name or address, stripped; ValueError when empty."""
    if not value.strip():
        raise ValueError("host must not be empty")
    return value.strip()


GOOGLE_HEALTHCARE_URL = "https://healthcare.googleapis.com/v1"  # the Cloud Healthcare API's public v1 root
MAX_TIMEOUT_SECONDS = 86400.0  # a day: longer is a mistake, and far larger values overflow socket timeouts
MAX_PDU_LENGTH = 2**32 - 1  # the PDU length field is 32 bits (PS3.8 9.3.1)


class _Connection(BaseModel):
    """Unknown fields, NaN/infinite numbers and text a database cannot store (shared.db.base) are refused."""

    model_config = ConfigDict(extra="forbid", frozen=True, allow_inf_nan=False)

    _storable = field_validator("*")(classmethod(lambda cls, v: check_storable_text(v)))


class DimseConnection(_Connection):
    """A DIMSE Query/Retrieve SCP."""

    kind: Literal["dimse"] = "dimse"
    ae_title: str
    host: str
    port: int = Field(ge=1, le=65535)
    calling_ae_title: str = "AXIOM"
    max_pdu: int = Field(default=0, ge=0, le=MAX_PDU_LENGTH, description="0 = unlimited (PS3.8 D.1)")
    acse_timeout: float = Field(default=10.0, gt=0, le=MAX_TIMEOUT_SECONDS)
    dimse_timeout: float = Field(default=30.0, gt=0, le=MAX_TIMEOUT_SECONDS)
    network_timeout: float = Field(default=30.0, gt=0, le=MAX_TIMEOUT_SECONDS)
    connect_timeout: float = Field(default=5.0, gt=0, le=MAX_TIMEOUT_SECONDS)
    supports_cget: bool = True
    supports_cmove: bool = True

    _ae = field_validator("ae_title", "calling_ae_title")(classmethod(lambda cls, v: check_ae_title(v)))
    _host = field_validator("host")(classmethod(lambda cls, v: check_host(v)))


class DicomwebAuth(_Connection):
    """HTTP authentication for a DICOMweb server."""

    type: Literal["none", "basic", "bearer", "api_key"] = "none"
    username: str | None = None
    password: str | None = None
    token: str | None = None
    header: str = "X-API-Key"

    @model_validator(mode="after")
    def _complete(self) -> "DicomwebAuth":
        if self.type == "basic" and not (self.username and self.password is not None):
            raise ValueError("basic auth needs username and password")
        if self.type in ("bearer", "api_key") and not self.token:
            raise ValueError(f"{self.type} auth needs token")
        return self


class DicomwebConnection(_Connection):
    """A DICOMweb server (PS3.18): QIDO-RS, WADO-RS and STOW-RS under one base URL."""

    kind: Literal["dicomweb"] = "dicomweb"
    base_url: str
    qido_prefix: str = ""
    wado_prefix: str = ""
    stow_prefix: str = ""
    auth: DicomwebAuth = DicomwebAuth()
    timeout: float = Field(default=30.0, gt=0, le=MAX_TIMEOUT_SECONDS)
    verify_tls: bool = True

    @field_validator("base_url")
    @classmethod
    def _url(cls, value: str) -> str:
        text = value.strip().rstrip("/")
        if not text.startswith(("http://", "https://")) or len(text) <= len("https://"):
            raise ValueError("base_url must be an http:// or https:// URL")
        if urlsplit(text).username is not None:  # it would be shown and logged with the URL
            raise ValueError("base_url must not carry credentials: use auth: {type: basic, username, password}")
        return text


class GoogleHealthcareConnection(_Connection):
    """A Google Cloud Healthcare API DICOM store (served over DICOMweb)."""

    kind: Literal["google_healthcare"] = "google_healthcare"
    project: str = Field(min_length=1)
    location: str = Field(min_length=1)
    dataset: str = Field(min_length=1)
    dicom_store: str = Field(min_length=1)
    timeout: float = Field(default=30.0, gt=0, le=MAX_TIMEOUT_SECONDS)

    @property
    def base_url(self) -> str:
        """The store's DICOMweb root under Google's public endpoint (for display; queries use `dicomweb_url` with
        AXIOM_GOOGLE_HEALTHCARE_URL)."""
        return self.dicomweb_url(GOOGLE_HEALTHCARE_URL)

    def dicomweb_url(self, api_root: str) -> str:
        """The store's DICOMweb root under `api_root` (e.g. https://healthcare.googleapis.com/v1): the Healthcare API
        path projects/{p}/locations/{l}/datasets/{d}/dicomStores/{s}/dicomWeb."""
        return (
            f"{api_root.rstrip('/')}/projects/"
            f"{self.project}/locations/{self.location}/datasets/{self.dataset}/dicomStores/{self.dicom_store}/dicomWeb"
        )


SourceConnection = Annotated[
    Union[DimseConnection, DicomwebConnection, GoogleHealthcareConnection], Field(discriminator="kind")
]
SOURCE_CONNECTION = TypeAdapter(SourceConnection)
SOURCE_KINDS = ("dimse", "dicomweb", "google_healthcare")


def parse_connection(data: dict) -> DimseConnection | DicomwebConnection | GoogleHealthcareConnection:
    """Validate a connection dict (with `kind`); pydantic.ValidationError names the bad field."""
    return SOURCE_CONNECTION.validate_python(data)
