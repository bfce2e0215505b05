"""Dedup keys and the three dedup strategies, including order-independence and idempotence properties.

`Merger.add` takes ownership of the datasets it is given (it may modify and return them), so every add here hands
over a fresh copy (`handed`): test data built once can be merged many times.
"""

from __future__ import annotations

from hypothesis import given, settings
from hypothesis import strategies as st
from pydicom import Dataset

from shared.dicom.levels import QueryLevel
from shared.spanning.merge import (
    Merger, canonical_form, completeness, copy_dataset, dedup_key, is_set_valued, merge_datasets,
)
from shared.spanning.model import DedupStrategy, SourceSpec
from tests.fakes.ports import study

SOURCES = [
    SourceSpec("alpha", "fake", priority=10, retrieve_ae_title="ALPHA_AE"),
    SourceSpec("beta", "fake", priority=5, retrieve_ae_title="BETA_AE"),
    SourceSpec("gamma", "fake", priority=10),
]


def handed(ds):
    """A fresh copy to hand over to `Merger.add` (which consumes it), so `ds` itself stays untouched."""
    return copy_dataset(ds)


def merged(strategy, arrivals, level=QueryLevel.STUDY):
    merger = Merger(level, strategy, SOURCES)
    for source, ds in arrivals:
        merger.add(source, handed(ds))
    return merger.matches()


def remerged(strategy, matches):
    """Feed merged outputs back in, each from every source that held it (as a cache or a second span tier would)."""
    return merged(strategy, [(source, m.dataset) for m in matches for source in m.sources])


def snapshot(matches):
    return [(m.key, m.sources, canonical_form(m.dataset)) for m in matches]


def test_dedup_key_per_level_and_missing_keys():
    ds = Dataset()
    ds.PatientID = " P1 "
    assert dedup_key(ds, QueryLevel.PATIENT) == ("P1", "")
    ds.IssuerOfPatientID = "HOSP"
    assert dedup_key(ds, QueryLevel.PATIENT) == ("P1", "HOSP")
    assert dedup_key(ds, QueryLevel.STUDY) is None
    ds.StudyInstanceUID = ""
    assert dedup_key(ds, QueryLevel.STUDY) is None
    ds.PatientID = ""
    assert dedup_key(ds, QueryLevel.PATIENT) is None


def test_first_wins_streams_and_keeps_arrival_order():
    merger = Merger(QueryLevel.STUDY, DedupStrategy.FIRST_WINS, SOURCES)
    first = merger.add("alpha", study("2", PatientName="From^Alpha"))
    assert first is not None and first.sources == ("alpha",) and first.dataset.RetrieveAETitle == "ALPHA_AE"
    assert merger.add("beta", study("2", PatientName="From^Beta", PatientID="X")) is None
    assert merger.add("beta", study("1")) is not None
    matches = merger.matches()
    assert [m.key for m in matches] == [("2",), ("1",)]
    assert matches[0].dataset.PatientName == "From^Alpha" and "PatientID" not in matches[0].dataset
    assert matches[0].sources == ("beta", "alpha")  # every holder in the final result, by priority
    assert list(matches[0].dataset.RetrieveAETitle) == ["BETA_AE", "ALPHA_AE"]
    assert first.dataset.RetrieveAETitle == "ALPHA_AE"  # the streamed Match is left as it was sent
    assert matches[1].sources == ("beta",) and matches[1].dataset.RetrieveAETitle == "BETA_AE"
    assert merger.raw_count == 3 and merger.contributed("beta") == 2


def test_most_complete_prefers_more_attributes_then_priority_then_name():
    rich = study("1", PatientName="Rich", PatientID="P", AccessionNumber="A")
    poor = study("1", PatientName="Poor")
    [match] = merged(DedupStrategy.MOST_COMPLETE, [("beta", poor), ("alpha", rich)])
    assert match.dataset.PatientName == "Rich" and match.sources == ("beta", "alpha")
    [match] = merged(DedupStrategy.MOST_COMPLETE, [("alpha", study("1", PatientName="A")),
                                                   ("beta", study("1", PatientName="B"))])
    assert match.dataset.PatientName == "B"  # same completeness: beta has priority 5 < 10
    [match] = merged(DedupStrategy.MOST_COMPLETE, [("gamma", study("1", PatientName="G")),
                                                   ("alpha", study("1", PatientName="A"))])
    assert match.dataset.PatientName == "A"  # same priority: name order
    assert list(match.dataset.RetrieveAETitle) == ["ALPHA_AE", "gamma"]


