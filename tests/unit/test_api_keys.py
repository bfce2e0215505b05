"""API keys on SQLite (migrated with Alembic): format, argon2id hashing, verify, throttled touch, revoke, roles, CLI.

Library tests use a cheap PasswordHasher (argon2id, t=1, m=8 KiB, p=1) so they stay fast; the CLI tests run the
production default hasher.
"""

from __future__ import annotations

import re
from dataclasses import FrozenInstanceError
from datetime import timedelta

import pytest
import typer
from argon2 import PasswordHasher
from sqlalchemy import select
from typer.testing import CliRunner

from services.cli.apikey_cmd import register
from shared.config import get_settings
from shared.db.base import utc_now
from shared.db.models import ApiKey, Role
from shared.db.session import make_engine, make_sessionmaker, session_scope
from shared.security import (
    ApiKeyPrincipal,
    create_api_key,
    generate_api_key,
    hash_api_key,
    list_api_keys,
    revoke_api_key,
    verify_api_key,
)
from shared.security.api_keys import TOUCH_INTERVAL, default_hasher

FAST = PasswordHasher(time_cost=1, memory_cost=8, parallelism=1)


def create(session, name="ohif-viewer", role=Role.USER, **kwargs):
    return create_api_key(session, name=name, role=role, hasher=FAST, **kwargs)


def verify(session, key, **kwargs):
    return verify_api_key(session, key, hasher=FAST, **kwargs)


def test_generated_keys_have_the_format_and_entropy():
    keys = {generate_api_key() for _ in range(200)}
    assert len(keys) == 200
    for key in keys:
        match = re.fullmatch(r"axk_([0-9a-f]{10})_([A-Za-z0-9_-]{43})", key)
        assert match, key  # 43 url-safe characters = token_urlsafe(32): 256 bits


def test_hash_is_salted_argon2id_and_verifies():
    key = generate_api_key()
    first, second = hash_api_key(key, hasher=FAST), hash_api_key(key, hasher=FAST)
    assert first.startswith("$argon2id$") and first != second and key not in first
    assert FAST.verify(first, key)
    assert default_hasher().type.name == "ID"


def test_create_then_verify_gives_the_principal_and_role(session):
    row, key = create(session, role="admin", created_by="test")
    assert key.startswith(f"axk_{row.prefix}_")
    principal = verify(session, key)
    assert principal == ApiKeyPrincipal(key_id=row.id, name="ohif-viewer", role=Role.ADMIN)
    with pytest.raises(FrozenInstanceError):
        principal.role = Role.USER  # frozen


def test_the_row_never_holds_the_plaintext(session):
    row, key = create(session)
    session.flush()
    stored = session.execute(select(ApiKey.__table__)).mappings().one()
    for column, value in stored.items():
        assert key not in str(value), column
    _, secret = key[4:].split("_", 1)
    assert all(secret not in str(value) for value in stored.values())
    assert stored["prefix"] == row.prefix and stored["key_hash"].startswith("$argon2id$")
    assert key not in repr(row)


def test_wrong_secret_unknown_prefix_and_malformed_keys_are_none(session):
    _, key = create(session)
    prefix, secret = key[4:].split("_", 1)
    flipped = secret[:-1] + ("A" if secret[-1] != "A" else "B")
    bad = [
        f"axk_{prefix}_{flipped}",  # wrong secret
        f"axk_{'0' * 10 if prefix != '0' * 10 else '1' * 10}_{secret}",  # unknown prefix
        "", "axk_", "axk__", key.upper(), key + " ", " " + key, f"axk_{prefix}", f"xyz_{prefix}_{secret}",
        f"axk_{prefix}_{secret}\n", f"axk_{prefix}_short", f"axk_{prefix}_{secret}!",
        key + "A" * 300,  # oversized
        "A" * 10_000, "axk_" + "a" * 10 + "_" + "b" * 250,
        None, 123, b"axk_", [key],
    ]
    for candidate in bad:
        assert verify(session, candidate) is None, candidate
    assert verify(session, key) is not None


def test_revoked_key_no_longer_verifies_and_stays_listed(session):
    _, key = create(session)
    create(session, name="other")
    assert revoke_api_key(session, name="ohif-viewer") is True
    assert verify(session, key) is None
    assert revoke_api_key(session, name="ohif-viewer") is False  # already revoked
    assert revoke_api_key(session, name="nobody") is False
    listed = {info.name: info for info in list_api_keys(session)}
    assert [name for name in listed] == ["ohif-viewer", "other"]
    assert not listed["ohif-viewer"].is_active and listed["ohif-viewer"].revoked_at is not None
    assert listed["other"].is_active
    assert not any(hasattr(info, "key_hash") for info in listed.values())


