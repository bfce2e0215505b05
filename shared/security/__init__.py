"""Authentication and authorisation shared by the HTTP services: roles, API keys and users (one table each), access
tokens, and one verifier (`Authenticator`) turning a presented credential into a `Principal`."""

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
from shared.security.authenticator import Authenticator, presented_credential
from shared.security.principal import Principal, PrincipalKind
from shared.security.tokens import issue_token, verify_token

__all__ = [
    "ApiKeyInfo",
    "ApiKeyPrincipal",
    "Authenticator",
    "Principal",
    "PrincipalKind",
    "Role",
    "create_api_key",
    "generate_api_key",
    "hash_api_key",
    "issue_token",
    "list_api_keys",
    "presented_credential",
    "revoke_api_key",
    "verify_api_key",
    "verify_token",
]