def test_empty_values_do_not_count_for_completeness():
    assert completeness(study("1", PatientName="", PatientID="P", RetrieveAETitle="X")) == 2


def test_merge_all_unions_set_valued_and_resolves_conflicts_by_priority():
    a = study("1", PatientName="Alpha", ModalitiesInStudy=["MR", "CT"], StudyDescription="")
    b = study("1", PatientName="Beta", ModalitiesInStudy="US", ImageType=["DERIVED", "PRIMARY"])
    c = study("1", StudyDescription="Chest", ModalitiesInStudy=["CT"], ImageType=["ORIGINAL", "SECONDARY"])
    [match] = merged(DedupStrategy.MERGE_ALL, [("alpha", a), ("gamma", c), ("beta", b)])
    ds = match.dataset
    assert ds.PatientName == "Beta"  # beta outranks alpha
    assert list(ds.ModalitiesInStudy) == ["CT", "MR", "US"]  # unioned, sorted
    assert ds.StudyDescription == "Chest"  # first non-empty value wins over an empty one
    assert list(ds.ImageType) == ["DERIVED", "PRIMARY"]  # positional (VM 2-n): not unioned
    assert match.sources == ("beta", "alpha", "gamma")


def test_set_valued_rule():
    assert is_set_valued(0x00080061) and is_set_valued(0x00080062)  # ModalitiesInStudy, SOPClassesInStudy
    assert not is_set_valued(0x00080008) and not is_set_valued(0x00080005)  # ImageType, SpecificCharacterSet
    assert not is_set_valued(0x00091010)  # private


def test_merge_datasets_keeps_empty_attribute_when_nobody_has_a_value():
    ds = merge_datasets([study("1", AccessionNumber=""), study("1", AccessionNumber="")])
    assert "AccessionNumber" in ds and ds.AccessionNumber == ""


def test_unkeyed_matches_are_kept_and_only_identical_ones_collapse():
    no_key = Dataset()
    no_key.PatientName = "NoKey"
    other = Dataset()
    other.PatientName = "Other"
    for strategy in DedupStrategy:
        matches = merged(strategy, [("alpha", no_key), ("beta", no_key), ("alpha", other), ("alpha", study("9"))])
        assert len(matches) == 3, strategy
        keyed = [m for m in matches if m.key]
        assert [m.key for m in keyed] == [("9",)]
        assert sorted(m.sources for m in matches if not m.key) == [("alpha",), ("beta", "alpha")]


def test_add_takes_ownership_and_outputs_the_handed_over_datasets():
    mine = study("1", PatientName="A", ModalitiesInStudy=["CT", "MR"])
    merger = Merger(QueryLevel.STUDY, DedupStrategy.FIRST_WINS, SOURCES)
    streamed = merger.add("alpha", mine)
    assert streamed.dataset is mine and mine.RetrieveAETitle == "ALPHA_AE"  # no copy: the input is the output
    assert merger.add("alpha", study("1", PatientName="Again")) is None
    assert merger.matches() == [streamed]

    winner = study("1", PatientName="W", PatientID="P")
    merger = Merger(QueryLevel.STUDY, DedupStrategy.MOST_COMPLETE, SOURCES)
    merger.add("beta", study("1", PatientName="Poor"))
    merger.add("alpha", winner)
    [match] = merger.matches()
    assert match.dataset is winner and match.sources == ("beta", "alpha")

    top = study("1", PatientName="Top", ModalitiesInStudy="CT")
    merger = Merger(QueryLevel.STUDY, DedupStrategy.MERGE_ALL, SOURCES)
    merger.add("gamma", study("1", PatientID="G", ModalitiesInStudy="MR"))
    merger.add("beta", top)
    [match] = merger.matches()
    assert match.dataset is top and top.PatientID == "G" and list(top.ModalitiesInStudy) == ["CT", "MR"]


