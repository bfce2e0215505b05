"""Sub-operation counting for C-MOVE / C-GET (PS3.4 C.4.2.1.4, C.4.2.1.5, C.4.3.1.3): what a retrieval has done so
far, the pending progress it reports and the final status it ends with. Pure: stdlib only.
"""

from __future__ import annotations

from dataclasses import dataclass, field

from shared.retrieval.model import (
    CANCEL,
    OUT_OF_RESOURCES_SUB_OPERATIONS,
    SUB_OPERATIONS_WITH_FAILURES,
    SUCCESS,
    RetrieveOutcome,
    RetrieveProgress,
)

ERROR_COMMENT_MAX = 64  # Error Comment (0000,0902) is LO: 64 characters (PS3.7 C.4, PS3.5 6.2)


def is_store_warning(status: int) -> bool:
    """A C-STORE warning (PS3.4 B.2.3: 0xB000 coercion, 0xB007, 0xB006; 0x0001 as some SCPs send): the instance
    was kept, with a remark."""
    return status == 0x0001 or 0xB000 <= status <= 0xBFFF


def is_store_success(status: int) -> bool:
    return status == SUCCESS


@dataclass
class Tally:
    """Counts of sub-operations and the SOP Instance UIDs that failed (PS3.4 C.4.2.1.6 Failed SOP Instance UID
    List). Mutable; each tally is owned by one thread."""

    completed: int = 0
    failed: int = 0
    warning: int = 0
    failed_uids: list[str] = field(default_factory=list)

    @property
    def done(self) -> int:
        return self.completed + self.failed + self.warning

    def count_store(self, status: int, sop_instance_uid: str) -> None:
        """Count one C-STORE sub-operation by the destination's status (negative: no status, a failure)."""
        if is_store_success(status):
            self.completed += 1
        elif is_store_warning(status):
            self.warning += 1
        else:
            self.failed += 1
            if sop_instance_uid:
                self.failed_uids.append(sop_instance_uid)

    def add(self, completed: int = 0, failed: int = 0, warning: int = 0, failed_uids: tuple[str, ...] = ()) -> None:
        self.completed += completed
        self.failed += failed
        self.warning += warning
        self.failed_uids.extend(uid for uid in failed_uids if uid not in self.failed_uids)

    def merge(self, other: "Tally") -> None:
        self.add(other.completed, other.failed, other.warning, tuple(other.failed_uids))

    def progress(self, expected: int | None, extra: RetrieveProgress | None = None) -> RetrieveProgress:
        """The pending response's counts (PS3.4 C.4.2.1.4): this tally plus `extra` (an attempt under way);
        remaining = expected total - done, or None when the total is not known."""
        completed, failed, warning = self.completed, self.failed, self.warning
        if extra is not None:
            completed, failed, warning = completed + extra.completed, failed + extra.failed, warning + extra.warning
        remaining = None if expected is None else max(expected - completed - failed - warning, 0)
        return RetrieveProgress(remaining=remaining, completed=completed, failed=failed, warning=warning)

    def final_status(self, cancelled: bool) -> int:
        """PS3.4 C.4.2.1.5 / C.4.3.1.4: 0xFE00 cancelled; 0x0000 every sub-operation completed (or there were none);
        0xA702 all failed; 0xB000 some failed or had warnings."""
        if cancelled:
            return CANCEL
        if self.failed == 0 and self.warning == 0:
            return SUCCESS
        if self.completed == 0 and self.warning == 0:
            return OUT_OF_RESOURCES_SUB_OPERATIONS
        return SUB_OPERATIONS_WITH_FAILURES

    def outcome(self, cancelled: bool, error_comment: str | None = None) -> RetrieveOutcome:
        status = self.final_status(cancelled)
        comment = error_comment if status not in (SUCCESS,) else None
        return RetrieveOutcome(status=status, completed=self.completed, failed=self.failed, warning=self.warning,
                               failed_uids=tuple(self.failed_uids), error_comment=clip_comment(comment))


def clip_comment(text: str | None) -> str | None:
    """An Error Comment fits its 64 characters."""
    if not text:
        return None
    return text if len(text) <= ERROR_COMMENT_MAX else text[: ERROR_COMMENT_MAX - 3] + "..."
