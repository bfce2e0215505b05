"""Deduplicate and merge matches from many sources into one answer.

**Ownership — `Merger.add` takes the dataset.** Callers hand over each match's Dataset: the merger may modify it
(RetrieveAETitle, merged attributes, converted raw elements), return it inside a `Match`, or drop it. Pass a copy if
you keep using the dataset. This is what adapters and the engine do anyway — an adapter builds a fresh Dataset per
match per query and the engine never looks at it again — and it spares one copy per match (the copies were nearly
all of the merge time and memory). Output datasets may share DataElement objects with other datasets the merger
was given; never hand the same Dataset object over twice.

Identity: a match's dedup key is the unique key of the query level (PS3.4 C.6.1.1 / C.6.2.1, `DEDUP_KEYS`), values
stripped of padding. A match without its unique key cannot be identified: it is never dropped and never merged with
a *different* match; it is only deduplicated against an identical dataset (same ranking form, below), which keeps
dedup idempotent. Its `Match.key` is `()`.

Strategies (`DedupStrategy`):

* FIRST_WINS — the first arrival of a key wins and becomes the output as is; `add()` returns its Match at once so
  results can stream; later arrivals only add a holder. Output order: arrival order. The streamed Match names only
  the first source (all that is known then); the final `matches()` lists every holder — for a key with more than
  one holder it is a new Dataset sharing the streamed one's elements, with its own RetrieveAETitle.
* MOST_COMPLETE — the dataset with the most non-empty attributes (RetrieveAETitle, SpecificCharacterSet and
  QueryRetrieveLevel not counted); ties → lower `priority`, then source name, then the smaller ranking form. Only
  the current best candidate per key is kept; the winner becomes the output as is.
* MERGE_ALL — union of attributes. A conflict takes the first non-empty value in rank order (priority, name,
  ranking form). *Set-valued* attributes are unioned: CS or UI attributes whose dictionary VM is exactly "1-n"
  (ModalitiesInStudy, SOPClassesInStudy, ...): values de-duplicated and sorted (a new element when that changes
  anything). Attributes with a positional multiplicity ("2-n" ImageType, fixed VMs) follow the conflict rule, since
  sorting would change their meaning. SpecificCharacterSet is never unioned (output charset is normalised after
  merging). Contributions are kept per key and folded at the end, in rank order, into the top-ranked dataset.

Ranking form: `canonical_form` without the attributes the merger writes itself (RetrieveAETitle), computed only to
break ties. With `completeness` ignoring them too, a dataset gives the same result whether or not it has already
been through a merge.

MOST_COMPLETE and MERGE_ALL depend only on the *set* of (source, dataset) arrivals, never on their order; output is
sorted by key (unkeyed matches last, by ranking form). Every output dataset carries RetrieveAETitle (0008,0054) =
the holders' `ae_title_for_retrieve` by (priority, name); `Match.sources` likewise. The first dataset of each key
gets it as it arrives (while it is fresh in the CPU caches); only keys that gain a holder or a winner later are
stamped again at the end.

Performance notes (bench/merge.py): no per-match copy, only the first arrival of a key and genuine rivals cost
anything, and tag sets are handled as plain ints — pydicom's `BaseTag.__eq__` is Python code, so dict and set
operations on BaseTags that hit run Python per element.
"""

from __future__ import annotations

import copy
from collections import defaultdict
from typing import Callable, Iterable, Iterator

from pydicom import Dataset, config
from pydicom.datadict import get_entry, tag_for_keyword
from pydicom.dataelem import DataElement, RawDataElement
from pydicom.multival import MultiValue
from pydicom.sequence import Sequence as DicomSequence
from pydicom.tag import BaseTag

from shared.dicom.levels import DEDUP_KEYS, QueryLevel
from shared.spanning.model import DedupStrategy, Match, SourceSpec

RETRIEVE_AE_TITLE = BaseTag(0x00080054)
SPECIFIC_CHARACTER_SET = BaseTag(0x00080005)
QUERY_RETRIEVE_LEVEL = BaseTag(0x00080052)
NOT_COUNTED = frozenset({RETRIEVE_AE_TITLE, SPECIFIC_CHARACTER_SET, QUERY_RETRIEVE_LEVEL})
MERGER_WRITTEN = frozenset({RETRIEVE_AE_TITLE})  # left out of ranking forms (module doc)
_UNKEYED = "\0unkeyed"
_DEDUP_TAGS = {level: tuple(BaseTag(tag_for_keyword(name)) for name in names) for level, names in DEDUP_KEYS.items()}
_set_valued_cache: dict[int, bool] = {}
_not_set_valued: set[int] = set()


