"""The demo's last act: a workstation's view through the spanning DIMSE SCP (services.listener), in-process.

A pynetdicom SCU plays the workstation: it associates with AE AXIOM_DEMO (the demo config's scp_ae_title), asks one
C-FIND and one C-GET, and sees every archive as one.
"""

from __future__ import annotations

from dataclasses import dataclass

from pydicom import Dataset
from pynetdicom import AE, StoragePresentationContexts, build_role, evt

from services.listener.app import Listener
from shared.config import get_settings
from shared.dicom.levels import STUDY_ROOT_FIND, STUDY_ROOT_GET


@dataclass
class WorkstationView:
    port: int
    find_status: int
    study_uids: list[str]
    get_status: int
    instances: int


def workstation_view(session_factory, span_client, patient_id: str) -> WorkstationView:
    """Start the listener on a free loopback port, C-FIND the patient's studies and C-GET the first of them."""
    settings = get_settings().model_copy(deep=True)
    settings.scp.host, settings.scp.port = "127.0.0.1", 0
    with Listener(settings, session_factory=session_factory, span_client=span_client) as listener:
        ae = AE(ae_title="WORKSTATION")
        ae.add_requested_context(STUDY_ROOT_FIND)
        ae.add_requested_context(STUDY_ROOT_GET)
        roles = []
        for context in StoragePresentationContexts[:100]:
            ae.add_requested_context(context.abstract_syntax)
            roles.append(build_role(context.abstract_syntax, scp_role=True))
        received: list[Dataset] = []
        assoc = ae.associate("127.0.0.1", listener.port, ae_title="AXIOM_DEMO", ext_neg=roles,
                             evt_handlers=[(evt.EVT_C_STORE, lambda event: received.append(event.dataset) or 0)])
        try:
            query = Dataset()
            query.QueryRetrieveLevel, query.PatientID, query.StudyInstanceUID = "STUDY", patient_id, ""
            *pending, (found, _) = list(assoc.send_c_find(query, STUDY_ROOT_FIND))
            uids = [str(ds.StudyInstanceUID) for _, ds in pending]
            query = Dataset()
            query.QueryRetrieveLevel, query.StudyInstanceUID = "STUDY", uids[0] if uids else "1.2.3"
            *_, (got, _) = list(assoc.send_c_get(query, STUDY_ROOT_GET))
        finally:
            assoc.release()
            ae.shutdown()
        return WorkstationView(listener.port, int(found.Status), uids, int(got.Status), len(received))
