"""Helpers for driving a QueryPort by hand in adapter tests."""

from __future__ import annotations

from pydicom import Dataset

from shared.spanning.model import FindSummary


def drain(stream) -> tuple[list[Dataset], FindSummary | None]:
    """All matches of a QueryPort.find() generator and the FindSummary it returned."""
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
