"""The simulator's DIMSE side: a pynetdicom AE answering C-ECHO, C-FIND, C-MOVE, C-GET and C-STORE.

Handlers only translate (as pynetdicom's apps/qrscp does): the catalog says what exists, shared.dicom.matching
says what matches (PS3.4 C.2.2.2) and how a response looks (C.4.1.2.3), faults.FaultInjector says what goes wrong.
Both Patient Root and Study Root, all four levels where the model has them (PS3.4 C.6.1, C.6.2).
"""

from __future__ import annotations

import struct
from dataclasses import dataclass, field
from typing import Iterator

from pydicom import Dataset
from pydicom.dataelem import RawDataElement
from pydicom.tag import Tag
from pydicom.uid import UID, ExplicitVRLittleEndian, ImplicitVRLittleEndian
from pynetdicom import AE, StoragePresentationContexts, build_context, evt
from pynetdicom.sop_class import Verification

from services.pacs_sim.catalog import Catalog
from services.pacs_sim.faults import CANCEL_STATUS, FAILURE_STATUS, FaultInjector
from shared.adapters.dimse_network import CONNECTION_HANDLERS
from shared.dicom.levels import (
    PATIENT_ROOT_FIND, PATIENT_ROOT_GET, PATIENT_ROOT_MOVE, STUDY_ROOT_FIND, STUDY_ROOT_GET, STUDY_ROOT_MOVE,
    InformationModel, QueryLevel,
)
from shared.dicom.matching import matches, project

PENDING = 0xFF00
SUCCESS = 0x0000
ABORTED = -1  # not a status: the association is gone, send nothing
IDENTIFIER_DOES_NOT_MATCH = 0xA900  # PS3.4 C.4.1.1.4, "Identifier does not match SOP Class"
MODELS = {
    PATIENT_ROOT_FIND: InformationModel.PATIENT_ROOT, PATIENT_ROOT_MOVE: InformationModel.PATIENT_ROOT,
    PATIENT_ROOT_GET: InformationModel.PATIENT_ROOT, STUDY_ROOT_FIND: InformationModel.STUDY_ROOT,
    STUDY_ROOT_MOVE: InformationModel.STUDY_ROOT, STUDY_ROOT_GET: InformationModel.STUDY_ROOT,
}


@dataclass
class DimseService:
    """Everything the handlers need; one per simulator."""

    catalog: Catalog
    injector: FaultInjector
    move_destinations: dict[str, tuple[str, int]] = field(default_factory=dict)
    charset: str = "ISO_IR 192"
    pn_case_insensitive: bool = False

    # --- C-ECHO / C-STORE ---------------------------------------------------------------------------------------

    def on_echo(self, event: evt.Event) -> int:
        return SUCCESS

    def on_store(self, event: evt.Event) -> int:
        dataset = event.dataset
        dataset.file_meta = event.file_meta
        self.catalog.add(dataset)
        return SUCCESS

    # --- C-FIND ---------------------------------------------------------------------------------------------------

    def on_find(self, event: evt.Event) -> Iterator[tuple[int, Dataset | None]]:
        level = _level(event)
        if level is None:
            yield IDENTIFIER_DOES_NOT_MATCH, None
            return
        status = self._gate(event)
        if status is not None:
            if status != ABORTED:
                yield status, None
            return
        identifier = event.identifier
        found = [r for r in self.catalog.records(level)
                 if matches(identifier, r, pn_case_insensitive=self.pn_case_insensitive)]
        count, capped = self.injector.cap(len(found))
        for record in found[:count]:
            if event.is_cancelled:
                yield CANCEL_STATUS, None
                return
            yield PENDING, self._response(event, identifier, record, level)
        yield (self.injector.faults.result_cap_status if capped else SUCCESS), None

    def _response(self, event: evt.Event, identifier: Dataset, record: Dataset, level: QueryLevel) -> Dataset:
        response = project(identifier, record, level=level)
        if "RetrieveAETitle" in identifier:
            response.RetrieveAETitle = event.assoc.ae.ae_title
        if _has_non_ascii(response):
            response.SpecificCharacterSet = self.charset
        elif "SpecificCharacterSet" in response:
            del response.SpecificCharacterSet
        if self.injector.faults.malformed:
            _make_undecodable(response, UID(event.context.transfer_syntax))
        return response

    # --- C-MOVE / C-GET ---------------------------------------------------------------------------------------

    def on_move(self, event: evt.Event) -> Iterator:
        destination = self.move_destinations.get((event.move_destination or "").strip())
        if destination is None or _level(event) is None:
            yield None, None  # pynetdicom answers 0xA801 "Move destination unknown"
            return
        status = self._gate(event)
        uids = self._retrieve_uids(event) if status is None else []
        yield destination[0], destination[1], {"contexts": self._contexts(uids)[:128]}
        yield from self._retrieve(event, status, uids)

    def on_get(self, event: evt.Event) -> Iterator:
        status = IDENTIFIER_DOES_NOT_MATCH if _level(event) is None else self._gate(event)
        uids = self._retrieve_uids(event) if status is None else []
        yield from self._retrieve(event, status, uids)

    def _retrieve(self, event: evt.Event, status: int | None, uids: list[str]) -> Iterator:
        """The sub-operation count, then one (status, dataset) per instance (PS3.4 C.4.2.3, C.4.3.3)."""
        if status is not None:
            yield 1  # pynetdicom reports success for 0 sub-operations without asking for a status
            if status != ABORTED:
                yield status, None
            return
        yield len(uids)
        for uid in uids:
            if event.is_cancelled:
                yield CANCEL_STATUS, None
                return
            yield PENDING, self.catalog.dataset(uid)

    def _retrieve_uids(self, event: evt.Event) -> list[str]:
        identifier = event.identifier
        return [r.SOPInstanceUID for r in self.catalog.records(QueryLevel.IMAGE)
                if matches(identifier, r, pn_case_insensitive=self.pn_case_insensitive)]

    def _contexts(self, uids: list[str]) -> list:
        sop_classes = sorted({str(self.catalog.dataset(uid).SOPClassUID) for uid in uids})
        return [build_context(sop, [ExplicitVRLittleEndian, ImplicitVRLittleEndian]) for sop in sop_classes]

    # --- faults --------------------------------------------------------------------------------------------------

    def _gate(self, event: evt.Event) -> int | None:
        """Apply latency, failure and hang (faults.py). None: answer normally; otherwise the final status to
        send (FAILURE_STATUS, CANCEL_STATUS) or ABORTED when there is nobody left to answer."""
        assoc = event.assoc
        cancelled = False

        def interrupted() -> bool:
            # event.is_cancelled consumes the C-CANCEL: remember it
            nonlocal cancelled
            cancelled = cancelled or event.is_cancelled
            return cancelled or not assoc.is_established

        decision = self.injector.decide()
        if not self.injector.delay(interrupted):
            return CANCEL_STATUS if cancelled else ABORTED
        if decision.abort:
            assoc.abort()
            return ABORTED
        if decision.fail:
            return FAILURE_STATUS
        if self.injector.faults.hang:
            self.injector.hang(interrupted)
            return CANCEL_STATUS if cancelled else ABORTED
        return None


