"""StorePort for DIMSE destinations: C-STORE SCU sessions on pynetdicom (PS3.4 B.2, PS3.7 9.1.1).

`DimseStorePort.open()` returns a `DimseStoreSession` that connects lazily, at its first `send()`, and keeps one
association open for the whole retrieval. Presentation contexts (PS3.8 7.1.1.13, 9.3.2.2):

- the first association proposes the first instance's SOP class in its own transfer syntax and in Explicit/Implicit
  VR Little Endian (a compressed syntax gets a context of its own, so the acceptor cannot answer it with an
  uncompressed choice), plus the storage SOP classes a study commonly holds (COMMON_STORAGE_SOP_CLASSES) in
  Explicit/Implicit VR Little Endian: about 30 of the 128 contexts an association may carry;
- a later instance whose SOP class was accepted in another uncompressed little-endian syntax is re-encoded by
  pynetdicom (explicit <-> implicit VR, deflated <-> inflated, PS3.5 A.1-A.5);
- any other (SOP class, transfer syntax) makes the session release its association and open a new one proposing
  everything sent so far plus the new pair, kept for later instances. One association at a time, rather than a
  second one alongside: single-association SCPs (DCMTK storescp without --fork, many modalities' consoles) leave a
  second A-ASSOCIATE-RQ unanswered until the ACSE timeout.
- a pair the destination refused is remembered: `send` returns 0x0122 (Refused: SOP Class not supported,
  PS3.7 C.5.1) for it at once, as the destination would have answered.

`send()` never raises for transport problems: when the association is lost (peer abort, DIMSE timeout, closed
connection) or the destination cannot be reached, it reconnects once and resends; if that fails too it returns
NO_STATUS (negative) and `last_error` says why. Cancelling the session's token aborts the association; later sends
return NO_STATUS at once. `close()` releases it (PS3.8 7.2).
"""

from __future__ import annotations

import copy
import itertools
import logging
import threading
from typing import Iterable

from pydicom import Dataset
from pydicom.dataset import FileMetaDataset
from pydicom.uid import UID, ExplicitVRLittleEndian, ImplicitVRLittleEndian
from pynetdicom import build_context
from pynetdicom.association import Association
from pynetdicom.presentation import PresentationContext
from pynetdicom.sop_class import (
    BasicTextSRStorage, ComprehensiveSRStorage, ComputedRadiographyImageStorage, CTImageStorage,
    DigitalMammographyXRayImageStorageForPresentation, DigitalMammographyXRayImageStorageForProcessing,
    DigitalXRayImageStorageForPresentation, DigitalXRayImageStorageForProcessing, EncapsulatedPDFStorage,
    EnhancedCTImageStorage, EnhancedMRImageStorage, EnhancedSRStorage, GrayscaleSoftcopyPresentationStateStorage,
    KeyObjectSelectionDocumentStorage, MRImageStorage, MultiFrameGrayscaleByteSecondaryCaptureImageStorage,
    MultiFrameGrayscaleWordSecondaryCaptureImageStorage, MultiFrameTrueColorSecondaryCaptureImageStorage,
    NuclearMedicineImageStorage, PositronEmissionTomographyImageStorage, RTDoseStorage, RTImageStorage,
    RTPlanStorage, RTStructureSetStorage, SecondaryCaptureImageStorage, UltrasoundImageStorage,
    UltrasoundMultiFrameImageStorage, XRayAngiographicImageStorage, XRayRadiationDoseSRStorage,
)

from shared.adapters.dimse_association import AssociationCancelled, abort_and_wake
from shared.adapters.dimse_retrieve import (
    UNCOMPRESSED_SYNTAXES, ContextsRejected, close_association, new_ae, open_association,
)
from shared.connections import DimseConnection
from shared.retrieval.model import Destination
from shared.spanning.model import SourceSpec
from shared.spanning.ports import CancelToken, TransportError

logger = logging.getLogger(__name__)

NO_STATUS = -1  # no C-STORE response: association lost, destination unreachable, session cancelled or closed
SOP_CLASS_NOT_SUPPORTED = 0x0122  # PS3.7 C.5.1: no accepted presentation context for the instance
MAX_CONTEXTS = 128  # presentation contexts per association (PS3.8 9.3.2.2: odd context IDs 1-255)