def test_callers_that_hand_over_copies_keep_their_datasets():
    a = study("1", PatientName="A", ModalitiesInStudy=["CT", "MR"])
    before = canonical_form(a)
    for strategy in DedupStrategy:
        [match] = merged(strategy, [("alpha", a), ("beta", study("1", ModalitiesInStudy="US"))])
        match.dataset.PatientName = "Changed"
        if "ModalitiesInStudy" in match.dataset:
            match.dataset.ModalitiesInStudy.append("XA")
    assert canonical_form(a) == before and "RetrieveAETitle" not in a


def test_a_previous_retrieve_ae_title_changes_nothing():
    """RetrieveAETitle is the merger's own output: neither completeness nor tie-breaks may see it."""
    def arrivals(**stamp):
        return [("alpha", study("1", PatientName="B")), ("alpha", study("1", PatientName="A", **stamp)),
                ("gamma", study("1", PatientName="G"))]

    for strategy in DedupStrategy:
        assert snapshot(merged(strategy, arrivals(RetrieveAETitle="ZZZ"))) == snapshot(merged(strategy, arrivals()))
    [match] = merged(DedupStrategy.MOST_COMPLETE, arrivals(RetrieveAETitle="ZZZ"))
    assert match.dataset.PatientName == "A"  # alpha's tie broken by the smaller form, title left out
    [match] = merged(DedupStrategy.MOST_COMPLETE, [("alpha", study("1", PatientName="A", RetrieveAETitle="X")),
                                                   ("beta", study("1", PatientName="B"))])
    assert match.dataset.PatientName == "B"  # equally complete: beta's priority decides, not alpha's extra title


def test_output_order_sorted_for_non_streaming_strategies():
    arrivals = [("alpha", study("3")), ("beta", study("1")), ("gamma", study("2"))]
    for strategy in (DedupStrategy.MOST_COMPLETE, DedupStrategy.MERGE_ALL):
        assert [m.key for m in merged(strategy, arrivals)] == [("1",), ("2",), ("3",)]


# --- properties -------------------------------------------------------------------------------------------------

_values = st.sampled_from(["", "A", "B", "Zed"])
_datasets = st.builds(
    lambda uid, name, pid, mods, desc: study(uid, PatientName=name, PatientID=pid, ModalitiesInStudy=mods,
                                             StudyDescription=desc),
    st.sampled_from(["1", "2", "3"]), _values, _values,
    st.lists(st.sampled_from(["CT", "MR", "US"]), max_size=3), _values,
)
_arrivals = st.lists(st.tuples(st.sampled_from([s.name for s in SOURCES]), _datasets), min_size=1, max_size=12)


@settings(max_examples=60, deadline=None)
@given(arrivals=_arrivals, data=st.data())
def test_result_does_not_depend_on_arrival_order(arrivals, data):
    shuffled = data.draw(st.permutations(arrivals))
    for strategy in (DedupStrategy.MOST_COMPLETE, DedupStrategy.MERGE_ALL):
        assert snapshot(merged(strategy, arrivals)) == snapshot(merged(strategy, shuffled))


@settings(max_examples=60, deadline=None)
@given(arrivals=_arrivals)
def test_dedup_is_idempotent(arrivals):
    for strategy in DedupStrategy:
        assert snapshot(merged(strategy, arrivals + arrivals)) == snapshot(merged(strategy, arrivals))


@settings(max_examples=60, deadline=None)
@given(arrivals=_arrivals)
def test_remerging_outputs_gives_the_same_result(arrivals):
    for strategy in DedupStrategy:
        first = merged(strategy, arrivals)
        assert snapshot(remerged(strategy, first)) == snapshot(first), strategy


def test_copy_dataset_is_independent():
    original = study("1", PatientName="A", ModalitiesInStudy=["CT", "MR"])
    clone = copy_dataset(original)
    assert clone == original and clone is not original
    clone.ModalitiesInStudy.append("US")
    clone.PatientName = "B"
    assert list(original.ModalitiesInStudy) == ["CT", "MR"] and original.PatientName == "A"
