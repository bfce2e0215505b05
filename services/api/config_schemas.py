"""Request and response bodies of the configuration routes (`/api/v1/config/...`).

Requests reuse the validation of shared/: a source's `connection` is shared.connections.SourceConnection (the
discriminated union on `kind`), a destination is shared.provisioning.schema.DestinationEntry, a spanner config is
SpannerConfigEntry without its `sources` list (mappings have their own sub-resource). Responses never carry
secrets: connection passwords and tokens are masked (shared.provisioning.secrets.MASK); a masked value sent back
in a PUT means "keep the stored secret".
"""

from __future__ import annotations

from datetime import datetime
from typing import Any

from pydantic import BaseModel, ConfigDict, Field, field_validator
from pydantic.json_schema import SkipJsonSchema

from shared.connections import MAX_TIMEOUT_SECONDS, SourceConnection
from shared.db.base import MAX_INTEGER, check_storable_text
from shared.db.models import CmoveStrategy, DicomDestination, Source, SpannerConfig, SpannerSourceMapping
from shared.provisioning.schema import NAME_PATTERN, DestinationEntry, SpannerConfigEntry
from shared.provisioning.secrets import mask_secrets
from shared.spanning.model import DedupStrategy, FailureStrategy


class _Strict(BaseModel):
    """Unknown fields, NaN/infinite numbers and text a database cannot store (shared.db.base) are refused."""

    model_config = ConfigDict(extra="forbid", allow_inf_nan=False)

    _storable = field_validator("*")(classmethod(lambda cls, v: check_storable_text(v)))


# -- sources -------------------------------------------------------------------------------------------------------


class SourceIn(_Strict):
    """A source to create or (PUT: wholly) replace; `connection.kind` is the source's kind."""

    name: str = Field(pattern=NAME_PATTERN)
    description: str | None = None
    is_enabled: bool = True
    connection: SourceConnection


class SourceOut(BaseModel):
    """A source with its connection, secrets masked."""

    id: int
    name: str
    kind: str
    description: str | None
    is_enabled: bool
    connection: dict[str, Any]
    created_at: datetime
    updated_at: datetime

    @classmethod
    def of(cls, source: Source) -> SourceOut:
        return cls(id=source.id, name=source.name, kind=source.kind, description=source.description,
                   is_enabled=source.is_enabled, connection=mask_secrets(source.connection_data),
                   created_at=source.created_at, updated_at=source.updated_at)


# -- destinations --------------------------------------------------------------------------------------------------


class DestinationIn(DestinationEntry):
    """A C-MOVE destination to create or (PUT: wholly) replace: AE title -> host/port."""


class DestinationOut(BaseModel):
    """A C-MOVE destination."""

    id: int
    ae_title: str
    host: str
    port: int
    description: str | None
    is_enabled: bool
    created_at: datetime
    updated_at: datetime

    @classmethod
    def of(cls, row: DicomDestination) -> DestinationOut:
        return cls(id=row.id, ae_title=row.ae_title, host=row.host, port=row.port, description=row.description,
                   is_enabled=row.is_enabled, created_at=row.created_at, updated_at=row.updated_at)


# -- spanner configs -----------------------------------------------------------------------------------------------


class SpannerConfigIn(SpannerConfigEntry):
    """A spanner config to create or (PUT: wholly) replace; omitted fields take their defaults.

    Its sources are managed under `/api/v1/config/spanner/{id}/sources`, so `sources` is refused here.
    """

    sources: SkipJsonSchema[None] = None


class MappingIn(_Strict):
    """A source to add to a spanner config, by the source's id."""

    source_id: int = Field(ge=1, le=MAX_INTEGER)
    priority: int = Field(default=100, ge=0, le=MAX_INTEGER, description="lower = preferred")
    timeout_seconds: float | None = Field(default=None, gt=0, le=MAX_TIMEOUT_SECONDS)
    max_retries: int = Field(default=0, ge=0, le=10)
    is_enabled: bool = True
    additional_query_filters: dict[str, str] | None = None


class MappingOut(BaseModel):
    """One source of a spanner config (lower priority = preferred)."""

    source_id: int
    source: str
    kind: str
    priority: int
    timeout_seconds: float | None
    max_retries: int
    is_enabled: bool
    additional_query_filters: dict[str, Any] | None

    @classmethod
    def of(cls, mapping: SpannerSourceMapping) -> MappingOut:
        return cls(source_id=mapping.source_id, source=mapping.source.name, kind=mapping.source.kind,
                   priority=mapping.priority, timeout_seconds=mapping.timeout_seconds,
                   max_retries=mapping.max_retries, is_enabled=mapping.is_enabled,
                   additional_query_filters=mapping.additional_query_filters)


class SpannerConfigOut(BaseModel):
    """A spanner config: every column, and its sources."""

    id: int
    name: str
    description: str | None
    max_concurrent_sources: int
    query_timeout_seconds: float
    failure_strategy: FailureStrategy
    minimum_success_threshold: int
    deduplication_strategy: DedupStrategy
    cmove_strategy: CmoveStrategy
    supports_dimse_scp: bool
    supports_qido: bool
    supports_wado: bool
    supports_cmove: bool
    supports_cget: bool
    scp_ae_title: str | None
    allowed_calling_ae_titles: list[str] | None
    allowed_client_networks: list[str] | None
    cache_ttl_seconds: int
    is_enabled: bool
    created_at: datetime
    updated_at: datetime
    sources: list[MappingOut]

    @classmethod
    def of(cls, config: SpannerConfig) -> SpannerConfigOut:
        columns = {name: getattr(config, name) for name in cls.model_fields if name != "sources"}
        return cls(**columns, sources=[MappingOut.of(m) for m in config.mappings])


class ProbeOut(BaseModel):
    """The probe of one mapped source: C-ECHO (DIMSE) or QIDO-RS `studies?limit=1` (DICOMweb)."""

    source_id: int
    source: str
    kind: str
    is_enabled: bool
    reachable: bool
    latency_ms: float | None
    error: str | None


class SpannerTestOut(BaseModel):
    """The probes of every source mapped to a spanner config; `reachable` counts the reachable ones."""

    spanner_config_id: int
    name: str
    reachable: int
    total: int
    sources: list[ProbeOut]