def dedup_key(ds: Dataset, level: QueryLevel) -> tuple[str, ...] | None:
    """The dedup key of `ds` at `level` (PS3.4 C.6.1.1 / C.6.2.1), or None when the unique key is missing/empty.

    PATIENT uses (PatientID, IssuerOfPatientID): the issuer qualifies the ID and may be empty (""), but an empty
    PatientID means no key. A patient with no issuer and one with an issuer are kept apart (different domains).
    """
    tags = _DEDUP_TAGS[level]
    values = (_key_text(ds, tags[0]),) if len(tags) == 1 else tuple(_key_text(ds, tag) for tag in tags)
    return values if values[0] else None


def _key_text(ds: Dataset, tag: BaseTag) -> str:
    try:
        value = ds[tag].value
    except KeyError:
        return ""
    if isinstance(value, str):  # UID values are a str subclass
        return value.strip("\0 ")
    if value is None:
        return ""
    if isinstance(value, (list, MultiValue)):
        return "\\".join(str(v).strip("\0 ") for v in value)
    return str(value).strip("\0 ")


def canonical_form(ds: Dataset) -> str:
    """A deterministic text form of a dataset (tags in order, values as text)."""
    return repr(_canonical(ds))


def ranking_form(ds: Dataset) -> str:
    """`canonical_form` without the attributes the merger writes (RetrieveAETitle): the last tie-breaker and the
    identity of unkeyed matches, so a dataset that has been through a merge ranks as it did before."""
    return repr(tuple(item for item in _canonical(ds) if item[0] not in MERGER_WRITTEN))


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
    count = 0
    for element in _elements(ds):  # one plain loop: this runs for every MOST_COMPLETE arrival
        value = element.value
        if (value != "" if type(value) is str else _is_filled(value)) and element.tag not in NOT_COUNTED:
            count += 1
    return count


def is_set_valued(tag: int) -> bool:
    """CS/UI attributes of VM "1-n" whose values form a set, unioned by MERGE_ALL (see the module doc)."""
    tag = int(tag)  # a plain int key: pydicom's BaseTag compares in Python code
    cached = _set_valued_cache.get(tag)
    if cached is None:
        try:
            vr, vm = get_entry(tag)[:2]
            cached = vr in ("CS", "UI") and vm == "1-n" and tag != SPECIFIC_CHARACTER_SET
        except KeyError:  # private or unknown tags: no dictionary VM, treat as positional
            cached = False
        _set_valued_cache[tag] = cached
        if not cached:
            _not_set_valued.add(tag)
    return cached


def _set_valued_tags(tags: Iterable[int]) -> list[int]:
    """The set-valued ones of `tags` (one C-level set difference skips every tag already known not to be)."""
    return [tag for tag in (tags if isinstance(tags, set) else set(tags)) - _not_set_valued if is_set_valued(tag)]


def copy_dataset(ds: Dataset) -> Dataset:
    """An independent deep copy (what a caller passes to `Merger.add` if it keeps using its dataset)."""
    return copy.deepcopy(ds)


def _sharing_copy(ds: Dataset) -> Dataset:
    """A new Dataset holding the same DataElement objects: replacing an element in one leaves the other alone."""
    return Dataset(dict(ds.items()))


