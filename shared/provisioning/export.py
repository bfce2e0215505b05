"""`export_config`: the database's sources, spanner configs and destinations as a provisioning document.

`axiom config show` prints it. The document round-trips: applying it back changes nothing. Secrets (passwords,
tokens) are masked; applying a masked value keeps the stored secret.
"""

from __future__ import annotations

from typing import Any

from sqlalchemy.orm import Session

from shared.db.models import DicomDestination, Source, SpannerConfig, SpannerSourceMapping
from shared.db.repo.destinations import list_destinations
from shared.db.repo.sources import list_sources
from shared.db.repo.spanner_configs import list_spanner_configs
from shared.provisioning.secrets import mask_secrets

_MAPPING_DEFAULTS = {"timeout_seconds": None, "max_retries": 0, "is_enabled": True, "additional_query_filters": None}


def export_source(source: Source) -> dict[str, Any]:
    """A flat source entry: name, kind, non-default connection fields (secrets masked), description, is_enabled."""
    entry: dict[str, Any] = {"name": source.name, "kind": source.kind}
    fields = source.connection.model_dump(mode="json", exclude_defaults=True)
    fields.pop("kind", None)
    entry.update(mask_secrets(fields))
    if source.description:
        entry["description"] = source.description
    if not source.is_enabled:
        entry["is_enabled"] = False
    return entry


def _export_mapping(mapping: SpannerSourceMapping) -> dict[str, Any]:
    entry: dict[str, Any] = {"source": mapping.source.name, "priority": mapping.priority}
    for key, default in _MAPPING_DEFAULTS.items():
        value = getattr(mapping, key)
        if value != default:
            entry[key] = value
    return entry


def export_spanner_config(config: SpannerConfig) -> dict[str, Any]:
    """Every column of the config (enums as their values) and its mappings by priority."""
    entry: dict[str, Any] = {"name": config.name}
    for column in SpannerConfig.__table__.columns:
        if column.key in ("id", "name", "created_at", "updated_at"):
            continue
        value = getattr(config, column.key)
        entry[column.key] = getattr(value, "value", value)
    mappings = sorted(config.mappings, key=lambda m: (m.priority, m.source.name))
    entry["sources"] = [_export_mapping(m) for m in mappings]
    return entry


def export_destination(destination: DicomDestination) -> dict[str, Any]:
    """A destination entry: ae_title, host, port, and description / is_enabled when not the defaults."""
    entry: dict[str, Any] = {"ae_title": destination.ae_title, "host": destination.host, "port": destination.port}
    if destination.description is not None:
        entry["description"] = destination.description
    if not destination.is_enabled:
        entry["is_enabled"] = False
    return entry


def export_config(session: Session) -> dict[str, Any]:
    """{"sources": [...], "spanner_configs": [...], "destinations": [...]}, by name (destinations by AE title).

    Accepted unchanged by apply_config_yaml.
    """
    return {
        "sources": [export_source(s) for s in list_sources(session)],
        "spanner_configs": [export_spanner_config(c) for c in list_spanner_configs(session)],
        "destinations": [export_destination(d) for d in list_destinations(session)],
    }
