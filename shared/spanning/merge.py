"""Deduplicate and merge matches from many sources into one answer.

Identity: a match's dedup key is the unique key of the query level (PS3.4 C.6.1.1 / C.6.2.1, `DEDUP_KEYS`), values
stripped of padding. A match without its unique key cannot be identified: it is never dropped and never merged with
a *different* match; it is only deduplicated against an exactly identical dataset (same canonical form), which keeps
dedup idempotent. Its `Match.key` is `()`.

Strategies (`DedupStrategy`):

* FIRST_WINS — the first arrival of a key wins; `add()` returns its Match at once so results can stream.
  Output order: arrival order. The streamed Match names only the first source (all that is known then); the final
  `matches()` lists every holder (same attribute values, RetrieveAETitle/sources completed).
* MOST_COMPLETE — the dataset with the most non-empty attributes (RetrieveAETitle, SpecificCharacterSet and
  QueryRetrieveLevel not counted); ties → lower `priority`, then source name, then the smaller canonical form.
* MERGE_ALL — union of attributes. A conflict takes the first non-empty value in rank order (priority, name,
  canonical form). *Set-valued* attributes are unioned: CS or UI attributes whose dictionary VM is exactly "1-n"
  (ModalitiesInStudy, SOPClassesInStudy, ...): values de-duplicated and sorted. Attributes with a positional
  multiplicity ("2-n" ImageType, fixed VMs) follow the conflict rule, since sorting would change their meaning.
  SpecificCharacterSet is never unioned (output charset is normalised after merging).

MOST_COMPLETE and MERGE_ALL depend only on the *set* of (source, dataset) arrivals, never on their order; output is
sorted by key (unkeyed matches last, by canonical form). Every output dataset is a fresh copy carrying
RetrieveAETitle (0008,0054) = the holders' `ae_title_for_retrieve` by (priority, name); `Match.sources` likewise.
Input datasets are never modified; the merger keeps references to them until `matches()` copies the winners.
"""

from __future__ import annotations

import copy
import gc
from contextlib import contextmanager
from collections import defaultdict
from typing import Callable, Iterable, Iterator

from pydicom import Dataset, config
from pydicom.datadict import get_entry, tag_for_keyword
from pydicom.dataelem import DataElement, RawDataElement
from pydicom.multival import MultiValue
from pydicom.sequence import Sequence as DicomSequence

from shared.dicom.levels import DEDUP_KEYS, QueryLevel
from shared.spanning.model import DedupStrategy, Match, SourceSpec

RETRIEVE_AE_TITLE = 0x00080054
SPECIFIC_CHARACTER_SET = 0x00080005
QUERY_RETRIEVE_LEVEL = 0x00080052
NOT_COUNTED = frozenset({RETRIEVE_AE_TITLE, SPECIFIC_CHARACTER_SET, QUERY_RETRIEVE_LEVEL})
_UNKEYED = "\0unkeyed"
_DEDUP_TAGS = {level: tuple(tag_for_keyword(name) for name in names) for level, names in DEDUP_KEYS.items()}
_set_valued_cache: dict[int, bool] = {}


def dedup_key(ds: Dataset, level: QueryLevel) -> tuple[str, ...] | None:
    """The dedup key of `ds` at `level` (PS3.4 C.6.1.1 / C.6.2.1), or None when the unique key is missing/empty.

    PATIENT uses (PatientID, IssuerOfPatientID): the issuer qualifies the ID and may be empty (""), but an empty
    PatientID means no key. A patient with no issuer and one with an issuer are kept apart (different domains).
    """
    values = tuple(_key_text(ds, tag) for tag in _DEDUP_TAGS[level])
    return values if values[0] else None


def _key_text(ds: Dataset, tag: int) -> str:
    if tag not in ds:
        return ""
    value = ds[tag].value
    if type(value) is str:
        return value.strip("\0 ")
    if value is None:
        return ""
    if isinstance(value, (list, MultiValue)):
        return "\\".join(str(v).strip("\0 ") for v in value)
    return str(value).strip("\0 ")


def canonical_form(ds: Dataset) -> str:
    """A deterministic text form of a dataset (tags in order, values as text): the last tie-breaker."""
    return repr(_canonical(ds))


def _canonical(ds: Dataset) -> tuple:
    return tuple((int(e.tag), str(e.VR), _canonical_value(e.value)) for e in ds)


def _canonical_value(value: object) -> object:
    if isinstance(value, DicomSequence):
        return tuple(_canonical(item) for item in value)
    if isinstance(value, (list, MultiValue)):
        return tuple(str(v) for v in value)
    if isinstance(value, (bytes, bytearray)):
        return bytes(value).hex()
    return "" if value is None else str(value)


def _elements(ds: Dataset) -> Iterator[DataElement]:
    """Top-level elements, raw ones converted by pydicom (as any attribute access would)."""
    for element in ds.values():
        yield ds[element.tag] if type(element) is RawDataElement else element


