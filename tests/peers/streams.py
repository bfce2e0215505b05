"""Helpers for driving a QueryPort or RetrievePort by hand in adapter tests."""

from __future__ import annotations

from pydicom import Dataset


def drain(stream) -> tuple[list, object]:
    """Everything a generator yields and the value it returns: the matches of a QueryPort.find() and its
    FindSummary, or the RetrieveProgress of a RetrievePort move()/get() and its RetrieveOutcome."""
    matches = []
    while True:
        try:
            matches.append(next(stream))
        except StopIteration as stop:
            return matches, stop.value


def ident(**keys: object) -> Dataset:
    """An identifier with these keyword=value keys ("" for a return key)."""
    ds = Dataset()
    for keyword, value in keys.items():
        setattr(ds, keyword, value)
    return ds
