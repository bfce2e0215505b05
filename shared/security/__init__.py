"""Authentication and authorisation shared by the HTTP services: roles and API keys (one table, one verifier)."""

from shared.db.models.api_key import Role
from shared.security.api_keys import (
    ApiKeyInfo,
    ApiKeyPrincipal,
    create_api_key,
    generate_api_key,
    hash_api_key,
    list_api_keys,
    revoke_api_key,
    verify_api_key,
)

__all__ = [
    "ApiKeyInfo",
    "ApiKeyPrincipal",
    "Role",
    "create_api_key",
    "generate_api_key",
    "hash_api_key",
    "list_api_keys",
    "revoke_api_key",
    "verify_api_key",
]
