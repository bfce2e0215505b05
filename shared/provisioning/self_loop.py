"""Refusing sources that point back at this spanner's own SCP (a spanner querying itself would recurse).

Pure functions: the caller passes the SCP's AE titles, port and this machine's host name, so the API, the CLI and
`config apply` decide the same way.
"""

from __future__ import annotations

import ipaddress
import socket
from typing import Any, Iterable

LOCAL_HOST_NAMES = frozenset({"localhost", "localhost.localdomain", "ip6-localhost", "ip6-loopback"})


def is_local_host(host: str, *, local_names: Iterable[str] = ()) -> bool:
    """True for loopback (127.0.0.0/8, ::1), unspecified (0.0.0.0, ::) addresses, `localhost` and `local_names`."""
    text = host.strip().strip("[]").lower().rstrip(".")
    if text in LOCAL_HOST_NAMES or text in {name.strip().lower().rstrip(".") for name in local_names if name}:
        return True
    try:
        address = ipaddress.ip_address(text)
    except ValueError:
        return False
    return address.is_loopback or address.is_unspecified


def points_at_own_scp(
    connection: Any, *, scp_ae_titles: Iterable[str], scp_port: int, local_names: Iterable[str] = ()
) -> bool:
    """True when a DIMSE connection targets this machine's spanning SCP: one of its AE titles, its port, a local host.

    AE titles compare without leading/trailing spaces, which are not significant (PS3.5 6.2).
    """
    if getattr(connection, "kind", None) != "dimse":
        return False
    titles = {title.strip() for title in scp_ae_titles if title}
    return (
        connection.ae_title.strip() in titles
        and connection.port == scp_port
        and is_local_host(connection.host, local_names=local_names)
    )


def own_scp_refusal(
    source_name: str,
    connection: Any,
    *,
    scp_ae_titles: Iterable[str],
    scp_port: int,
    scp_host: str,
    hostname: str | None = None,
) -> str | None:
    """The refusal message if `connection` is this spanner's own SCP, else None.

    Local names are `scp_host` (the SCP's bind address), this machine's host name (`hostname`, default
    socket.gethostname()) and the loopback/unspecified addresses.
    """
    local_names = (scp_host, hostname if hostname is not None else socket.gethostname())
    if not points_at_own_scp(connection, scp_ae_titles=scp_ae_titles, scp_port=scp_port, local_names=local_names):
        return None
    return (
        f"source {source_name!r} points at this spanner's own SCP "
        f"({connection.ae_title}@{connection.host}:{connection.port}); querying it would loop forever"
    )