# Storage SOP classes commonly found in one study (PS3.4 B.5), proposed up front in uncompressed syntaxes.
COMMON_STORAGE_SOP_CLASSES = (
    CTImageStorage, MRImageStorage, ComputedRadiographyImageStorage, DigitalXRayImageStorageForPresentation,
    DigitalXRayImageStorageForProcessing, DigitalMammographyXRayImageStorageForPresentation,
    DigitalMammographyXRayImageStorageForProcessing, UltrasoundImageStorage, UltrasoundMultiFrameImageStorage,
    SecondaryCaptureImageStorage, MultiFrameGrayscaleByteSecondaryCaptureImageStorage,
    MultiFrameGrayscaleWordSecondaryCaptureImageStorage, MultiFrameTrueColorSecondaryCaptureImageStorage,
    RTPlanStorage, RTStructureSetStorage, RTDoseStorage, RTImageStorage, EnhancedCTImageStorage,
    EnhancedMRImageStorage, BasicTextSRStorage, EnhancedSRStorage, ComprehensiveSRStorage,
    XRayRadiationDoseSRStorage, KeyObjectSelectionDocumentStorage, GrayscaleSoftcopyPresentationStateStorage,
    XRayAngiographicImageStorage, NuclearMedicineImageStorage, PositronEmissionTomographyImageStorage,
    EncapsulatedPDFStorage,
)


class DimseStorePort:
    """C-STORE SCU StorePort. `ae_title` is the calling AE title; the timeouts (seconds) apply to every session's
    associations: acse/connect (PS3.8 9.1.1 ARTIM), dimse (waiting for a C-STORE response), network (idle)."""

    def __init__(self, *, ae_title: str = "AXIOM", acse_timeout: float = 10.0, dimse_timeout: float = 30.0,
                 network_timeout: float = 30.0, connect_timeout: float = 5.0, max_pdu: int = 0) -> None:
        self._settings = dict(calling_ae_title=ae_title, acse_timeout=acse_timeout, dimse_timeout=dimse_timeout,
                              network_timeout=network_timeout, connect_timeout=connect_timeout, max_pdu=max_pdu)

    def open(self, destination: Destination, cancel: CancelToken) -> "DimseStoreSession":
        """A session to `destination`; it connects at the first send (see module doc)."""
        conn = DimseConnection(ae_title=destination.ae_title, host=destination.host, port=destination.port,
                               **self._settings)
        return DimseStoreSession(destination, conn, cancel)


class DimseStoreSession:
    """One association to one destination for one retrieval, renegotiated when an instance needs a presentation
    context it lacks (see module doc). `last_error` explains the last NO_STATUS or SOP_CLASS_NOT_SUPPORTED;
    `associations_opened` counts the associations this session has opened."""

    def __init__(self, destination: Destination, conn: DimseConnection, cancel: CancelToken) -> None:
        self.destination, self._conn, self._cancel = destination, conn, cancel
        self._label = SourceSpec(destination.ae_title, "dimse", conn)  # names the peer in error messages
        self._ae = new_ae(conn)
        self._lock = threading.Lock()  # one send (or close) at a time
        self._assoc: Association | None = None
        self._wanted: dict[str, list[str]] = {}  # SOP class -> transfer syntaxes seen, in order of arrival
        self._refused: set[tuple[str, str]] = set()  # (SOP class, syntax) the destination did not accept
        self._msg_ids = itertools.count(1)
        self._closed = False
        self.associations_opened = 0
        self.last_error: str | None = None
        self._unregister = cancel.on_cancel(self._abort_in_background)

    def send(self, dataset: Dataset) -> int:
        """C-STORE `dataset` (PS3.4 B.2.2); returns the destination's status, SOP_CLASS_NOT_SUPPORTED when it
        accepts no context for it, NO_STATUS when there is no response even after one reconnection."""
        dataset = _with_transfer_syntax(dataset)
        sop_class, syntax = str(dataset.SOPClassUID), str(dataset.file_meta.TransferSyntaxUID)
        with self._lock:
            for attempt in (1, 2):
                if self._closed or self._cancel.cancelled:
                    self.last_error = "the store session is closed" if self._closed else "cancelled"
                    return NO_STATUS
                try:
                    assoc = self._association_for(sop_class, syntax)
                except (TransportError, AssociationCancelled) as exc:
                    self.last_error = str(exc) or "cancelled while connecting"
                    continue
                if assoc is None:
                    self.last_error = (f"{self.destination.ae_title} accepts no presentation context for "
                                       f"{UID(sop_class).name} in {UID(syntax).name}")
                    return SOP_CLASS_NOT_SUPPORTED
                status = self._store(assoc, dataset)
                if status is not None:
                    return status
                self.last_error = f"association to {self.destination.ae_title} lost during C-STORE"
                logger.info("%s (attempt %d)", self.last_error, attempt)
                self._drop(release=False)
            return NO_STATUS

    def close(self) -> None:
        """Release the association (PS3.8 7.2); the session is unusable afterwards."""
        self._unregister()
        with self._lock:
            self._closed = True
            self._drop(release=True)
        self._ae.shutdown()

    def __enter__(self) -> "DimseStoreSession":
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    # -- the association -------------------------------------------------------------------------------------

    def _association_for(self, sop_class: str, syntax: str) -> Association | None:
        """The open association if it can carry (SOP class, syntax); otherwise a new one proposing everything
        wanted so far plus this (the old one is released first: many SCPs serve one association at a time).
        None when the destination refuses the pair."""
        assoc = self._assoc
        if assoc is not None and assoc.is_established and _can_send(assoc, sop_class, syntax):
            return assoc
        if (sop_class, syntax) in self._refused:
            return None
        self._drop(release=True)
        contexts = _contexts_for(sop_class, syntax, self._wanted)
        try:
            self._assoc = open_association(self._ae, self._label, self._conn, self._cancel, contexts=contexts)
        except ContextsRejected:
            self._refused.add((sop_class, syntax))
            return None
        self.associations_opened += 1
        self._wanted.setdefault(sop_class, [])
        if syntax not in self._wanted[sop_class]:
            self._wanted[sop_class].append(syntax)
        if _can_send(self._assoc, sop_class, syntax):
            return self._assoc
        self._refused.add((sop_class, syntax))
        return None

    def _store(self, assoc: Association, dataset: Dataset) -> int | None:
        """One C-STORE; None when no response came (aborted, closed or DIMSE timeout)."""
        try:
            response = assoc.send_c_store(dataset, msg_id=next(self._msg_ids) % 0x10000 or 1)
        except RuntimeError:  # the association ended between the lookup and the send
            return None
        if "Status" not in response:
            return None
        return int(response.Status)

    def _drop(self, *, release: bool) -> None:
        assoc, self._assoc = self._assoc, None
        if assoc is not None:
            close_association(assoc, release=release)

    def _abort_in_background(self) -> None:
        """The cancel hook: abort the association without making the canceller's thread wait on the peer."""
        assoc = self._assoc
        if assoc is not None:
            threading.Thread(target=abort_and_wake, args=(assoc,), name=f"c-store-abort-{self.destination.ae_title}",
                             daemon=True).start()


