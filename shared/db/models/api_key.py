"""`api_keys`: machine credentials for the HTTP services (coordinator, API), and the roles they carry.

Only an argon2id hash of a key is stored (`key_hash`), never the key itself. `prefix` is the key's public
identifier part (`axk_<prefix>_<secret>`): unique, indexed for the lookup on every request, and shown in listings
so administrators can tell keys apart. The crypto and the key format live in shared.security.api_keys.

`Role` is defined here, next to the column that stores it (like CmoveStrategy and QueryType), so the model has no
import of shared.security (which imports the repo, which imports the models). shared.security re-exports it; a
future `users` table reuses the same enum and CHECK values.
"""

from __future__ import annotations

from datetime import datetime
from enum import Enum as PyEnum

from sqlalchemy import Integer, String, func
from sqlalchemy.orm import Mapped, mapped_column

from shared.db.base import Base, UtcDateTime, utc_now
from shared.db.models.spanner import value_enum


class Role(str, PyEnum):
    """What a credential may do: `admin` may do everything, `user` may query (read-only)."""

    ADMIN = "admin"
    USER = "user"

    def allows(self, required: Role | str) -> bool:
        """True when a principal with this role may perform an action that requires `required`.

        Roles are ordered: admin includes user. ValueError for an unknown role name.
        """
        return _RANK[self] >= _RANK[Role(required)]


_RANK = {Role.USER: 1, Role.ADMIN: 2}


class ApiKey(Base):
    """One API key: a unique name (a label like "ohif-viewer"), its prefix, argon2id hash, role and lifecycle."""

    __tablename__ = "api_keys"

    id: Mapped[int] = mapped_column(Integer, primary_key=True)
    name: Mapped[str] = mapped_column(String(64), unique=True)
    prefix: Mapped[str] = mapped_column(String(16), unique=True, index=True)
    key_hash: Mapped[str] = mapped_column(String(255))
    role: Mapped[Role] = mapped_column(value_enum(Role, "role"))
    created_at: Mapped[datetime] = mapped_column(UtcDateTime, default=utc_now, server_default=func.now())
    last_used_at: Mapped[datetime | None] = mapped_column(UtcDateTime)
    revoked_at: Mapped[datetime | None] = mapped_column(UtcDateTime)
    created_by: Mapped[str | None] = mapped_column(String(128))

    @property
    def is_active(self) -> bool:
        """False once the key has been revoked."""
        return self.revoked_at is None

    def __repr__(self) -> str:  # never the hash
        return f"ApiKey(id={self.id!r}, name={self.name!r}, prefix={self.prefix!r}, role={self.role!r})"
