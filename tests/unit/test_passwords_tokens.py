"""Passwords (argon2id hashing, verification, the dummy hash for unknown users, re-hash) and access tokens (JWT
HS256: round trip, expiry, tampering, `alg: none`, other algorithms, another secret, missing or wrong claims)."""

from __future__ import annotations

import base64
import json
from datetime import timedelta

import jwt
import pytest
from argon2 import PasswordHasher

from shared.db.models import Role
from shared.security import passwords
from shared.security.passwords import check_password_rules, hash_password, needs_rehash, verify_password
from shared.security.principal import Principal, PrincipalKind
from shared.security.tokens import ALGORITHM, LEEWAY_SECONDS, issue_token, looks_like_jwt, verify_token

FAST = PasswordHasher(time_cost=1, memory_cost=8, parallelism=1)
SECRET = "k" * 40
ALICE = Principal(name="alice", role=Role.ADMIN, kind=PrincipalKind.USER)
NOW = 1_800_000_000.0


class CountingHasher(PasswordHasher):
    """A cheap hasher that counts verify calls (to show a failure still costs one argon2 verification)."""

    def __init__(self) -> None:
        super().__init__(time_cost=1, memory_cost=8, parallelism=1)
        self.verifies = 0

    def verify(self, hash, password):  # noqa: A002 - argon2's parameter name
        self.verifies += 1
        return super().verify(hash, password)


def test_a_password_hash_is_salted_argon2id_and_verifies():
    first, second = hash_password("correct horse", hasher=FAST), hash_password("correct horse", hasher=FAST)
    assert first != second and first.startswith("$argon2id$")
    assert verify_password(first, "correct horse", hasher=FAST)
    assert not verify_password(first, "correct hors", hasher=FAST)
    assert not verify_password("not a hash", "correct horse", hasher=FAST)
    assert passwords.default_hasher().type.name == "ID"


def test_password_rules_never_echo_the_password():
    for bad in ("short", "", "x" * 1025, None, 12345678):
        with pytest.raises(ValueError) as caught:
            check_password_rules(bad)
        assert "short" not in str(caught.value)
    assert check_password_rules("12345678") == "12345678"


def test_an_unknown_user_costs_one_verification_against_a_dummy_hash():
    hasher = CountingHasher()
    assert not verify_password(None, "anything-at-all", hasher=hasher)
    assert not verify_password(None, "x" * 5000, hasher=hasher)  # oversized: still one verification, then refused
    assert not verify_password(None, object(), hasher=hasher)
    assert hasher.verifies == 3
    real = hash_password("the password", hasher=hasher)
    assert not verify_password(real, "x" * 5000, hasher=hasher)
    assert hasher.verifies == 4


def test_a_hash_with_old_parameters_needs_a_rehash():
    old = hash_password("the password", hasher=FAST)
    assert not needs_rehash(old, hasher=FAST)
    assert needs_rehash(old, hasher=PasswordHasher(time_cost=2, memory_cost=16, parallelism=1))
    assert needs_rehash("garbage", hasher=FAST)


def token(ttl=3600, now=NOW, principal=ALICE, secret=SECRET):
    return issue_token(principal, secret, ttl, now=now)


def test_a_token_round_trips_with_its_claims():
    issued = token(timedelta(minutes=5))
    assert looks_like_jwt(issued) and not looks_like_jwt("axk_0123456789_" + "x" * 43)
    assert verify_token(issued, SECRET, now=NOW + 10) == ALICE
    claims = jwt.decode(issued, SECRET, algorithms=[ALGORITHM], options={"verify_exp": False, "verify_iat": False})
    assert claims == {"sub": "alice", "role": "admin", "typ": "access", "iss": "axiom", "iat": int(NOW),
                      "exp": int(NOW) + 300}


def test_an_expired_token_or_one_from_the_future_is_refused():
    issued = token(60)
    assert verify_token(issued, SECRET, now=NOW + 59) == ALICE
    assert verify_token(issued, SECRET, now=NOW + 60) is None
    assert verify_token(issued, SECRET, now=NOW - LEEWAY_SECONDS - 1) is None
    assert verify_token(token(60), SECRET) is None  # NOW (2027) is in the future of the real clock
    assert verify_token(issue_token(ALICE, SECRET, 60), SECRET) == ALICE


def _b64(data: dict) -> str:
    return base64.urlsafe_b64encode(json.dumps(data).encode()).rstrip(b"=").decode()


def test_a_tampered_token_is_refused():
    header, payload, signature = token().split(".")
    claims = json.loads(base64.urlsafe_b64decode(payload + "=="))
    promoted = _b64({**claims, "sub": "mallory"})
    assert verify_token(f"{header}.{promoted}.{signature}", SECRET, now=NOW) is None
    flipped = signature[:-2] + ("A" if signature[-2] != "A" else "B") + signature[-1]
    assert verify_token(f"{header}.{payload}.{flipped}", SECRET, now=NOW) is None


@pytest.mark.filterwarnings("ignore::jwt.warnings.InsecureKeyLengthWarning")  # HS512 with our 40-byte key
def test_alg_none_and_other_algorithms_and_other_secrets_are_refused():
    claims = {"sub": "alice", "role": "admin", "typ": "access", "iss": "axiom", "iat": int(NOW), "exp": int(NOW) + 60}
    unsigned = f"{_b64({'alg': 'none', 'typ': 'JWT'})}.{_b64(claims)}."
    assert verify_token(unsigned, SECRET, now=NOW) is None
    assert verify_token(jwt.encode(claims, SECRET, algorithm="HS512"), SECRET, now=NOW) is None
    assert verify_token(jwt.encode(claims, "z" * 40, algorithm="HS256"), SECRET, now=NOW) is None
    assert verify_token(jwt.encode(claims, SECRET, algorithm="HS256"), SECRET, now=NOW) == ALICE
    assert verify_token(token(secret="another-secret-" + "q" * 30), SECRET, now=NOW) is None


@pytest.mark.parametrize("change", [
    {"typ": "refresh"}, {"role": "root"}, {"sub": "no spaces allowed"}, {"iss": "elsewhere"}, {"exp": "later"},
    {"sub": None},
])
def test_wrong_claims_are_refused(change):
    claims = {"sub": "alice", "role": "admin", "typ": "access", "iss": "axiom", "iat": int(NOW), "exp": int(NOW) + 60}
    claims = {k: v for k, v in {**claims, **change}.items() if v is not None}
    assert verify_token(jwt.encode(claims, SECRET, algorithm="HS256"), SECRET, now=NOW) is None


def test_garbage_is_refused_without_an_exception():
    for garbage in (None, 42, "", "a.b.c", "x" * 5000, token() + "x" * 5000):
        assert verify_token(garbage, SECRET, now=NOW) is None
    assert verify_token(token(), "", now=NOW) is None


def test_tokens_are_issued_to_users_only_and_need_a_secret_and_a_positive_ttl():
    with pytest.raises(ValueError):
        issue_token(Principal(name="ohif", role=Role.USER, kind=PrincipalKind.API_KEY), SECRET, 60)
    with pytest.raises(ValueError):
        issue_token(ALICE, "", 60)
    with pytest.raises(ValueError):
        issue_token(ALICE, SECRET, 0)
