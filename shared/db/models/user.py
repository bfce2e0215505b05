"""`users`: people who log in to the API (username + argon2id password hash), with the same roles as API keys.

Only an argon2id hash of the password is stored (`password_hash`, a PHC string); hashing, verification and the
password rules live in shared.security.passwords and shared.security.users. `role` reuses `Role` (admin/user) from
shared.db.models.api_key: one role model for every credential. A disabled user (`is_active` false) cannot log in,
and the tokens already issued to it stop authenticating (shared.security.authenticator checks the row).

Usernames are case-sensitive, 1-64 characters: letters, digits and `.`, `_`, `-`, `@` (an e-mail address fits),
checked on assignment by `check_username`.
"""

from __future__ import annotations

import re
from datetime import datetime

from sqlalchemy import Boolean, Integer, String, func
from sqlalchemy.orm import Mapped, mapped_column, validates

from shared.db.base import Base, UtcDateTime, utc_now
from shared.db.models.api_key import Role
from shared.db.models.spanner import value_enum

USERNAME_PATTERN = re.compile(r"[A-Za-z0-9._@-]{1,64}")


def check_username(username: object) -> str:
    """`username` when it is valid (1-64 letters, digits, `.`, `_`, `-`, `@`); ValueError otherwise."""
    if not isinstance(username, str) or not USERNAME_PATTERN.fullmatch(username):
        raise ValueError(f"invalid username {str(username)[:80]!r}: 1-64 characters, letters, digits and . _ - @")
    return username


class User(Base):
    """One user: a unique username, an argon2id password hash, a role, an active flag and login bookkeeping."""

    __tablename__ = "users"

    id: Mapped[int] = mapped_column(Integer, primary_key=True)
    username: Mapped[str] = mapped_column(String(64), unique=True)
    password_hash: Mapped[str] = mapped_column(String(255))
    role: Mapped[Role] = mapped_column(value_enum(Role, "role"))
    is_active: Mapped[bool] = mapped_column(Boolean, default=True, server_default="1")
    created_at: Mapped[datetime] = mapped_column(UtcDateTime, default=utc_now, server_default=func.now())
    last_login_at: Mapped[datetime | None] = mapped_column(UtcDateTime)

    @validates("username")
    def _validate_username(self, _key: str, value: str) -> str:
        return check_username(value)

    def __repr__(self) -> str:  # never the hash
        return f"User(id={self.id!r}, username={self.username!r}, role={self.role!r}, is_active={self.is_active!r})"
