"""Queries on `spanner_configs` and their source mappings, and the span plan the engine runs from them."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, Sequence

from sqlalchemy import select
from sqlalchemy.orm import Session, selectinload

from shared.db.models import Source, SpannerConfig, SpannerSourceMapping
from shared.db.repo.upserts import Upserted, upsert_row
from shared.spanning.model import SourceSpec, SpanPolicy

_NOT_SETTABLE = {"id", "name", "created_at", "updated_at"}


def _column_defaults() -> dict[str, Any]:
    defaults = {}
    for column in SpannerConfig.__table__.columns:
        if column.key in _NOT_SETTABLE:
            continue
        default = column.default.arg if column.default is not None else None
        defaults[column.key] = None if callable(default) else default
    return defaults


# Every settable column of a spanner config and its default (an upsert resets omitted fields to these).
SPANNER_CONFIG_DEFAULTS: dict[str, Any] = _column_defaults()


@dataclass(frozen=True)
class MappingSpec:
    """One wanted source mapping of a spanner config, by source name."""

    source: str
    priority: int = 100
    timeout_seconds: float | None = None
    max_retries: int = 0
    is_enabled: bool = True
    additional_query_filters: dict[str, Any] | None = None


@dataclass(frozen=True)
class SpanPlan:
    """What a span over a spanner config needs: the config row, its policy and its enabled sources by priority."""

    config: SpannerConfig
    policy: SpanPolicy
    sources: list[SourceSpec] = field(default_factory=list)


def get_spanner_config(session: Session, *, id: int | None = None, name: str | None = None) -> SpannerConfig | None:
    """The spanner config with this id or name (exactly one of them), or None."""
    if (id is None) == (name is None):
        raise ValueError("give exactly one of id or name")
    if id is not None:
        return session.get(SpannerConfig, id)
    return session.scalar(select(SpannerConfig).where(SpannerConfig.name == name))


def get_config_by_scp_ae_title(session: Session, *, ae_title: str) -> SpannerConfig | None:
    """The enabled config with supports_dimse_scp answering on this SCP AE title (stripped, exact), or None.

    The Called AE Title of an association request (PS3.8 7.1.1.4) picks the config; spaces around it are not
    significant (PS3.5 6.2).
    """
    return session.scalar(select(SpannerConfig).where(
        SpannerConfig.scp_ae_title == ae_title.strip(),
        SpannerConfig.is_enabled.is_(True),
        SpannerConfig.supports_dimse_scp.is_(True),
    ))


def list_spanner_configs(session: Session, *, enabled_only: bool = False) -> list[SpannerConfig]:
    """All spanner configs by name, with their mappings loaded."""
    query = select(SpannerConfig).options(selectinload(SpannerConfig.mappings)).order_by(SpannerConfig.name)
    if enabled_only:
        query = query.where(SpannerConfig.is_enabled.is_(True))
    return list(session.scalars(query))


def upsert_spanner_config(session: Session, *, name: str, **fields: Any) -> Upserted:
    """Create or update the config `name`; omitted columns take their defaults (the call states the whole config).

    Unknown field names raise ValueError. Returns the row and "created", "updated" or "unchanged".
    """
    unknown = sorted(set(fields) - set(SPANNER_CONFIG_DEFAULTS))
    if unknown:
        raise ValueError(f"spanner config {name!r}: unknown field(s) {', '.join(unknown)}")
    wanted = {**SPANNER_CONFIG_DEFAULTS, **fields}
    existing = get_spanner_config(session, name=name)
    return upsert_row(session, model=SpannerConfig, existing=existing, name=name, wanted=wanted)


def _mapping_values(spec: MappingSpec) -> dict[str, Any]:
    return {
        "priority": spec.priority,
        "timeout_seconds": spec.timeout_seconds,
        "max_retries": spec.max_retries,
        "is_enabled": spec.is_enabled,
        "additional_query_filters": spec.additional_query_filters or None,
    }


def replace_mappings(session: Session, *, config: SpannerConfig, mappings: Sequence[MappingSpec]) -> bool:
    """Make the config's mappings exactly `mappings` (by source name); True if anything changed.

    Unknown source names raise LookupError naming them; a source listed twice raises ValueError.
    """
    names = [spec.source for spec in mappings]
    duplicates = sorted({n for n in names if names.count(n) > 1})
    if duplicates:
        raise ValueError(f"spanner config {config.name!r}: source(s) listed twice: {', '.join(duplicates)}")
    sources = {s.name: s for s in session.scalars(select(Source).where(Source.name.in_(names)))}
    missing = [n for n in names if n not in sources]
    if missing:
        raise LookupError(f"spanner config {config.name!r}: unknown source(s): {', '.join(missing)}")
    existing = {m.source_id: m for m in config.mappings}
    changed = False
    for spec in mappings:
        values = _mapping_values(spec)
        mapping = existing.pop(sources[spec.source].id, None)
        if mapping is None:
            config.mappings.append(SpannerSourceMapping(source=sources[spec.source], **values))
            changed = True
            continue
        for key, value in values.items():
            if getattr(mapping, key) != value:
                setattr(mapping, key, value)
                changed = True
    for stale in existing.values():
        config.mappings.remove(stale)
        changed = True
    if changed:
        session.flush()
    return changed


def source_spec(mapping: SpannerSourceMapping) -> SourceSpec:
    """The engine's view of one mapped source: typed connection, priority, timeout and retries from the mapping.

    RetrieveAETitle (0008,0054) for its matches is the DIMSE AE title, or the source name for web sources.
    """
    source = mapping.source
    connection = source.connection
    return SourceSpec(
        name=source.name,
        kind=source.kind,
        connection=connection,
        priority=mapping.priority,
        timeout_seconds=mapping.timeout_seconds,
        max_retries=mapping.max_retries,
        retrieve_ae_title=getattr(connection, "ae_title", None) or source.name,
        additional_filters=dict(mapping.additional_query_filters or {}),
    )


def span_policy(config: SpannerConfig) -> SpanPolicy:
    """The config's failure/dedup policy, concurrency and deadline as the engine's SpanPolicy."""
    return SpanPolicy(
        failure_strategy=config.failure_strategy,
        minimum_success_threshold=config.minimum_success_threshold,
        dedup_strategy=config.deduplication_strategy,
        max_concurrent_sources=config.max_concurrent_sources,
        query_timeout_seconds=config.query_timeout_seconds,
    )


def load_span_plan(session: Session, *, config_id: int | None = None, config_name: str | None = None) -> SpanPlan:
    """The plan of a spanner config: policy plus enabled sources of enabled mappings, lower priority first.

    LookupError if there is no such config, ValueError if it is disabled. A config with no enabled source gives
    an empty source list (the engine then answers with no matches).
    """
    config = get_spanner_config(session, id=config_id, name=config_name)
    if config is None:
        raise LookupError(f"no spanner config {config_name if config_name is not None else config_id!r}")
    if not config.is_enabled:
        raise ValueError(f"spanner config {config.name!r} is disabled")
    mappings = [m for m in config.mappings if m.is_enabled and m.source.is_enabled]
    mappings.sort(key=lambda m: (m.priority, m.source.name))
    return SpanPlan(config=config, policy=span_policy(config), sources=[source_spec(m) for m in mappings])
