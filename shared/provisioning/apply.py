"""`apply_config_yaml`: make the database hold the sources, spanner configs and destinations a YAML file declares.

Declarative and idempotent: entries are upserted by name (destinations by AE title; omitted fields take their
defaults), a config's `sources` list replaces its mappings, and applying the same file twice reports everything
unchanged. Nothing not named in the file is deleted. The whole file is validated before anything is written; the
caller owns the transaction (commit on success, roll back on error, as shared.db.session.session_scope does), so an
error leaves the database unchanged.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, Literal

from pydantic import BaseModel, ValidationError
from sqlalchemy.exc import IntegrityError
from sqlalchemy.orm import Session

from shared.config import ScpSettings
from shared.connections import SOURCE_KINDS, parse_connection
from shared.db.repo.destinations import upsert_destination
from shared.db.repo.sources import get_source, list_sources, upsert_source
from shared.db.repo.spanner_configs import (
    MappingSpec,
    list_spanner_configs,
    replace_mappings,
    upsert_spanner_config,
)
from shared.provisioning.schema import ConfigFile, DestinationEntry, SourceEntryMeta, SpannerConfigEntry
from shared.provisioning.secrets import restore_masked
from shared.provisioning.self_loop import own_scp_refusal
from shared.provisioning.yaml_source import ConfigError, LocatedYaml, load_located_yaml, located_problem

Action = Literal["created", "updated", "unchanged"]


@dataclass(frozen=True)
class Change:
    """What applying did to one entry."""

    entity: Literal["source", "spanner_config", "destination"]
    name: str  # a destination's AE title
    action: Action


@dataclass
class ApplyReport:
    """Every entry of the file and whether it was created, updated or left unchanged."""

    changes: list[Change] = field(default_factory=list)

    @property
    def changed(self) -> bool:
        return any(change.action != "unchanged" for change in self.changes)

    def count(self, action: Action) -> int:
        return sum(1 for change in self.changes if change.action == action)

    def summary(self) -> str:
        """'2 created, 1 updated, 3 unchanged'."""
        return ", ".join(f"{self.count(a)} {a}" for a in ("created", "updated", "unchanged"))


@dataclass
class _Source:
    path: tuple
    meta: SourceEntryMeta
    connection: Any


@dataclass
class _Plan:
    sources: list[_Source] = field(default_factory=list)
    configs: list[tuple[tuple, SpannerConfigEntry]] = field(default_factory=list)
    destinations: list[tuple[tuple, DestinationEntry]] = field(default_factory=list)


def _validated(model: type[BaseModel], data: Any, doc: LocatedYaml, path: tuple, problems: list[str]) -> Any:
    try:
        return model.model_validate(data)
    except ValidationError as exc:
        for error in exc.errors():
            problems.append(located_problem(doc, path + tuple(error["loc"]), error["msg"]))
        return None


def _check_source(doc: LocatedYaml, path: tuple, entry: Any, session: Session, problems: list[str]) -> _Source | None:
    if not isinstance(entry, dict):
        problems.append(located_problem(doc, path, "a source entry must be a mapping"))
        return None
    meta_fields = {k: entry[k] for k in ("name", "kind", "description", "is_enabled") if k in entry}
    meta = _validated(SourceEntryMeta, meta_fields, doc, path, problems)
    if meta is None:
        return None
    if meta.kind not in SOURCE_KINDS:
        problems.append(located_problem(doc, path + ("kind",), f"unknown kind {meta.kind!r}: expected one of "
                                        f"{', '.join(SOURCE_KINDS)}"))
        return None
    data = {k: v for k, v in entry.items() if k not in ("name", "description", "is_enabled")}
    stored = get_source(session, name=meta.name)
    data, missing = restore_masked(data, stored.connection_data if stored is not None else None)
    for secret_path in missing:
        problems.append(located_problem(doc, path + secret_path, "is masked; give the real value"))
    try:
        connection = parse_connection(data)
    except ValidationError as exc:
        for error in exc.errors():
            loc = tuple(error["loc"])
            loc = loc[1:] if loc and loc[0] == meta.kind else loc  # drop the union's tag
            problems.append(located_problem(doc, path + loc, error["msg"]))
        return None
    return _Source(path=path, meta=meta, connection=connection)


def _duplicates(doc: LocatedYaml, items: list[tuple[tuple, str]], what: str, problems: list[str],
                key: str = "name") -> None:
    seen: set[str] = set()
    for path, name in items:
        if name in seen:
            problems.append(located_problem(doc, path + (key,), f"{what} {name!r} is listed twice"))
        seen.add(name)


def _check_references(doc: LocatedYaml, plan: _Plan, session: Session, problems: list[str]) -> None:
    known = {s.meta.name for s in plan.sources} | {s.name for s in list_sources(session)}
    for path, entry in plan.configs:
        for index, mapping in enumerate(entry.sources or []):
            if mapping.source not in known:
                problems.append(located_problem(doc, path + ("sources", index, "source"),
                                                f"unknown source {mapping.source!r} (not in this file or the database)"))
    in_file = {entry.name for _, entry in plan.configs}
    owners = {c.scp_ae_title: c.name for c in list_spanner_configs(session) if c.scp_ae_title and c.name not in in_file}
    for path, entry in plan.configs:
        if entry.scp_ae_title is None:
            continue
        owner = owners.setdefault(entry.scp_ae_title, entry.name)
        if owner != entry.name:
            problems.append(located_problem(doc, path + ("scp_ae_title",),
                                            f"{entry.scp_ae_title!r} is already the AE title of spanner config {owner!r}"))


def _check_self_loops(doc: LocatedYaml, plan: _Plan, session: Session, scp: ScpSettings, problems: list[str]) -> None:
    in_file = {entry.name for _, entry in plan.configs}
    titles = {scp.ae_title} | {e.scp_ae_title for _, e in plan.configs if e.scp_ae_title}
    titles |= {c.scp_ae_title for c in list_spanner_configs(session) if c.scp_ae_title and c.name not in in_file}
    for source in plan.sources:
        refusal = own_scp_refusal(source.meta.name, source.connection, scp_ae_titles=titles,
                                  scp_port=scp.port, scp_host=scp.host)
        if refusal:
            problems.append(located_problem(doc, source.path, refusal))


def _plan(doc: LocatedYaml, session: Session, scp: ScpSettings) -> _Plan:
    problems: list[str] = []
    file = _validated(ConfigFile, doc.data if doc.data is not None else {}, doc, (), problems)
    if file is None:
        raise ConfigError(problems)
    plan = _Plan()
    for index, entry in enumerate(file.sources):
        source = _check_source(doc, ("sources", index), entry, session, problems)
        if source is not None:
            plan.sources.append(source)
    for index, entry in enumerate(file.spanner_configs):
        config = _validated(SpannerConfigEntry, entry, doc, ("spanner_configs", index), problems)
        if config is not None:
            plan.configs.append((("spanner_configs", index), config))
    for index, entry in enumerate(file.destinations):
        destination = _validated(DestinationEntry, entry, doc, ("destinations", index), problems)
        if destination is not None:
            plan.destinations.append((("destinations", index), destination))
    _duplicates(doc, [(s.path, s.meta.name) for s in plan.sources], "source", problems)
    _duplicates(doc, [(p, c.name) for p, c in plan.configs], "spanner config", problems)
    _duplicates(doc, [(p, d.ae_title) for p, d in plan.destinations], "destination", problems, key="ae_title")
    _check_references(doc, plan, session, problems)
    _check_self_loops(doc, plan, session, scp, problems)
    if problems:
        raise ConfigError(problems)
    return plan


def _release_moved_ae_titles(session: Session, plan: _Plan) -> None:
    """Clear the SCP AE titles the file moves, so titles can swap between configs without a unique violation."""
    wanted = {entry.name: entry.scp_ae_title for _, entry in plan.configs}
    moved = [c for c in list_spanner_configs(session)
             if c.name in wanted and c.scp_ae_title is not None and c.scp_ae_title != wanted[c.name]]
    for config in moved:
        config.scp_ae_title = None
    if moved:
        session.flush()


def _write(session: Session, plan: _Plan) -> ApplyReport:
    report = ApplyReport()
    for source in plan.sources:
        meta = source.meta
        _, action = upsert_source(session, name=meta.name, kind=meta.kind, connection=source.connection,
                                  description=meta.description, is_enabled=meta.is_enabled)
        report.changes.append(Change("source", meta.name, action))
    _release_moved_ae_titles(session, plan)
    for _, entry in plan.configs:
        config, action = upsert_spanner_config(session, name=entry.name, **entry.columns())
        if entry.sources is not None:
            specs = [MappingSpec(**m.model_dump()) for m in entry.sources]
            if replace_mappings(session, config=config, mappings=specs) and action == "unchanged":
                action = "updated"
        report.changes.append(Change("spanner_config", entry.name, action))
    for _, destination in plan.destinations:
        _, action = upsert_destination(session, **destination.model_dump())
        report.changes.append(Change("destination", destination.ae_title, action))
    return report


def apply_config_yaml(session: Session, text: str, *, scp: ScpSettings) -> ApplyReport:
    """Validate the YAML `text` completely, then upsert its sources, spanner configs and destinations into `session`.

    ConfigError (a ValueError) lists every problem as 'line N: field.path: message'; nothing is written then.
    Sources that point at this spanner's own SCP (`scp`, and the files' scp_ae_titles) are refused.
    """
    doc = load_located_yaml(text)
    plan = _plan(doc, session, scp)
    try:
        return _write(session, plan)
    except IntegrityError as exc:
        raise ConfigError([f"the database refused the change: {exc.orig}"]) from None
