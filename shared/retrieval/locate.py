"""Where the entities of a retrieval are: the spanning C-FIND a C-MOVE/C-GET SCP makes first (PS3.4 C.4.2.2: the
SCP "shall identify a set of entities at the level of the retrieval"), the entities it found, their holders, and
how entities are batched into one retrieve request per holder. Pure: stdlib, pydicom and shared.*.
"""

from __future__ import annotations

import json
import threading
from collections import OrderedDict
from dataclasses import dataclass
from typing import Callable, Iterable

from pydicom import Dataset
from pydicom.multival import MultiValue

from shared.dicom.dicom_json import dataset_to_json
from shared.dicom.levels import UNIQUE_KEYS, InformationModel, QueryLevel, parent_unique_keys
from shared.retrieval.model import RETRIEVAL_QUERY_TYPES, Origin, RetrieveRequest
from shared.spanning.model import SpanRequest, SpanResult, SpanStatus

# The return key that counts an entity's instances, PS3.4 C.6.1.1.2-C.6.1.1.4 / C.6.2.1.2-C.6.2.1.3.
COUNT_KEYS: dict[QueryLevel, str] = {
    QueryLevel.PATIENT: "NumberOfPatientRelatedInstances",
    QueryLevel.STUDY: "NumberOfStudyRelatedInstances",
    QueryLevel.SERIES: "NumberOfSeriesRelatedInstances",
}
# What a locate may be logged as (spanner_query_logs.query_type): the retrieval it serves, or a bare C-FIND.
LOCATE_QUERY_TYPES = ("C-FIND", *RETRIEVAL_QUERY_TYPES)


@dataclass(frozen=True)
class Entity:
    """One entity to retrieve at its level: its unique key value, the unique keys of the levels above it (what a
    hierarchical retrieve identifier carries, PS3.4 C.4.2.2.1), its holders (source names, best first) and the
    number of instances it is expected to hold (None when not known; 1 at IMAGE level)."""

    level: QueryLevel
    uid: str
    parents: tuple[tuple[str, str], ...]
    holders: tuple[str, ...]
    expected: int | None
    sop_class_uid: str | None = None

    @property
    def key(self) -> tuple[str, ...]:
        return (self.level.value, *(value for _, value in self.parents), self.uid)

    @property
    def study_uid(self) -> str | None:
        return self.uid if self.level is QueryLevel.STUDY else dict(self.parents).get("StudyInstanceUID")


@dataclass(frozen=True)
class Batch:
    """Entities that one holder is asked for in one retrieve request (same level and parents)."""

    holder: str
    entities: tuple[Entity, ...]

    @property
    def level(self) -> QueryLevel:
        return self.entities[0].level

    @property
    def expected(self) -> int | None:
        return expected_total(self.entities)


def locate_request(request: RetrieveRequest, operation: str | None = None) -> SpanRequest:
    """The spanning C-FIND that locates `request`'s entities (PS3.4 C.4.2.2): its unique keys as matching keys (a
    list of UIDs at its level is List of UID matching, C.2.2.2.2), the parents' unique keys it lacks as return keys,
    and the return keys that size the retrieval: NumberOf*RelatedInstances, or SOPClassUID at IMAGE level.
    A fresh query_id: each locate is a span of its own (query logs key on it). Its query type is the operation it
    serves: the request's origin (e.g. WADO for a WADO-RS retrieve served by C-GET), else `operation` (C-MOVE,
    C-GET), else C-FIND; ValueError for any other (the query log knows no other, LOCATE_QUERY_TYPES)."""
    query_type = request.origin.query_type if request.origin is not None else operation or "C-FIND"
    if query_type not in LOCATE_QUERY_TYPES:
        raise ValueError(f"a locate's query type must be one of {', '.join(LOCATE_QUERY_TYPES)}, got {query_type!r}")
    identifier = Dataset()
    for keyword in parent_unique_keys(request.level, request.model) + (UNIQUE_KEYS[request.level],):
        setattr(identifier, keyword, key_text(request.identifier.get(keyword)))
    if request.level in COUNT_KEYS:
        setattr(identifier, COUNT_KEYS[request.level], None)
    else:
        identifier.SOPClassUID = ""
    return SpanRequest(level=request.level, identifier=identifier, model=request.model, query_type=query_type)


def instances_request(entity: Entity, sop_instance_uids: Iterable[str], model: InformationModel,
                      origin: Origin | None = None) -> RetrieveRequest:
    """An IMAGE-level request for some instances of `entity` (a STUDY or SERIES): the entity's keys, SOPInstanceUID
    as a list. At STUDY level SeriesInstanceUID stays universal — not a baseline hierarchical query, which archives
    may refuse; the caller then falls back to retrieving the whole entity. `origin`: the retrieval's, for its
    locate's query log row."""
    identifier = Dataset()
    for keyword, value in entity.parents:
        setattr(identifier, keyword, value)
    setattr(identifier, UNIQUE_KEYS[entity.level], entity.uid)
    identifier.SeriesInstanceUID = entity.uid if entity.level is QueryLevel.SERIES else ""
    identifier.SOPInstanceUID = "\\".join(sop_instance_uids)
    return RetrieveRequest(level=QueryLevel.IMAGE, identifier=identifier, model=model, origin=origin)


