"""Secrets in connection configs: masked whenever a config is shown, and the mask kept as "unchanged" on apply."""

from __future__ import annotations

from typing import Any

MASK = "********"
SECRET_KEYS = frozenset({"password", "token", "secret", "client_secret", "private_key", "credentials"})


def mask_secrets(data: Any) -> Any:
    """A copy of `data` with every non-empty secret value (by key name, at any depth) replaced by MASK."""
    if isinstance(data, dict):
        return {
            key: (MASK if key in SECRET_KEYS and value not in (None, "") else mask_secrets(value))
            for key, value in data.items()
        }
    if isinstance(data, list):
        return [mask_secrets(item) for item in data]
    return data


def masked_paths(data: Any, path: tuple = ()) -> list[tuple]:
    """Paths of secret keys whose value is the MASK (a config exported by `config show` and applied back)."""
    found: list[tuple] = []
    if isinstance(data, dict):
        for key, value in data.items():
            if key in SECRET_KEYS and value == MASK:
                found.append(path + (key,))
            else:
                found.extend(masked_paths(value, path + (key,)))
    return found


def restore_masked(data: dict[str, Any], stored: dict[str, Any] | None) -> tuple[dict[str, Any], list[tuple]]:
    """Replace MASK values in `data` by the stored secret at the same path; also return the paths with none stored."""
    missing: list[tuple] = []
    result = _copy(data)
    for path in masked_paths(data):
        value = _lookup(stored, path)
        if value in (None, "", MASK):
            missing.append(path)
            continue
        target = result
        for key in path[:-1]:
            target = target[key]
        target[path[-1]] = value
    return result, missing


def _copy(data: Any) -> Any:
    if isinstance(data, dict):
        return {key: _copy(value) for key, value in data.items()}
    if isinstance(data, list):
        return [_copy(item) for item in data]
    return data


def _lookup(data: Any, path: tuple) -> Any:
    for key in path:
        if not isinstance(data, dict) or key not in data:
            return None
        data = data[key]
    return data