# -- pure helpers ------------------------------------------------------------------------------------------------


def _with_transfer_syntax(dataset: Dataset) -> Dataset:
    """`dataset` itself when its file meta names a Transfer Syntax UID (PS3.10 7.1), else a shallow copy with
    one matching how it was decoded (or Explicit VR Little Endian for a dataset built in memory)."""
    if "TransferSyntaxUID" in getattr(dataset, "file_meta", {}):
        return dataset
    implicit = dataset.original_encoding[0]
    if implicit is None:
        implicit = getattr(dataset, "is_implicit_VR", False)
    result = copy.copy(dataset)
    result.file_meta = FileMetaDataset(getattr(dataset, "file_meta", None) or FileMetaDataset())
    result.file_meta.TransferSyntaxUID = ImplicitVRLittleEndian if implicit else ExplicitVRLittleEndian
    return result


def _contexts_for(sop_class: str, syntax: str, wanted: dict[str, list[str]]) -> list[PresentationContext]:
    """The proposal (PS3.8 9.3.2.2): (sop_class, syntax) first, then every (SOP class, syntax) sent before, then
    COMMON_STORAGE_SOP_CLASSES in uncompressed syntaxes, at most MAX_CONTEXTS. Per SOP class, the uncompressed
    syntaxes share one context and each compressed syntax gets its own, so the acceptor cannot answer a
    compressed proposal with an uncompressed choice (one transfer syntax per accepted context, PS3.8 9.3.3.2)."""
    classes = {sop_class: [syntax, *wanted.get(sop_class, [])]}
    classes.update((uid, syntaxes) for uid, syntaxes in wanted.items() if uid != sop_class)
    contexts = []
    for uid, syntaxes in classes.items():
        uncompressed = [s for s in syntaxes if not UID(s).is_compressed]
        contexts.append(build_context(uid, _unique([*uncompressed, *UNCOMPRESSED_SYNTAXES])))
        contexts += [build_context(uid, [s]) for s in _unique(syntaxes) if UID(s).is_compressed]
    contexts += [build_context(uid, list(UNCOMPRESSED_SYNTAXES)) for uid in COMMON_STORAGE_SOP_CLASSES
                 if uid not in classes]
    return contexts[:MAX_CONTEXTS]


def _can_send(assoc: Association, sop_class: str, syntax: str) -> bool:
    """True when an accepted context carries `sop_class` in `syntax` or in a syntax pynetdicom can re-encode it
    to (both uncompressed, same endianness: PS3.5 A.1-A.5)."""
    wanted = UID(syntax)
    for context in assoc.accepted_contexts:
        if context.abstract_syntax != sop_class or not context.as_scu:
            continue
        accepted = UID(context.transfer_syntax[0])
        if accepted == wanted:
            return True
        uncompressed = not (accepted.is_compressed or wanted.is_compressed)
        if uncompressed and accepted.is_little_endian == wanted.is_little_endian:
            return True
    return False


def _unique(items: Iterable[str]) -> list[str]:
    return list(dict.fromkeys(items))
