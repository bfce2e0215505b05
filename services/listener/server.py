"""The spanning SCP's pynetdicom AE and server: presentation contexts, the association gate, C-MOVE routing.

* Contexts (PS3.4 Annex B, C): Verification; Patient Root and Study Root FIND/MOVE/GET; every storage SOP class
  pynetdicom knows, with the uncompressed and the usual compressed transfer syntaxes, as SCP (C-STORE from sources
  for a C-MOVE to the spanner) and, through SCP/SCU role selection, as SCU (C-STORE sub-operations of a C-GET on the
  caller's association, PS3.4 C.4.3, PS3.7 D.3.3.4).
* Each association gets `GatedACSE` (services.listener.gate: called AE -> config, calling AE allowlist) and is a
  `SpanningAssociation`, which hands C-FIND requests to services.listener.find_scp and C-MOVE and C-GET requests
  to services.listener.retrieve_scp (why: see there).
  Relies on pynetdicom 3.0's RequestHandler._create_association and Association._serve_request (pinned in
  pyproject.toml).
"""

from __future__ import annotations

import threading
from typing import Callable

from pydicom.uid import (
    DeflatedExplicitVRLittleEndian, ExplicitVRBigEndian, ExplicitVRLittleEndian, ImplicitVRLittleEndian,
    JPEG2000, JPEG2000Lossless, JPEGBaseline8Bit, JPEGExtended12Bit, JPEGLosslessSV1, JPEGLSLossless,
    JPEGLSNearLossless, RLELossless,
)
from pynetdicom import AE, StoragePresentationContexts
from pynetdicom.association import Association
from pynetdicom.dimse_primitives import C_FIND, C_GET, C_MOVE
from pynetdicom.sop_class import Verification
from pynetdicom.transport import RequestHandler, ThreadedAssociationServer

from services.listener.find_scp import FindHandler, serve_find
from services.listener.gate import AssociationGate, GatedACSE
from shared.adapters.dimse_network import CONNECTION_HANDLERS
from shared.dicom.levels import (
    PATIENT_ROOT_FIND, PATIENT_ROOT_GET, PATIENT_ROOT_MOVE, STUDY_ROOT_FIND, STUDY_ROOT_GET, STUDY_ROOT_MOVE,
)

STORAGE_TRANSFER_SYNTAXES = [
    ExplicitVRLittleEndian, ImplicitVRLittleEndian, DeflatedExplicitVRLittleEndian, ExplicitVRBigEndian,
    JPEGBaseline8Bit, JPEGExtended12Bit, JPEGLosslessSV1, JPEGLSLossless, JPEGLSNearLossless, JPEG2000Lossless,
    JPEG2000, RLELossless,
]
QUERY_RETRIEVE = (PATIENT_ROOT_FIND, PATIENT_ROOT_MOVE, PATIENT_ROOT_GET, STUDY_ROOT_FIND, STUDY_ROOT_MOVE,
                  STUDY_ROOT_GET)
RetrieveServer = Callable[[Association, C_MOVE | C_GET, object], None]


def build_ae(ae_title: str, *, maximum_associations: int = 64, network_timeout: float = 60.0) -> AE:
    """The listener's AE with the contexts of the module doc. `require_called_aet` stays off: the gate decides."""
    ae = AE(ae_title=ae_title)
    ae.maximum_associations = maximum_associations
    ae.network_timeout = network_timeout
    ae.require_called_aet = False
    ae.add_supported_context(Verification)
    for uid in QUERY_RETRIEVE:
        ae.add_supported_context(uid)
    for context in StoragePresentationContexts:
        ae.add_supported_context(context.abstract_syntax, STORAGE_TRANSFER_SYNTAXES, scu_role=True, scp_role=True)
    return ae


class SpanningAssociation(Association):
    """An acceptor association whose C-FIND, C-MOVE and C-GET requests go to the listener's own SCPs (find_scp.py,
    retrieve_scp.py); everything else to pynetdicom's."""

    retrieve_server: RetrieveServer | None = None
    find_handler: FindHandler | None = None

    def _serve_request(self, msg, context_id: int) -> None:  # type: ignore[override]
        context = self._accepted_cx.get(context_id)
        if isinstance(msg, C_FIND) and self.find_handler is not None:
            serve = lambda: serve_find(self, msg, context, self.find_handler)  # noqa: E731
        elif isinstance(msg, (C_MOVE, C_GET)) and self.retrieve_server is not None:
            serve = lambda: self.retrieve_server(self, msg, context)  # noqa: E731
        else:
            serve = None
        if serve is None or context is None or self._sent_release:
            super()._serve_request(msg, context_id)
            return
        self.dimse.cancel_req = {}  # as pynetdicom does around every SCP call
        self._is_paused = True
        try:
            serve()
        finally:
            self._is_paused = False
            self.dimse.cancel_req = {}


class _GatedRequestHandler(RequestHandler):
    def _create_association(self) -> Association:
        assoc = super()._create_association()
        assoc.__class__ = SpanningAssociation  # same object, with the C-MOVE routing above
        assoc.retrieve_server = self.server.retrieve_server
        assoc.find_handler = self.server.find_handler
        assoc.acse = GatedACSE(assoc, self.server.gate)
        return assoc


class SpanningServer(ThreadedAssociationServer):
    """pynetdicom's threaded server with the gate and the retrieve SCP; made by `start_server`."""

    gate: AssociationGate
    retrieve_server: RetrieveServer | None
    find_handler: FindHandler | None

    def __init__(self, *args, gate: AssociationGate, retrieve_server: RetrieveServer | None,
                 find_handler: FindHandler | None, **kwargs) -> None:
        self.gate, self.retrieve_server, self.find_handler = gate, retrieve_server, find_handler
        super().__init__(*args, request_handler=_GatedRequestHandler, **kwargs)


def start_server(ae: AE, address: tuple[str, int], *, gate: AssociationGate, retrieve_server: RetrieveServer | None,
                 find_handler: FindHandler | None, evt_handlers: list) -> SpanningServer:
    """Start serving on `address` in background threads (stop with `.shutdown()`), like AE.start_server(block=False)."""
    def make(*args, **kwargs) -> SpanningServer:
        return SpanningServer(*args, gate=gate, retrieve_server=retrieve_server, find_handler=find_handler, **kwargs)

    server = ae.make_server(address, evt_handlers=[*CONNECTION_HANDLERS, *evt_handlers], server_class=make)
    thread = threading.Thread(target=server.serve_forever, name=f"scp-server-{address[1]}", daemon=True)
    thread.start()
    ae._servers.append(server)
    return server
