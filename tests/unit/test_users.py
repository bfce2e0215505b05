"""Users on SQLite (migrated with Alembic): the model's username rule, creation, login (last_login_at, re-hash,
disabled users), password changes, listing, and the `axiom user` CLI.

Library tests use a cheap PasswordHasher; the CLI tests patch the default hasher (shared by keys and passwords)
to the same cheap one so they stay fast.
"""

from __future__ import annotations

import pytest
import typer
from argon2 import PasswordHasher
from sqlalchemy import select
from typer.testing import CliRunner

from services.cli.user_cmd import register
from shared.config import get_settings
from shared.db.models import Role, User
from shared.db.models.user import check_username
from shared.db.session import make_engine, make_sessionmaker, session_scope
from shared.security import api_keys
from shared.security.users import authenticate_user, create_user, list_users, set_user_active, set_user_password

FAST = PasswordHasher(time_cost=1, memory_cost=8, parallelism=1)
PASSWORD = "correct horse battery"


def new_user(session, username="alice", role=Role.USER, password=PASSWORD):
    return create_user(session, username=username, password=password, role=role, hasher=FAST)


def login(session, username="alice", password=PASSWORD, **kwargs):
    return authenticate_user(session, username=username, password=password, hasher=FAST, **kwargs)


@pytest.mark.parametrize("name", ["alice", "a", "j.doe@example.org", "ops_team-2", "A" * 64])
def test_valid_usernames(name):
    assert check_username(name) == name


@pytest.mark.parametrize("name", ["", "A" * 65, "with space", "semi;colon", "ünï", "colon:name", None, 7])
def test_invalid_usernames_are_refused_by_the_model_too(name):
    with pytest.raises(ValueError):
        check_username(name)
    with pytest.raises(ValueError):
        User(username=name, password_hash="x", role=Role.USER)


def test_a_user_is_stored_with_a_hash_only_and_duplicates_are_refused(session):
    row = new_user(session, role="admin")
    assert row.role is Role.ADMIN and row.is_active and row.last_login_at is None
    assert row.password_hash.startswith("$argon2id$") and PASSWORD not in row.password_hash
    assert PASSWORD not in repr(row) and "argon2" not in repr(row)
    with pytest.raises(ValueError, match="already exists"):
        new_user(session)
    with pytest.raises(ValueError, match="8-1024"):
        new_user(session, username="bob", password="short")
    with pytest.raises(ValueError, match="invalid role"):
        new_user(session, username="bob", role="root")


def test_login_sets_last_login_and_refuses_wrong_unknown_and_disabled(session):
    new_user(session)
    assert login(session, password="wrong password") is None
    assert login(session, username="nobody") is None
    assert login(session, username="not a name!") is None
    assert login(session, password=None) is None
    user = login(session)
    assert user is not None and user.username == "alice" and user.last_login_at is not None
    assert set_user_active(session, username="alice", active=False)
    assert not set_user_active(session, username="alice", active=False)
    assert login(session) is None
    assert set_user_active(session, username="alice", active=True)
    assert login(session) is not None
    with pytest.raises(LookupError):
        set_user_active(session, username="nobody", active=False)


def test_login_rehashes_a_password_hashed_with_old_parameters(session):
    new_user(session)
    old_hash = session.scalar(select(User.password_hash).where(User.username == "alice"))
    stronger = PasswordHasher(time_cost=2, memory_cost=16, parallelism=1)
    assert authenticate_user(session, username="alice", password=PASSWORD, hasher=stronger) is not None
    new_hash = session.scalar(select(User.password_hash).where(User.username == "alice"))
    assert new_hash != old_hash and not stronger.check_needs_rehash(new_hash)


def test_set_password_replaces_the_old_one(session):
    new_user(session)
    set_user_password(session, username="alice", password="a brand new one", hasher=FAST)
    assert login(session) is None
    assert login(session, password="a brand new one") is not None
    with pytest.raises(LookupError):
        set_user_password(session, username="nobody", password="whatever123", hasher=FAST)
    with pytest.raises(ValueError):
        set_user_password(session, username="alice", password="short", hasher=FAST)