class _Entry:
    """What the merger knows about one key. `source`/`best` start as the first arrival: FIRST_WINS's output,
    MOST_COMPLETE's best candidate so far, MERGE_ALL's first contribution (`rest` holds the later ones)."""

    __slots__ = ("key", "holders", "source", "best", "stamped", "rank", "form", "rest", "streamed")

    def __init__(self, key: tuple[str, ...], source: str, ds: Dataset) -> None:
        self.key = key
        self.holders = [source]  # distinct, in arrival order
        self.source = source
        self.best = ds
        self.stamped: tuple[str, ...] | None = None  # the holders whose RetrieveAETitle `best` carries already
        self.rank: tuple | None = None  # MOST_COMPLETE: best's (-completeness, priority, source), once a rival came
        self.form: str | None = None  # MOST_COMPLETE: best's ranking_form, computed on the first exact tie only
        self.rest: list[tuple[str, Dataset]] | None = None  # MERGE_ALL: contributions after the first
        self.streamed: Match | None = None  # FIRST_WINS: the Match returned by add()


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
        self._contributed = dict.fromkeys(self._specs, 0)
        self._titles: dict[tuple[str, ...], str | list[str]] = {}
        self._add_rival = getattr(self, self._RIVALS[strategy])  # what a later arrival of a known key does
        self.raw_count = 0

    def add(self, source: str, ds: Dataset) -> Match | None:
        """Record one match from `source`, TAKING OWNERSHIP of `ds`: the merger may modify it and return it in a
        Match (pass a copy, e.g. `copy_dataset(ds)`, if you keep using it; see the module doc).

        FIRST_WINS: returns the final Match when the key is new (its dataset is `ds` itself), else None. Other
        strategies always return None (their result is only known at the end). ValueError: unknown source.
        """
        if source not in self._specs:
            raise ValueError(f"unknown source {source!r}")
        self.raw_count += 1
        key = dedup_key(ds, self.level)
        internal = key if key is not None else (_UNKEYED, ranking_form(ds))
        entry = self._entries.get(internal)
        if entry is None:  # most arrivals' work is done now, while `ds` is fresh in the CPU caches
            entry = self._entries[internal] = _Entry(key or (), source, ds)
            self._contributed[source] += 1
            if self.strategy is DedupStrategy.FIRST_WINS:
                entry.streamed = self._build(entry.key, ds, (source,))
                return entry.streamed
            entry.stamped = self._stamp(ds, (source,))  # right unless another source holds the key too
            return None
        if source not in entry.holders:
            entry.holders.append(source)
            self._contributed[source] += 1
        self._add_rival(entry, source, ds)
        return None

    def _rival_first(self, entry: _Entry, source: str, ds: Dataset) -> None:
        """FIRST_WINS: a later arrival only adds its holder (done by `add`)."""

    def _rival_most_complete(self, entry: _Entry, source: str, ds: Dataset) -> None:
        if entry.rank is None:  # ranked only now: most keys of a span never get a rival
            entry.rank = self._rank(entry.source, entry.best)
        rank = self._rank(source, ds)
        if rank > entry.rank:
            return
        if rank == entry.rank:
            form = ranking_form(ds)
            if entry.form is None:
                entry.form = ranking_form(entry.best)
            if form >= entry.form:
                return
        else:
            form = None
        entry.source, entry.best, entry.rank, entry.form, entry.stamped = source, ds, rank, form, None

    def _rank(self, source: str, ds: Dataset) -> tuple[int, int, str]:
        return -completeness(ds), self._specs[source].priority, source

    def _rival_merge_all(self, entry: _Entry, source: str, ds: Dataset) -> None:
        if entry.rest is None:
            entry.rest = []
        entry.rest.append((source, ds))

    _RIVALS = {
        DedupStrategy.FIRST_WINS: "_rival_first",
        DedupStrategy.MOST_COMPLETE: "_rival_most_complete",
        DedupStrategy.MERGE_ALL: "_rival_merge_all",
    }

    def contributed(self, source: str) -> int:
        """Distinct keys (unkeyed matches: distinct datasets) received from `source`."""
        return self._contributed.get(source, 0)

    def matches(self) -> list[Match]:
        """The merged matches, in the strategy's output order (module doc). Calling it again gives equal results."""
        # Built in arrival order (the datasets' allocation order: kinder to the CPU caches), then sorted.
        finals = [(internal, self._final(entry)) for internal, entry in self._entries.items()]
        if self.strategy is not DedupStrategy.FIRST_WINS:
            finals.sort(key=lambda item: (item[0][0] == _UNKEYED, item[0]))
        return [match for _, match in finals]

    def _final(self, entry: _Entry) -> Match:
        holders = self._ordered(entry.holders)
        if entry.streamed is not None:
            if entry.streamed.sources == holders:
                return entry.streamed  # FIRST_WINS, nobody else holds it: the streamed Match is the final one
            dataset = _sharing_copy(entry.streamed.dataset)  # leave the streamed Match as it was sent
        elif entry.rest is not None:  # MERGE_ALL with more than one contribution
            dataset = merge_datasets(self._ranked([(entry.source, entry.best), *entry.rest]))
        elif self.strategy is DedupStrategy.MERGE_ALL:
            dataset = merge_datasets([entry.best])
        else:
            dataset = entry.best
        return self._build(entry.key, dataset, holders, stamped=dataset is entry.best and entry.stamped == holders)

    def _build(self, key: tuple[str, ...], dataset: Dataset, holders: tuple[str, ...], stamped: bool = False) -> Match:
        if not stamped:
            self._stamp(dataset, holders)
        if self._finalize is not None:
            dataset = self._finalize(dataset)
        return Match(dataset=dataset, key=key, sources=holders)

    def _stamp(self, dataset: Dataset, holders: tuple[str, ...]) -> tuple[str, ...]:
        """Set RetrieveAETitle to the holders' titles (in `holders` order, duplicates dropped); returns `holders`."""
        titles = self._titles.get(holders)
        if titles is None:
            unique = list(dict.fromkeys(self._specs[name].ae_title_for_retrieve for name in holders))
            titles = self._titles[holders] = unique[0] if len(unique) == 1 else unique
        # A new element (and MultiValue) per output, never shared. Titles are valid AEs (<= 16 chars) already;
        # a single one is a str, which needs no conversion either.
        dataset[RETRIEVE_AE_TITLE] = DataElement(RETRIEVE_AE_TITLE, "AE", titles, validation_mode=config.IGNORE,
                                                 already_converted=type(titles) is str)
        return holders

    def _ordered(self, names: Iterable[str]) -> tuple[str, ...]:
        """Source names by (priority, name)."""
        names = tuple(names)
        if len(names) == 1:
            return names
        return tuple(sorted(names, key=lambda name: (self._specs[name].priority, name)))

    def _ranked(self, contributions: list[tuple[str, Dataset]]) -> list[Dataset]:
        """Datasets by (priority, source name, ranking form); datasets equal in ranking form collapse."""
        by_source: dict[str, list[Dataset]] = defaultdict(list)
        for source, ds in contributions:
            by_source[source].append(ds)
        ranked: list[Dataset] = []
        for source in self._ordered(by_source):
            group = by_source[source]
            if len(group) > 1:
                by_form = {ranking_form(ds): ds for ds in group}
                group = [by_form[form] for form in sorted(by_form)]
            ranked.extend(group)
        return ranked