def test_revoke_by_prefix_and_argument_checks(session):
    row, key = create(session)
    assert revoke_api_key(session, prefix=row.prefix) is True
    assert verify(session, key) is None
    with pytest.raises(ValueError):
        revoke_api_key(session)
    with pytest.raises(ValueError):
        revoke_api_key(session, name="a", prefix="b")


def test_create_rejects_duplicates_bad_names_and_roles(session):
    create(session)
    with pytest.raises(ValueError, match="already exists"):
        create(session)
    for name in ("", " x", "a" * 65, "has space", "-lead"):
        with pytest.raises(ValueError, match="invalid API key name"):
            create(session, name=name)
    with pytest.raises(ValueError, match="invalid role 'root'"):
        create(session, name="x", role="root")


def test_last_used_at_is_set_and_throttled(session):
    row, key = create(session)
    assert row.last_used_at is None
    t0 = utc_now()
    verify(session, key, now=t0)
    assert session.get(ApiKey, row.id).last_used_at == t0
    verify(session, key, now=t0 + TOUCH_INTERVAL - timedelta(seconds=1))
    assert session.get(ApiKey, row.id).last_used_at == t0  # within the interval: no write
    later = t0 + TOUCH_INTERVAL + timedelta(seconds=1)
    verify(session, key, now=later)
    assert session.get(ApiKey, row.id).last_used_at == later
    session.expire_all()  # what the database holds, not the identity map
    assert session.get(ApiKey, row.id).last_used_at == later
    verify(session, key, now=later + timedelta(hours=1), touch=False)
    session.expire_all()
    assert session.get(ApiKey, row.id).last_used_at == later


def test_key_is_rehashed_when_parameters_change(session):
    row, key = create(session)
    stronger = PasswordHasher(time_cost=2, memory_cost=16, parallelism=1)
    assert verify_api_key(session, key, hasher=stronger) is not None
    session.expire_all()
    assert not stronger.check_needs_rehash(session.get(ApiKey, row.id).key_hash)


def test_role_allows():
    assert Role.ADMIN.allows(Role.ADMIN) and Role.ADMIN.allows(Role.USER) and Role.ADMIN.allows("user")
    assert Role.USER.allows(Role.USER) and not Role.USER.allows(Role.ADMIN)
    assert ApiKeyPrincipal(key_id=1, name="x", role=Role.USER).allows("user")
    with pytest.raises(ValueError):
        Role.USER.allows("root")


@pytest.fixture()
def cli(tmp_path, monkeypatch):
    monkeypatch.setenv("DATABASE_URL", f"sqlite:///{tmp_path / 'data' / 'axiom.db'}")
    get_settings.cache_clear()
    app = typer.Typer()
    register(app)
    runner = CliRunner()
    yield lambda *args: runner.invoke(app, [str(a) for a in args], terminal_width=200)
    get_settings.cache_clear()


def test_cli_create_prints_the_key_once_and_list_never_does(cli, tmp_path):
    created = cli("apikey", "create", "--name", "ohif-viewer", "--role", "user")
    assert created.exit_code == 0, created.output
    keys = re.findall(r"axk_[0-9a-f]{10}_[A-Za-z0-9_-]{43}", created.output)
    assert len(keys) == 1 and created.output.count(keys[0]) == 1
    assert "migrated empty ->" in created.output and "cannot be shown again" in created.output
    key = keys[0]
    listed = cli("apikey", "list")
    assert listed.exit_code == 0, listed.output
    assert "ohif-viewer" in listed.output and key[4:14] in listed.output and "user" in listed.output
    assert key not in listed.output and key[15:] not in listed.output and "$argon2" not in listed.output
    factory = make_sessionmaker(make_engine(get_settings().db.url))
    with session_scope(factory) as session:
        assert verify_api_key(session, key).role is Role.USER


def test_cli_revoke_and_errors(cli):
    assert cli("apikey", "list").exit_code == 2  # not migrated yet: asks for `axiom db upgrade`
    assert cli("apikey", "create", "--name", "ops", "--role", "admin").exit_code == 0
    duplicate = cli("apikey", "create", "--name", "ops", "--role", "admin")
    assert duplicate.exit_code == 2 and "already exists" in duplicate.output
    assert cli("apikey", "create", "--name", "x", "--role", "root").exit_code != 0
    revoked = cli("apikey", "revoke", "ops")
    assert revoked.exit_code == 0 and "revoked API key ops" in revoked.output
    assert "already revoked" in cli("apikey", "revoke", "ops").output
    missing = cli("apikey", "revoke", "nobody")
    assert missing.exit_code == 2 and "no API key named 'nobody'" in missing.output