def build_ae(service: DimseService, ae_title: str) -> AE:
    """The AE with Verification, Patient/Study Root Find/Move/Get and every storage SOP class (as SCP, and as
    storage SCU over a C-GET association via SCP/SCU role selection, PS3.7 D.3.3.4).

    Storage contexts offer pynetdicom's default (uncompressed) transfer syntaxes only: the simulator's data is
    uncompressed, and pynetdicom copies and negotiates every supported context on each association, so 128 SOP
    classes x all transfer syntaxes made association set-up cost ~25 ms of CPU instead of ~5 ms."""
    ae = AE(ae_title=ae_title)
    ae.maximum_associations = 64
    ae.network_timeout = 60
    ae.add_supported_context(Verification)
    for uid in MODELS:
        ae.add_supported_context(uid)
    for context in StoragePresentationContexts:
        ae.add_supported_context(context.abstract_syntax, scp_role=True, scu_role=False)
    return ae


def handlers(service: DimseService) -> list[tuple]:
    return [
        *CONNECTION_HANDLERS,
        (evt.EVT_C_ECHO, service.on_echo),
        (evt.EVT_C_FIND, service.on_find),
        (evt.EVT_C_MOVE, service.on_move),
        (evt.EVT_C_GET, service.on_get),
        (evt.EVT_C_STORE, service.on_store),
    ]


def _level(event: evt.Event) -> QueryLevel | None:
    """The request's level if its information model has it (PS3.4 C.6.2: no PATIENT in Study Root)."""
    model = MODELS.get(str(event.request.AffectedSOPClassUID))
    try:
        level = QueryLevel.parse(str(event.identifier.get("QueryRetrieveLevel", "")))
    except ValueError:
        return None
    return level if model is not None and model.allows(level) else None


def _has_non_ascii(ds: Dataset) -> bool:
    for element in ds:
        if element.VR == "SQ":
            if any(_has_non_ascii(item) for item in element.value):
                return True
        elif element.VR in ("PN", "LO", "SH", "ST", "LT", "UT", "UC") and element.value is not None:
            if not str(element.value).isascii():
                return True
    return False


def _make_undecodable(ds: Dataset, transfer_syntax: UID) -> None:
    """Add a sequence of undefined length whose item never ends: the written bytes cannot be parsed back
    (pydicom: 'No tag to read'; DCMTK: parse error). Raw elements are written as-is when the dataset's
    original encoding equals the negotiated transfer syntax."""
    implicit = transfer_syntax.is_implicit_VR
    junk = struct.pack("<HHI", 0xFFFE, 0xE000, 0xFFFFFFFF) + b"\x10\x00"
    ds.set_original_encoding(implicit, transfer_syntax.is_little_endian, ds._character_set)
    ds[0x00081115] = RawDataElement(Tag(0x00081115), None if implicit else "SQ", 0xFFFFFFFF, junk, 0, implicit, True)