def located_entities(request: RetrieveRequest, result: SpanResult) -> list[Entity]:
    """The entities of a locate's matches (PS3.4 C.4.2.2), in match order; a match without its unique key cannot be
    retrieved and is left out, and the same entity found twice is one entity with both matches' holders."""
    by_key: dict[tuple[str, ...], Entity] = {}
    for match in result.matches:
        entity = _entity(request, match.dataset, match.sources)
        if entity is None:
            continue
        known = by_key.get(entity.key)
        if known is not None:
            holders = tuple(dict.fromkeys(known.holders + entity.holders))
            entity = Entity(known.level, known.uid, known.parents, holders, known.expected, known.sop_class_uid)
        by_key[entity.key] = entity
    return list(by_key.values())


def _entity(request: RetrieveRequest, dataset: Dataset, holders: tuple[str, ...]) -> Entity | None:
    level = request.level
    uid = key_text(dataset.get(UNIQUE_KEYS[level]))
    if not uid:
        return None
    parents = []
    for keyword in parent_unique_keys(level, request.model):
        value = key_text(dataset.get(keyword)) or key_text(request.identifier.get(keyword))
        if value:
            parents.append((keyword, value))
    expected = 1 if level is QueryLevel.IMAGE else _count(dataset.get(COUNT_KEYS[level]))
    sop_class = key_text(dataset.get("SOPClassUID")) or None
    return Entity(level, uid, tuple(parents), tuple(holders), expected, sop_class)


def key_text(value: object) -> str:
    """An attribute value as DICOM text: several values backslash-separated (PS3.5 6.4), padding stripped."""
    if value is None:
        return ""
    if isinstance(value, (MultiValue, list, tuple)):
        return "\\".join(str(item).strip() for item in value)
    return str(value).strip()


def _count(value: object) -> int | None:
    try:
        count = int(str(value).strip())
    except (TypeError, ValueError):
        return None
    return count if count >= 0 else None


def expected_total(entities: Iterable[Entity]) -> int | None:
    """The instances the entities hold, or None when any count is unknown."""
    total = 0
    for entity in entities:
        if entity.expected is None:
            return None
        total += entity.expected
    return total


def plan_batches(entities: Iterable[Entity],
                 holder_for: Callable[[Entity], str | None]) -> tuple[list[Batch], list[Entity]]:
    """Group entities by the holder `holder_for` picks (their best holder not tried yet) and their parents: one
    retrieve request each. PATIENT entities go one by one (a C-MOVE/C-GET PatientID is single-valued; only UIDs are
    listed, PS3.4 C.4.2.2.1). Returns the batches and the entities that have no holder left."""
    groups: dict[tuple, list[Entity]] = {}
    orphans: list[Entity] = []
    for entity in entities:
        holder = holder_for(entity)
        if holder is None:
            orphans.append(entity)
            continue
        single = entity.uid if entity.level is QueryLevel.PATIENT else ""
        groups.setdefault((holder, entity.level, entity.parents, single), []).append(entity)
    return [Batch(key[0], tuple(group)) for key, group in groups.items()], orphans


def batch_request(batch: Batch, request: RetrieveRequest) -> RetrieveRequest:
    """The retrieve request for one batch: the parents' unique keys and the batch's UIDs as a list (PS3.4
    C.4.2.2.1); the original request's query_id and origin for correlation."""
    identifier = Dataset()
    for keyword, value in batch.entities[0].parents:
        setattr(identifier, keyword, value)
    setattr(identifier, UNIQUE_KEYS[batch.level], "\\".join(entity.uid for entity in batch.entities))
    return RetrieveRequest(level=batch.level, identifier=identifier, model=request.model, query_id=request.query_id,
                           origin=request.origin)


class LocateCache:
    """Recent locates, reused for the same question within `ttl_seconds` (PS3.4 C.4.2.2 leaves how an SCP finds the
    entities to it: recent finds may be reused). Only complete spans are kept: a partial one may miss holders."""

    def __init__(self, ttl_seconds: float, clock: Callable[[], float], max_entries: int = 256) -> None:
        self._ttl, self._clock, self._max = ttl_seconds, clock, max_entries
        self._entries: OrderedDict[str, tuple[float, SpanResult]] = OrderedDict()
        self._lock = threading.Lock()

    def get(self, request: SpanRequest) -> SpanResult | None:
        if self._ttl <= 0:
            return None
        key = _cache_key(request)
        with self._lock:
            entry = self._entries.get(key)
            if entry is None or entry[0] <= self._clock():
                self._entries.pop(key, None)
                return None
            return entry[1]

    def put(self, request: SpanRequest, result: SpanResult) -> None:
        if self._ttl <= 0 or result.status is not SpanStatus.COMPLETED:
            return
        with self._lock:
            self._entries[_cache_key(request)] = (self._clock() + self._ttl, result)
            while len(self._entries) > self._max:
                self._entries.popitem(last=False)


def _cache_key(request: SpanRequest) -> str:
    keys = json.dumps(dataset_to_json(request.identifier), sort_keys=True, ensure_ascii=False)
    return f"{request.level.value}|{request.model.value}|{keys}"
