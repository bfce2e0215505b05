"""The spanning SCP's DIMSE statuses in one table (PS3.4 C.4.1.1.4 C-FIND, C.4.2.1.5 C-MOVE, C.4.3.1.4 C-GET,
PS3.7 Annex C), and how a span's outcome becomes the final C-FIND response.

Error Comment (0000,0902) is LO: at most 64 characters (PS3.5 6.2); longer reasons are cut with "...".
"""

from __future__ import annotations

from pydicom import Dataset

from shared.retrieval.model import (
    CANCEL, IDENTIFIER_DOES_NOT_MATCH, MOVE_DESTINATION_UNKNOWN, OUT_OF_RESOURCES_MATCHES,
    OUT_OF_RESOURCES_SUB_OPERATIONS, PENDING, SUB_OPERATIONS_WITH_FAILURES, SUCCESS, UNABLE_TO_PROCESS,
)
from shared.spanning.model import SpanResult, SpanStatus

SOP_CLASS_NOT_SUPPORTED = 0x0122  # PS3.7 C.5.3: the config does not offer this service (supports_cmove/cget)
OUT_OF_RESOURCES = 0xA700  # C-FIND: Refused, out of resources
PENDING_OPTIONAL_KEYS_UNSUPPORTED = 0xFF01

__all__ = [
    "CANCEL", "IDENTIFIER_DOES_NOT_MATCH", "MOVE_DESTINATION_UNKNOWN", "OUT_OF_RESOURCES", "OUT_OF_RESOURCES_MATCHES",
    "OUT_OF_RESOURCES_SUB_OPERATIONS", "PENDING", "PENDING_OPTIONAL_KEYS_UNSUPPORTED", "SOP_CLASS_NOT_SUPPORTED",
    "SUB_OPERATIONS_WITH_FAILURES", "SUCCESS", "UNABLE_TO_PROCESS", "error_comment", "find_final_status",
    "status_dataset",
]


def error_comment(text: str) -> str:
    """`text` as an Error Comment value: one line, at most 64 characters."""
    line = " ".join(str(text).split())
    return line if len(line) <= 64 else line[:61] + "..."


def status_dataset(status: int, comment: str | None = None) -> Dataset:
    """A status the pynetdicom handlers can yield: Status and, when given, Error Comment."""
    ds = Dataset()
    ds.Status = status
    if comment:
        ds.ErrorComment = error_comment(comment)
    return ds


def find_final_status(result: SpanResult) -> Dataset:
    """The final C-FIND response of a span (PS3.4 C.4.1.1.4):

    * completed -> Success;
    * partial (sources failed, the failure strategy still succeeds) -> Success, Error Comment naming them;
    * failed -> 0xC000 "Unable to process" with the reason;
    * cancelled -> Cancel 0xFE00.
    """
    if result.status is SpanStatus.COMPLETED:
        return status_dataset(SUCCESS)
    if result.status is SpanStatus.PARTIAL:
        return status_dataset(SUCCESS, "no answer from " + ", ".join(result.failed_sources))
    if result.status is SpanStatus.CANCELLED:
        return status_dataset(CANCEL)
    return status_dataset(UNABLE_TO_PROCESS, result.error or "the span failed")
