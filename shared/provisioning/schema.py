"""The shape of a provisioning file (`axiom config apply`): sources, spanner configs with their mappings, destinations.

A source entry is flat: name, kind, description, is_enabled, and its connection fields (shared/connections.py) beside
them. Spanner config fields are the `spanner_configs` columns; omitted ones take the column defaults. A destination
entry is a `dicom_destinations` row (C-MOVE destination), keyed by its AE title.
"""

from __future__ import annotations

import re
from typing import Annotated, Any, Optional

from pydantic import AfterValidator, BaseModel, ConfigDict, Field, field_validator

from shared.connections import AE_TITLE_PATTERN, MAX_TIMEOUT_SECONDS, check_ae_title, check_host
from shared.db.base import MAX_INTEGER, check_storable_text
from shared.db.models import CmoveStrategy
from shared.db.repo.spanner_configs import SPANNER_CONFIG_DEFAULTS
from shared.security.networks import parse_networks
from shared.spanning.model import DedupStrategy, FailureStrategy

SOURCE_ENTRY_FIELDS = ("name", "kind", "description", "is_enabled")
NAME_PATTERN = r"^[A-Za-z0-9][A-Za-z0-9_.\-]{0,63}$"

_D = SPANNER_CONFIG_DEFAULTS

# An AE title, checked and stripped (PS3.5 6.2); errors name the list index when it is an item of a list.
AeTitle = Annotated[str, AfterValidator(check_ae_title)]


class _Strict(BaseModel):
    """Unknown fields, NaN/infinite numbers and text a database cannot store (shared.db.base) are refused."""

    model_config = ConfigDict(extra="forbid", allow_inf_nan=False)

    _storable = field_validator("*")(classmethod(lambda cls, v: check_storable_text(v)))


class SourceEntryMeta(_Strict):
    """The non-connection fields of a source entry."""

    name: str = Field(pattern=NAME_PATTERN)
    kind: str
    description: Optional[str] = None
    is_enabled: bool = True


class MappingEntry(_Strict):
    """One source of a spanner config."""

    source: str
    priority: int = Field(default=100, ge=0, le=MAX_INTEGER)
    timeout_seconds: Optional[float] = Field(default=None, gt=0, le=MAX_TIMEOUT_SECONDS)
    max_retries: int = Field(default=0, ge=0, le=10)
    is_enabled: bool = True
    additional_query_filters: Optional[dict[str, str]] = None


class SpannerConfigEntry(_Strict):
    """One spanner config; `sources` (when present) replaces its mappings, absent leaves them alone."""

    name: str = Field(pattern=NAME_PATTERN)
    description: Optional[str] = None
    max_concurrent_sources: int = Field(default=_D["max_concurrent_sources"], ge=1, le=256)
    query_timeout_seconds: float = Field(default=_D["query_timeout_seconds"], gt=0, le=3600)
    failure_strategy: FailureStrategy = _D["failure_strategy"]
    minimum_success_threshold: int = Field(default=_D["minimum_success_threshold"], ge=0, le=MAX_INTEGER)
    deduplication_strategy: DedupStrategy = _D["deduplication_strategy"]
    cmove_strategy: CmoveStrategy = _D["cmove_strategy"]
    supports_dimse_scp: bool = _D["supports_dimse_scp"]
    supports_qido: bool = _D["supports_qido"]
    supports_wado: bool = _D["supports_wado"]
    supports_cmove: bool = _D["supports_cmove"]
    supports_cget: bool = _D["supports_cget"]
    scp_ae_title: Optional[str] = None
    allowed_calling_ae_titles: Optional[list[AeTitle]] = None
    allowed_client_networks: Optional[list[str]] = None
    cache_ttl_seconds: int = Field(default=_D["cache_ttl_seconds"], ge=0, le=MAX_INTEGER)
    is_enabled: bool = _D["is_enabled"]
    sources: Optional[list[MappingEntry]] = None

    @field_validator("failure_strategy", "deduplication_strategy", "cmove_strategy", mode="before")
    @classmethod
    def _upper(cls, value: Any) -> Any:
        return value.strip().upper() if isinstance(value, str) else value

    @field_validator("scp_ae_title")
    @classmethod
    def _ae_title(cls, value: Optional[str]) -> Optional[str]:
        if value is None or not value.strip():
            return None
        if not re.fullmatch(AE_TITLE_PATTERN, value.strip()):
            raise ValueError("an AE title is 1-16 printable ASCII characters without backslash (PS3.5 6.2)")
        return value.strip()

    @field_validator("allowed_calling_ae_titles")
    @classmethod
    def _calling_ae_titles(cls, value: Optional[list[str]]) -> Optional[list[str]]:
        """An empty list is stored as None (both mean: any calling AE); a title listed twice is refused."""
        if not value:
            return None
        twice = sorted({title for title in value if value.count(title) > 1})
        if twice:
            raise ValueError(f"AE title(s) listed twice: {', '.join(twice)}")
        return value

    @field_validator("allowed_client_networks")
    @classmethod
    def _client_networks(cls, value: Optional[list[str]]) -> Optional[list[str]]:
        """CIDR blocks in their normal form (host bits cleared); an empty list is stored as None (any client)."""
        if not value:
            return None
        return [str(network) for network in parse_networks(value)]

    def columns(self) -> dict[str, Any]:
        """The spanner_configs column values (everything but name and sources)."""
        return self.model_dump(exclude={"name", "sources"})


class DestinationEntry(_Strict):
    """One C-MOVE destination (`dicom_destinations`), upserted by its AE title (stored stripped)."""

    ae_title: AeTitle
    host: str = Field(min_length=1, max_length=255)
    port: int = Field(ge=1, le=65535)
    description: Optional[str] = None
    is_enabled: bool = True

    _host = field_validator("host")(classmethod(lambda cls, v: check_host(v)))


class ConfigFile(BaseModel):
    """The whole file: every list optional; anything not listed is left as it is in the database. The entries stay
    raw here: each is validated by its own model (SourceEntryMeta + connection, SpannerConfigEntry,
    DestinationEntry), so an error names the entry's path and line."""

    model_config = ConfigDict(extra="forbid")

    sources: list[dict[str, Any]] = Field(default_factory=list)
    spanner_configs: list[dict[str, Any]] = Field(default_factory=list)
    destinations: list[dict[str, Any]] = Field(default_factory=list)
