"""The shared verifier (shared.security.authenticator): API keys and users' access tokens -> Principal, with a
short memory (VERIFIED_TTL) after which a revoked key, a disabled or deleted user, or a changed role takes effect."""

from __future__ import annotations

import pytest
from argon2 import PasswordHasher

from shared.db.migrations import upgrade_to_head
from shared.db.models import Role, User
from shared.db.session import make_engine, make_sessionmaker
from shared.security import api_keys
from shared.security.api_keys import create_api_key, revoke_api_key
from shared.security.authenticator import VERIFIED_TTL, Authenticator, presented_credential
from shared.security.principal import Principal, PrincipalKind
from shared.security.tokens import issue_token
from shared.security.users import create_user, set_user_active
from tests.fakes.clock import FakeClock

FAST = PasswordHasher(time_cost=1, memory_cost=8, parallelism=1)
SECRET = "a-secret-of-at-least-32-characters!!"


@pytest.fixture()
def factory(tmp_path, monkeypatch):
    monkeypatch.setattr(api_keys, "default_hasher", lambda: FAST)
    url = f"sqlite:///{tmp_path / 'axiom.db'}"
    upgrade_to_head(url)
    engine = make_engine(url)
    yield make_sessionmaker(engine)
    engine.dispose()


@pytest.fixture()
def clock():
    return FakeClock()


@pytest.fixture()
def authenticator(factory, clock):
    return Authenticator(factory, SECRET, clock=clock)


def key_for(factory, name, role=Role.USER) -> str:
    with factory.begin() as session:
        return create_api_key(session, name=name, role=role, hasher=FAST)[1]


def token_for(factory, username, role=Role.USER, secret=SECRET, ttl=300) -> str:
    with factory.begin() as session:
        create_user(session, username=username, password="password-123", role=role, hasher=FAST)
    return issue_token(Principal(name=username, role=role, kind=PrincipalKind.USER), secret, ttl)


def test_the_credential_comes_from_x_api_key_or_a_bearer_header():
    assert presented_credential({"x-api-key": " k1 "}) == "k1"
    assert presented_credential({"authorization": "Bearer a.b.c"}) == "a.b.c"
    assert presented_credential({"authorization": "bearer   k2"}) == "k2"
    assert presented_credential({"x-api-key": "k1", "authorization": "Bearer k2"}) == "k1"
    for headers in ({}, {"authorization": "Basic dXNlcjpwYXNz"}, {"authorization": "Bearer "}, {"x-api-key": " "}):
        assert presented_credential(headers) is None


def test_an_api_key_authenticates_until_revoked_plus_the_memory_ttl(factory, authenticator, clock):
    key = key_for(factory, "ohif", Role.ADMIN)
    assert authenticator.principal(key) == Principal(name="ohif", role=Role.ADMIN, kind=PrincipalKind.API_KEY)
    assert authenticator.authenticate({"authorization": f"Bearer {key}"}).kind is PrincipalKind.API_KEY
    with factory.begin() as session:
        assert revoke_api_key(session, name="ohif")
    assert authenticator.principal(key) is not None  # remembered
    clock.now += VERIFIED_TTL + 0.1
    assert authenticator.principal(key) is None
    assert authenticator.principal("axk_0123456789_" + "x" * 43) is None
    assert authenticator.principal("garbage") is None


def test_a_users_token_authenticates_with_the_users_current_role(factory, authenticator, clock):
    token = token_for(factory, "alice", Role.ADMIN)
    assert authenticator.principal(token) == Principal(name="alice", role=Role.ADMIN, kind=PrincipalKind.USER)
    with factory.begin() as session:
        session.query(User).filter_by(username="alice").update({"role": Role.USER})
    clock.now += VERIFIED_TTL + 0.1
    assert authenticator.principal(token).role is Role.USER  # demoted: the token's role claim no longer counts


def test_a_disabled_users_token_stops_working_within_the_memory_ttl(factory, authenticator, clock):
    token = token_for(factory, "bob")
    assert authenticator.principal(token).name == "bob"
    with factory.begin() as session:
        assert set_user_active(session, username="bob", active=False)
    assert authenticator.principal(token) is not None  # remembered
    clock.now += VERIFIED_TTL + 0.1
    assert authenticator.principal(token) is None
    with factory.begin() as session:
        assert set_user_active(session, username="bob", active=True)
    clock.now += VERIFIED_TTL + 0.1
    assert authenticator.principal(token) is not None


def test_a_token_for_an_unknown_user_or_signed_elsewhere_or_expired_is_refused(factory, clock):
    wall = FakeClock(now=2_000_000_000.0)
    authenticator = Authenticator(factory, SECRET.encode(), clock=clock, wall_clock=wall)
    ghost = issue_token(Principal(name="ghost", role=Role.ADMIN, kind=PrincipalKind.USER), SECRET, 60,
                        now=wall.now)
    assert authenticator.principal(ghost) is None
    foreign = token_for(factory, "carol", secret="another-secret-of-32-characters-or-more")
    assert authenticator.principal(foreign) is None
    with factory.begin() as session:
        create_user(session, username="dave", password="password-123", hasher=FAST)
    short = issue_token(Principal(name="dave", role=Role.USER, kind=PrincipalKind.USER), SECRET, 60, now=wall.now)
    assert authenticator.principal(short) is not None
    wall.now += 61  # the user's row is still remembered, but the expiry is checked on every request
    assert authenticator.principal(short) is None