def _is_filled(value: object) -> bool:
    kind = type(value)
    if kind is str:
        return value != ""
    if value is None:
        return False
    if kind is MultiValue or kind is DicomSequence or kind is list or kind is bytes:
        return len(value) > 0  # type: ignore[arg-type]
    return str(value) != ""


def completeness(ds: Dataset) -> int:
    """Number of non-empty attributes, the MOST_COMPLETE measure (merge bookkeeping attributes excluded)."""
    return sum(1 for e in _elements(ds) if e.tag not in NOT_COUNTED and _is_filled(e.value))


def is_set_valued(tag: int) -> bool:
    """CS/UI attributes of VM "1-n" whose values form a set, unioned by MERGE_ALL (see the module doc)."""
    cached = _set_valued_cache.get(tag)
    if cached is None:
        try:
            vr, vm = get_entry(tag)[:2]
            cached = vr in ("CS", "UI") and vm == "1-n" and tag != SPECIFIC_CHARACTER_SET
        except KeyError:  # private or unknown tags: no dictionary VM, treat as positional
            cached = False
        _set_valued_cache[tag] = cached
    return cached


def copy_dataset(ds: Dataset) -> Dataset:
    """An independent copy: new Dataset and DataElements; mutable values (multi-values, sequences) copied.

    Much faster than deepcopy (immutable values such as str are shared, which is safe).
    """
    return _new_dataset({element.tag: _copy_element(element) for element in _elements(ds)})


_EMPTY = Dataset()


def _new_dataset(elements: dict) -> Dataset:
    """`Dataset(elements)` without its per-instance __init__ cost (a dozen __setattr__ calls): the merger makes
    tens of thousands. Clones an empty Dataset's state, giving the clone its own dicts; same result as the
    constructor (a unit test compares them)."""
    out = Dataset.__new__(Dataset)
    out.__dict__.update({k: (dict(v) if type(v) is dict else v) for k, v in _EMPTY.__dict__.items()})
    out.__dict__["_dict"] = elements
    return out


def _copy_element(element: DataElement) -> DataElement:
    if element.VR == "SQ":
        return copy.deepcopy(element)
    clone = DataElement.__new__(DataElement)
    clone.__dict__.update(element.__dict__)  # a shallow clone: pydicom keeps the value in the instance dict
    value = clone.__dict__.get("_value")
    if type(value) is MultiValue:  # the only mutable non-sequence value: give the clone its own list
        clone.__dict__["_value"] = _copy_multi_value(value)
    return clone


def _copy_multi_value(value: MultiValue) -> MultiValue:
    """A MultiValue with its own list; items were validated already, so they are not validated again."""
    clone = MultiValue.__new__(MultiValue)
    clone.__dict__.update(value.__dict__)
    clone.__dict__["_list"] = list(value.__dict__["_list"])
    return clone


@contextmanager
def _gc_paused() -> Iterator[None]:
    """Pause CPython's cyclic GC while building many small objects (each gen-2 pass would rescan every live input
    dataset; the bench shows it dominates). Only re-enables it if it was enabled; process-wide but brief."""
    was_enabled = gc.isenabled()
    gc.disable()
    try:
        yield
    finally:
        if was_enabled:
            gc.enable()


class _Entry:
    """What the merger knows about one key."""

    __slots__ = ("key", "holders", "best", "rank", "canon", "contributions", "streamed")

    def __init__(self, key: tuple[str, ...]) -> None:
        self.key = key
        self.holders: set[str] = set()
        self.best: tuple[str, Dataset] | None = None
        self.rank: tuple | None = None
        self.canon: str | None = None
        self.contributions: list[tuple[str, Dataset]] = []
        self.streamed: Match | None = None


