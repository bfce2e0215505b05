"""shared.security.networks: a spanner config's client network allowlist."""

from __future__ import annotations

import pytest

from shared.security.networks import address_allowed, parse_networks


@pytest.mark.parametrize("address, allowed, expected", [
    ("10.1.2.3", None, True), ("10.1.2.3", [], True),
    ("10.1.2.3", ["10.0.0.0/8"], True), ("11.1.2.3", ["10.0.0.0/8"], False),
    ("192.168.1.7", ["10.0.0.0/8", "192.168.1.7"], True),
    ("::ffff:10.0.0.5", ["10.0.0.0/8"], True),  # IPv4-mapped IPv6 counts as IPv4
    ("2001:db8::1", ["2001:db8::/32"], True), ("2001:db9::1", ["2001:db8::/32", "10.0.0.0/8"], False),
    ("testclient", ["10.0.0.0/8"], False), (None, ["10.0.0.0/8"], False),
])
def test_an_address_is_allowed_only_inside_the_listed_networks(address, allowed, expected):
    assert address_allowed(address, allowed) is expected


def test_networks_are_normalised_and_a_bad_one_is_named():
    assert [str(n) for n in parse_networks(["10.1.2.3/8", " 2001:db8::/32 "])] == ["10.0.0.0/8", "2001:db8::/32"]
    with pytest.raises(ValueError, match="'10.0.0.0/33' is not an IP network"):
        parse_networks(["10.0.0.0/8", "10.0.0.0/33"])