def merge_datasets(ranked: list[Dataset]) -> Dataset:
    """MERGE_ALL of datasets already in rank order: first non-empty value wins, set-valued attributes unioned.

    Takes ownership like `Merger.add`: the result is `ranked[0]`, completed in place with (shared) elements of the
    others; a set-valued attribute gets a new element when unioning changes its values.
    """
    out = ranked[0]
    if len(ranked) == 1:  # most keys: only the set-valued attributes to normalise
        for tag in _set_valued_tags(set(map(int, out.keys()))):  # plain ints: BaseTag compares in Python code
            element = out[tag]
            _set_values(out, element, _values_of(element.value))
        return out
    # Per dataset, its elements by plain-int tag: pydicom's BaseTag compares in Python code, so every dict or set
    # operation below on BaseTags would run Python code per hit.
    by_tag = [{int(tag): element for tag, element in ds.items()} for ds in ranked]
    filled = {tag for tag, element in by_tag[0].items() if _is_filled(_converted(out, element).value)}
    for ds, elements in zip(ranked[1:], by_tag[1:]):
        for tag in elements.keys() - filled:  # usually few: what `out` lacks or has empty
            element = _converted(ds, elements[tag])
            if _is_filled(element.value):
                filled.add(tag)
            elif tag in by_tag[0]:
                continue
            by_tag[0][tag] = out[tag] = element
    for tag in _set_valued_tags(by_tag[0].keys()):
        values = [text for elements in by_tag if tag in elements for text in _values_of(elements[tag].value)]
        _set_values(out, by_tag[0][tag], values)
    return out


def _converted(ds: Dataset, element: DataElement | RawDataElement) -> DataElement:
    return ds[element.tag] if type(element) is RawDataElement else element


def _set_values(out: Dataset, element: DataElement, values: list[str]) -> None:
    """Set-valued `element` of `out` gets `values` de-duplicated and sorted: a new element only when that changes
    anything; left alone when there is no value at all. The values were all accepted in elements of this VR
    already, so they are not validated again."""
    values = sorted(set(values))
    if values and _as_list(element.value) != values:
        out[element.tag] = DataElement(element.tag, element.VR, values[0] if len(values) == 1 else values,
                                       validation_mode=config.IGNORE)


def _as_list(value: object) -> list:
    return list(value) if isinstance(value, (list, MultiValue)) else [value]


def _values_of(value: object) -> list[str]:
    items = value if isinstance(value, (list, MultiValue)) else [value]
    return [text for text in (str(v).strip("\0 ") for v in items if v is not None) if text]
