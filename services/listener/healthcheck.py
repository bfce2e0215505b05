"""`python -m services.listener.healthcheck`: the listener's container health probe, a C-ECHO (PS3.7 9.1.5).

It requests an association with the spanning SCP (default 127.0.0.1:AXIOM_SCP_PORT, called AE AXIOM_SCP_AE_TITLE,
calling AE AXIOM_HEALTH) for the Verification SOP Class and sends C-ECHO. Exit status 0 (healthy) when:

* the C-ECHO answers Success (0x0000), or
* the association is rejected *permanently* (A-ASSOCIATE-RJ result 1, PS3.8 9.3.4): the listener is up and its
  association gate has read the spanner configs from the database, it just does not serve that AE title to this
  caller (a new deployment without spanner configs rejects every called AE title but its storage AE, which only
  admits the sources). A healthy listener must not depend on what operators configured.

Exit status 1 (unhealthy) for a transient rejection (result 2: the gate could not read the configs, or the
association limit is reached), a refused or timed-out connection, an abort, or a C-ECHO failure status.
One line saying which goes to stdout (Docker keeps it in `docker inspect`'s health log).
"""

from __future__ import annotations

import argparse
import logging
import sys
from dataclasses import dataclass
from typing import Sequence

from pynetdicom import AE, evt
from pynetdicom.sop_class import Verification

from shared.config import ScpSettings

HEALTHCHECK_AE_TITLE = "AXIOM_HEALTH"
PERMANENT_REJECTION = 0x01


@dataclass(frozen=True)
class EchoOutcome:
    """What the probe saw: healthy or not, and the one-line reason."""

    healthy: bool
    detail: str


def echo_listener(host: str, port: int, *, called_ae: str, calling_ae: str = HEALTHCHECK_AE_TITLE,
                  timeout: float = 5.0) -> EchoOutcome:
    """Associate with the SCP at host:port and C-ECHO it (PS3.7 9.1.5); judged as the module doc says."""
    rejection: dict[str, int] = {}

    def on_acse_recv(event: evt.Event) -> None:  # the A-ASSOCIATE-RJ parameters (PS3.8 9.3.4)
        primitive = event.primitive
        if getattr(primitive, "result", None) in (0x01, 0x02):
            rejection.update(result=primitive.result, source=primitive.result_source,
                             reason=primitive.diagnostic)

    ae = AE(ae_title=calling_ae)
    ae.acse_timeout = ae.dimse_timeout = ae.network_timeout = ae.connection_timeout = timeout
    ae.add_requested_context(Verification)
    assoc = ae.associate(host, port, ae_title=called_ae, evt_handlers=[(evt.EVT_ACSE_RECV, on_acse_recv)])
    where = f"{called_ae}@{host}:{port}"
    if assoc.is_rejected:
        text = (f"A-ASSOCIATE-RJ from {where} (result {rejection.get('result')}, source {rejection.get('source')}, "
                f"reason {rejection.get('reason')})")
        if rejection.get("result") == PERMANENT_REJECTION:
            return EchoOutcome(True, f"listener up: {text}, a permanent refusal of this caller")
        return EchoOutcome(False, f"listener not serving: {text}, transient")
    if not assoc.is_established:
        return EchoOutcome(False, f"no association with {where} (connection refused, timed out or aborted)")
    try:
        status = assoc.send_c_echo()
    finally:
        if assoc.is_established:
            assoc.release()
    if "Status" not in status:
        return EchoOutcome(False, f"no C-ECHO response from {where}")
    if int(status.Status) != 0x0000:
        return EchoOutcome(False, f"C-ECHO to {where} answered 0x{int(status.Status):04X}")
    return EchoOutcome(True, f"C-ECHO to {where}: Success")


def parse_args(argv: Sequence[str] | None, scp: ScpSettings) -> argparse.Namespace:
    parser = argparse.ArgumentParser(prog="python -m services.listener.healthcheck",
                                     description="C-ECHO the spanning SCP; exit 0 when it is healthy.")
    parser.add_argument("--host", default="127.0.0.1", help="the listener's address (default 127.0.0.1)")
    parser.add_argument("--port", type=int, default=scp.port, help="default AXIOM_SCP_PORT (%(default)s)")
    parser.add_argument("--called-ae", default=scp.ae_title, help="default AXIOM_SCP_AE_TITLE (%(default)s)")
    parser.add_argument("--calling-ae", default=HEALTHCHECK_AE_TITLE, help="default %(default)s")
    parser.add_argument("--timeout", type=float, default=5.0, help="seconds per network step (default 5)")
    args = parser.parse_args(argv)
    if not 1 <= args.port <= 65535:
        parser.error(f"--port: must be 1..65535, got {args.port}")
    if args.timeout <= 0:
        parser.error(f"--timeout: must be positive, got {args.timeout}")
    return args


def main(argv: Sequence[str] | None = None) -> int:
    args = parse_args(argv, ScpSettings())
    logging.getLogger("pynetdicom").setLevel(logging.CRITICAL)  # the outcome line says it all
    outcome = echo_listener(args.host, args.port, called_ae=args.called_ae, calling_ae=args.calling_ae,
                            timeout=args.timeout)
    print(("healthy: " if outcome.healthy else "unhealthy: ") + outcome.detail)
    return 0 if outcome.healthy else 1


if __name__ == "__main__":
    sys.exit(main())