def test_list_users_never_carries_the_hash(session):
    new_user(session, username="zed")
    new_user(session, username="amy", role=Role.ADMIN)
    listed = list_users(session)
    assert [u.username for u in listed] == ["amy", "zed"] and listed[0].role is Role.ADMIN
    assert not hasattr(listed[0], "password_hash")


@pytest.fixture()
def cli(tmp_path, monkeypatch):
    monkeypatch.setenv("DATABASE_URL", f"sqlite:///{tmp_path / 'data' / 'axiom.db'}")
    monkeypatch.setattr(api_keys, "default_hasher", lambda: FAST)
    get_settings.cache_clear()
    app = typer.Typer()
    register(app)
    runner = CliRunner()

    def invoke(*args, input=None, stdin=None):  # CliRunner's `input` is standard input (prompts or --password-stdin)
        return runner.invoke(app, [str(a) for a in args], input=stdin if stdin is not None else input,
                             terminal_width=200)

    yield invoke
    get_settings.cache_clear()


def check_login(username: str, password: str) -> User | None:
    with session_scope(make_sessionmaker(make_engine(get_settings().db.url))) as session:
        return authenticate_user(session, username=username, password=password, hasher=FAST)


def test_cli_creates_the_first_admin_from_stdin_and_lists_without_secrets(cli):
    assert cli("user", "list").exit_code == 2  # not migrated yet
    created = cli("user", "create", "root", "--admin", "--password-stdin", stdin="s3cret-password\n")
    assert created.exit_code == 0, created.output
    assert "created user root (role admin)" in created.output and "s3cret" not in created.output
    assert check_login("root", "s3cret-password").role is Role.ADMIN
    listed = cli("user", "list")
    assert listed.exit_code == 0 and "root" in listed.output and "admin" in listed.output
    assert "s3cret" not in listed.output and "$argon2" not in listed.output


def test_cli_prompts_twice_hidden_and_refuses_a_mismatch(cli):
    created = cli("user", "create", "bob", input="first-password\nfirst-password\n")
    assert created.exit_code == 0, created.output
    assert "first-password" not in created.output and created.output.count("Password") == 1
    assert "Repeat the password" in created.output
    assert check_login("bob", "first-password").role is Role.USER
    mismatch = cli("user", "set-password", "bob", input="second-pass\nsomething-else\nsecond-pass\nsecond-pass\n")
    assert mismatch.exit_code == 0 and "do not match" in mismatch.output.lower()
    assert "second-pass" not in mismatch.output
    assert check_login("bob", "second-pass") is not None and check_login("bob", "first-password") is None


def test_cli_disable_enable_and_errors(cli):
    assert cli("user", "create", "carol", "--password-stdin", stdin="carols-password\n").exit_code == 0
    too_short = cli("user", "create", "dave", "--password-stdin", stdin="short\n")
    assert too_short.exit_code == 2 and "8-1024" in too_short.output and "short\n" not in too_short.output
    duplicate = cli("user", "create", "carol", "--password-stdin", stdin="carols-password\n")
    assert duplicate.exit_code == 2 and "already exists" in duplicate.output
    bad_name = cli("user", "create", "no spaces", "--password-stdin", stdin="carols-password\n")
    assert bad_name.exit_code == 2 and "invalid username" in bad_name.output
    assert "disabled user carol" in cli("user", "disable", "carol").output
    assert "already disabled" in cli("user", "disable", "carol").output
    assert check_login("carol", "carols-password") is None
    assert "no" in cli("user", "list").output
    assert "enabled user carol" in cli("user", "enable", "carol").output
    assert check_login("carol", "carols-password") is not None
    missing = cli("user", "disable", "nobody")
    assert missing.exit_code == 2 and "no user named 'nobody'" in missing.output
    assert cli("user", "set-password", "nobody", "--password-stdin", stdin="whatever-pass\n").exit_code == 2