class Merger:
    """Accumulates (source, dataset) arrivals and yields deduplicated, merged Matches (see the module doc).

    Not thread-safe: the engine feeds it from its single consuming thread.
    """

    def __init__(
        self,
        level: QueryLevel,
        strategy: DedupStrategy,
        sources: Iterable[SourceSpec],
        *,
        finalize: Callable[[Dataset], Dataset] | None = None,
    ) -> None:
        self.level = level
        self.strategy = strategy
        self._specs = {spec.name: spec for spec in sources}
        self._finalize = finalize
        self._entries: dict[tuple[str, ...], _Entry] = {}
        self._per_source: dict[str, set[tuple[str, ...]]] = defaultdict(set)
        self.raw_count = 0

    def add(self, source: str, ds: Dataset) -> Match | None:
        """Record one match from `source`. FIRST_WINS: returns the final Match when the key is new, else None.

        Other strategies always return None (their result is only known at the end). ValueError: unknown source.
        """
        if source not in self._specs:
            raise ValueError(f"unknown source {source!r}")
        self.raw_count += 1
        key = dedup_key(ds, self.level)
        internal = key if key is not None else (_UNKEYED, canonical_form(ds))
        entry = self._entries.get(internal)
        if entry is None:
            entry = self._entries[internal] = _Entry(key or ())
        entry.holders.add(source)
        self._per_source[source].add(internal)
        return self._ADDERS[self.strategy](self, entry, source, ds)

    def _add_first(self, entry: _Entry, source: str, ds: Dataset) -> Match | None:
        if entry.best is not None:
            return None
        entry.best = (source, ds)
        entry.streamed = self._build(entry.key, copy_dataset(ds), (source,))
        return entry.streamed

    def _add_most_complete(self, entry: _Entry, source: str, ds: Dataset) -> None:
        rank = (-completeness(ds), self._specs[source].priority, source)
        if entry.rank is not None and rank > entry.rank:
            return
        if entry.rank is not None and rank == entry.rank:
            canon = canonical_form(ds)
            if entry.canon is None:
                entry.canon = canonical_form(entry.best[1])
            if canon >= entry.canon:
                return
            entry.canon = canon
        else:
            entry.canon = None
        entry.best, entry.rank = (source, ds), rank

    def _add_merge_all(self, entry: _Entry, source: str, ds: Dataset) -> None:
        entry.contributions.append((source, ds))

    _ADDERS = {
        DedupStrategy.FIRST_WINS: _add_first,
        DedupStrategy.MOST_COMPLETE: _add_most_complete,
        DedupStrategy.MERGE_ALL: _add_merge_all,
    }

    def contributed(self, source: str) -> int:
        """Distinct keys (unkeyed matches: distinct datasets) received from `source`."""
        return len(self._per_source.get(source, ()))

    def matches(self) -> list[Match]:
        """The merged matches, in the strategy's output order (module doc). Calling it again gives equal results."""
        entries = list(self._entries.items())
        if self.strategy is not DedupStrategy.FIRST_WINS:
            entries.sort(key=lambda item: (item[0][0] == _UNKEYED, item[0]))
        with _gc_paused():
            return [self._final(entry) for _, entry in entries]

    def _final(self, entry: _Entry) -> Match:
        holders = self._ordered(entry.holders)
        if entry.streamed is not None and entry.streamed.sources == holders:
            return entry.streamed  # FIRST_WINS, nobody else holds it: the streamed Match is the final one
        if self.strategy is DedupStrategy.MERGE_ALL:
            dataset = merge_datasets(self._ranked(entry.contributions))
        else:
            dataset = copy_dataset(entry.best[1])
        return self._build(entry.key, dataset, holders)

    def _build(self, key: tuple[str, ...], dataset: Dataset, holders: tuple[str, ...]) -> Match:
        titles = list(dict.fromkeys(self._specs[name].ae_title_for_retrieve for name in holders))
        dataset[RETRIEVE_AE_TITLE] = DataElement(RETRIEVE_AE_TITLE, "AE", titles[0] if len(titles) == 1 else titles,
                                                 validation_mode=config.IGNORE)  # titles are <= 16 chars already
        if self._finalize is not None:
            dataset = self._finalize(dataset)
        return Match(dataset=dataset, key=key, sources=holders)

    def _ordered(self, names: Iterable[str]) -> tuple[str, ...]:
        return tuple(sorted(names, key=lambda name: (self._specs[name].priority, name)))

    def _ranked(self, contributions: list[tuple[str, Dataset]]) -> list[Dataset]:
        """Datasets by (priority, source name, canonical form); exact duplicates collapse."""
        by_source: dict[str, list[Dataset]] = defaultdict(list)
        for source, ds in contributions:
            by_source[source].append(ds)
        ranked: list[Dataset] = []
        for source in self._ordered(by_source):
            group = by_source[source]
            if len(group) > 1:
                by_form = {canonical_form(ds): ds for ds in group}
                group = [by_form[form] for form in sorted(by_form)]
            ranked.extend(group)
        return ranked


def merge_datasets(ranked: list[Dataset]) -> Dataset:
    """MERGE_ALL of datasets already in rank order: first non-empty value wins, set-valued attributes unioned."""
    chosen: dict[int, DataElement] = {}
    unions: dict[int, set[str]] = {}
    for ds in ranked:
        for element in _elements(ds):
            tag = element.tag
            if is_set_valued(tag):
                unions.setdefault(tag, set()).update(_values_of(element.value))
            current = chosen.get(tag)
            if current is None or (not _is_filled(current.value) and _is_filled(element.value)):
                chosen[tag] = element
    out = Dataset()
    for tag in sorted(chosen):
        element = chosen[tag]
        if tag in unions and unions[tag]:
            values = sorted(unions[tag])
            out.add(DataElement(tag, element.VR, values[0] if len(values) == 1 else values))
        else:
            out.add(_copy_element(element))
    return out


def _values_of(value: object) -> list[str]:
    items = value if isinstance(value, (list, MultiValue)) else [value]
    return [text for text in (str(v).strip("\0 ") for v in items if v is not None) if text]
