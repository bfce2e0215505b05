"""TCP tuning shared by every pynetdicom AE of Axiom (SCUs, the simulator, later the listeners).

pynetdicom writes a DIMSE message as separate P-DATA-TF PDUs (command set, then data set) and never disables Nagle's
algorithm, so the second small write waits for the peer's delayed ACK: about 40-50 ms added to every C-FIND request
and every pending response on Linux. Setting TCP_NODELAY when the connection opens removes that stall.
"""

from __future__ import annotations

import socket

from pynetdicom import evt


def disable_nagle(event: evt.Event) -> None:
    """EVT_CONN_OPEN handler: set TCP_NODELAY on the association's socket (both requestor and acceptor)."""
    raw = getattr(getattr(event.assoc.dul, "socket", None), "socket", None)
    if raw is None:
        return
    try:
        raw.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
    except OSError:  # the peer may already have gone: nothing to tune
        pass


CONNECTION_HANDLERS: list[tuple] = [(evt.EVT_CONN_OPEN, disable_nagle)]
