"""Inline source definitions for the CLI: `NAME=dimse://AET@host:port` and `NAME=http(s)://host:port/dicom-web`.

DIMSE URIs take query options: `?calling=MYAE&timeout=20&max_pdu=16384`. The result is the same typed connection
the database stores (shared/connections.py), so validation errors name the field.
"""

from __future__ import annotations

from urllib.parse import parse_qs, urlsplit

from pydantic import ValidationError

from shared.connections import DicomwebConnection, DimseConnection, parse_connection


class SourceUriError(ValueError):
    """The inline source definition cannot be used; the message says why."""


def parse_source_uri(text: str) -> tuple[str, DimseConnection | DicomwebConnection]:
    """Parse `NAME=URI` into (name, connection). Raises SourceUriError with the reason."""
    name, sep, uri = text.partition("=")
    name, uri = name.strip(), uri.strip()
    if not sep or not name or not uri:
        raise SourceUriError(f"invalid source {text!r}: expected NAME=dimse://AET@host:port or NAME=http://host/dicom-web")
    parts = urlsplit(uri)
    try:
        if parts.scheme == "dimse":
            return name, _dimse_connection(uri, parts)
        if parts.scheme in ("http", "https"):
            return name, DicomwebConnection(base_url=uri)
    except ValidationError as exc:
        error = exc.errors()[0]
        field = ".".join(str(p) for p in error["loc"][1:] or error["loc"])
        raise SourceUriError(f"invalid source {name}: {field}: {error['msg']}") from None
    raise SourceUriError(f"invalid source {name}: unsupported scheme {parts.scheme!r} (use dimse://, http:// or https://)")


def _dimse_connection(uri: str, parts) -> DimseConnection:
    if not parts.username or not parts.hostname:
        raise SourceUriError(f"invalid DIMSE source {uri!r}: expected dimse://AET@host:port")
    try:
        port = parts.port or 104
    except ValueError:
        raise SourceUriError(f"invalid DIMSE source {uri!r}: port must be a number from 1 to 65535") from None
    options = {key: values[-1] for key, values in parse_qs(parts.query).items()}
    data = {"kind": "dimse", "ae_title": parts.username, "host": parts.hostname, "port": port}
    aliases = {"calling": "calling_ae_title", "timeout": "dimse_timeout", "max_pdu": "max_pdu"}
    for key, value in options.items():
        if key not in aliases:
            raise SourceUriError(f"invalid DIMSE source {uri!r}: unknown option {key!r} (known: {', '.join(aliases)})")
        data[aliases[key]] = value
    return parse_connection(data)
