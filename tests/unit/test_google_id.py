"""shared.security.google_id against a fake Google issuer (a real RSA key, its JWKS over HTTP on 127.0.0.1, tokens
signed with PyJWT): the OIDC Core 3.1.3.7 checks one by one, JWKS caching and rotation, a dead JWKS endpoint, and
the user lookup (existing active users only, e-mail compared ignoring case)."""

from __future__ import annotations

import time

import jwt
import pytest
from argon2 import PasswordHasher

from shared.config import ApiSettings
from shared.db.models import Role
from shared.security.google_id import (
    GoogleIdVerifier,
    GoogleKeysUnavailable,
    GoogleTokenError,
    build_google_verifier,
    google_login_user,
)
from shared.security.users import create_user, set_user_active
from tests.fakes.google_issuer import CLIENT_ID, FakeGoogleIssuer, jwk_of, rsa_key
from tests.peers import free_port

FAST = PasswordHasher(time_cost=1, memory_cost=8, parallelism=1)


@pytest.fixture(scope="module")
def issuer():
    with FakeGoogleIssuer() as issuer:
        yield issuer


@pytest.fixture()
def verifier(issuer):
    return GoogleIdVerifier(CLIENT_ID, certs_url=issuer.certs_url, timeout=2)


def refused(verifier, token, reason: str) -> None:
    with pytest.raises(GoogleTokenError, match=reason) as caught:
        verifier.verify(token)
    assert token not in str(caught.value)


def test_a_valid_token_gives_the_verified_identity(issuer, verifier):
    identity = verifier.verify(issuer.token("alice@hospital.org"))
    assert (identity.email, identity.subject) == ("alice@hospital.org", "1098765")
    assert verifier.verify(issuer.token(iss="accounts.google.com")).email == "alice@hospital.org"
    assert verifier.verify(issuer.token(email_verified="true")).email == "alice@hospital.org"
    assert verifier.verify(issuer.token(aud=[CLIENT_ID])).email == "alice@hospital.org"


@pytest.mark.parametrize(("claims", "reason"), [
    ({"aud": "someone-else.apps.googleusercontent.com"}, "audience"),
    ({"aud": [CLIENT_ID, "other-client"]}, "audiences besides"),
    ({"iss": "https://evil.example.com"}, "issuer"),
    ({"iss": "accounts.google.com.evil"}, "issuer"),
    ({"issued": time.time() - 7200, "lifetime": 3600}, "expired"),
    ({"issued": time.time() + 600}, "future"),
    ({"email_verified": False}, "not verified"),
    ({"email_verified": None}, "not verified"),
    ({"email_verified": "false"}, "not verified"),
    ({"email": None}, "no e-mail"),
    ({"sub": None}, "required claim"),
    ({"exp": None}, "required claim"),
])
def test_wrong_claims_are_refused(issuer, verifier, claims, reason):
    refused(verifier, issuer.token(**claims), reason)


def test_a_small_clock_skew_is_tolerated(issuer, verifier):
    assert verifier.verify(issuer.token(issued=time.time() + 10)).email == "alice@hospital.org"
    assert verifier.verify(issuer.token(issued=time.time() - 3610, lifetime=3600)).email == "alice@hospital.org"


def test_only_rs256_signed_by_a_published_key_is_accepted(issuer, verifier):
    refused(verifier, issuer.token(key="k" * 40, algorithm="HS256"), "algorithm must be RS256")
    unsigned = jwt.encode({"iss": "accounts.google.com", "aud": CLIENT_ID, "sub": "1", "email": "a@b.org",
                           "email_verified": True, "iat": int(time.time()), "exp": int(time.time()) + 60},
                          None, algorithm="none", headers={"kid": "test-key-1"})
    refused(verifier, unsigned, "algorithm must be RS256")
    refused(verifier, issuer.token(key=rsa_key()), "signature does not verify")  # right kid, another key
    refused(verifier, issuer.token(kid="not-published"), "key Google does not publish")
    refused(verifier, issuer.token(kid=""), "no key id")


