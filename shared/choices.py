"""Parsing a user-supplied value into one of an Enum's members, with an error that lists the allowed values."""

from __future__ import annotations

from enum import Enum
from typing import TypeVar

E = TypeVar("E", bound=Enum)


def parse_choice(choices: type[E], value: object, label: str) -> E:
    """`choices(value)`, or ValueError("invalid <label> 'x': expected one of a, b, c")."""
    try:
        return choices(value)
    except ValueError:
        allowed = ", ".join(str(member.value) for member in choices)
        raise ValueError(f"invalid {label} {value!r}: expected one of {allowed}") from None
