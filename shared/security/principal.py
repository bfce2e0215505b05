"""Who an authenticated request acts for: a name, a role and the kind of credential (API key or user)."""

from __future__ import annotations

from dataclasses import dataclass
from enum import Enum

from shared.db.models.api_key import Role


class PrincipalKind(str, Enum):
    """The credential a principal authenticated with."""

    API_KEY = "api_key"
    USER = "user"


@dataclass(frozen=True)
class Principal:
    """An authenticated caller: the API key's name or the username, its role, and the credential kind."""

    name: str
    role: Role
    kind: PrincipalKind

    def allows(self, required: Role | str) -> bool:
        """True when this principal's role permits an action that requires `required` (admin allows all)."""
        return self.role.allows(required)