@pytest.mark.parametrize("token", ["", "not-a-jwt", "a.b.c", "x" * 9000, "....", None, 42])
def test_malformed_tokens_are_refused(verifier, token):
    with pytest.raises(GoogleTokenError):
        verifier.verify(token)


def test_the_hosted_domain_restricts_accounts(issuer):
    verifier = GoogleIdVerifier(CLIENT_ID, certs_url=issuer.certs_url, hosted_domain="Hospital.org")
    assert verifier.verify(issuer.token(hd="hospital.org")).email == "alice@hospital.org"
    refused(verifier, issuer.token(hd="gmail.com"), "hosted domain")
    refused(verifier, issuer.token(), "hosted domain")  # a consumer account has no hd claim


def test_the_jwks_is_cached_and_a_rotated_key_is_fetched(issuer):
    verifier = GoogleIdVerifier(CLIENT_ID, certs_url=issuer.certs_url, jwks_cooldown=0)
    before = issuer.fetches
    for _ in range(3):
        verifier.verify(issuer.token())
    assert issuer.fetches == before + 1
    new_key = rsa_key()
    issuer.keys.append(jwk_of(new_key, "rotated-key"))
    try:
        assert verifier.verify(issuer.token(key=new_key, kid="rotated-key")).email == "alice@hospital.org"
        assert issuer.fetches == before + 2
    finally:
        issuer.keys.pop()


def test_a_dead_jwks_endpoint_is_unavailable_not_a_refusal(issuer):
    dead = GoogleIdVerifier(CLIENT_ID, certs_url=f"http://127.0.0.1:{free_port()}/certs", timeout=2)
    with pytest.raises(GoogleKeysUnavailable, match="could not be fetched"):
        dead.verify(issuer.token())


def test_the_settings_switch_google_login_on(issuer):
    assert build_google_verifier(ApiSettings()) is None
    assert build_google_verifier(ApiSettings(AXIOM_GOOGLE_CLIENT_ID="  ")) is None
    built = build_google_verifier(ApiSettings(AXIOM_GOOGLE_CLIENT_ID=CLIENT_ID, AXIOM_GOOGLE_CERTS_URL=issuer.certs_url,
                                              AXIOM_GOOGLE_HOSTED_DOMAIN="hospital.org"))
    assert (built.client_id, built.hosted_domain) == (CLIENT_ID, "hospital.org")
    assert built.verify(issuer.token(hd="hospital.org")).email == "alice@hospital.org"
    with pytest.raises(ValueError, match="AXIOM_GOOGLE_CERTS_URL"):
        ApiSettings(AXIOM_GOOGLE_CERTS_URL="file:///etc/passwd")


# -- the user an identity logs in ------------------------------------------------------------------------------------


def test_only_an_existing_active_user_logs_in_ignoring_case(session):
    alice = create_user(session, username="alice@hospital.org", password="p" * 12, role=Role.ADMIN, hasher=FAST)
    assert alice.last_login_at is None
    found = google_login_user(session, email="Alice@Hospital.org")
    assert found is not None and found.id == alice.id and found.last_login_at is not None
    assert google_login_user(session, email="bob@hospital.org") is None  # no auto-provisioning
    assert google_login_user(session, email="a+tag@hospital.org") is None  # not a valid username
    set_user_active(session, username="alice@hospital.org", active=False)
    assert google_login_user(session, email="alice@hospital.org") is None


def test_an_exact_match_wins_and_case_twins_are_ambiguous(session):
    create_user(session, username="Carol@x.org", password="p" * 12, hasher=FAST)
    twin = create_user(session, username="carol@x.org", password="p" * 12, hasher=FAST)
    assert google_login_user(session, email="carol@x.org").id == twin.id
    assert google_login_user(session, email="CAROL@x.org") is None
