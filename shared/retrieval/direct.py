"""DIRECT C-MOVE: each holder sends its entities straight to the caller's Move Destination (PS3.4 C.4.2.2); the
spanner relays the holders' pending counts (C.4.2.1.4) summed across holders, and tries the next holder for the
entities a holder failed. The first phase of HYBRID lives here too: what DIRECT could not deliver goes to PROXY.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Callable, Generator, Sequence

from shared.retrieval.job import HolderChain, Holders, Job, image_uids, log_holder_failed, logger
from shared.retrieval.locate import Batch, Entity, batch_request, plan_batches
from shared.retrieval.model import CANCEL, MOVE_DESTINATION_UNKNOWN, SUCCESS, RetrieveOutcome, RetrieveProgress
from shared.spanning.ports import SourceError

# Looks the given SOP Instance UIDs of a batch's entities up (IMAGE-level entities with their holders); None when
# they cannot be located.
InstanceFinder = Callable[[Batch, Sequence[str]], "list[Entity] | None"]


@dataclass(frozen=True)
class MoveAttempt:
    """What one holder did with one batch: its final outcome (None when it could not be reached or asked), its
    last pending counts and the error it raised."""

    holder: str
    outcome: RetrieveOutcome | None
    last: RetrieveProgress
    error: str | None = None

    @property
    def failed(self) -> bool:
        """The holder failed the batch: no answer, or a final failure status with nothing completed."""
        if self.outcome is None:
            return True
        done = self.outcome.completed + self.outcome.warning
        return self.outcome.status not in (SUCCESS, CANCEL) and done == 0

    @property
    def clean(self) -> bool:
        """Everything the holder had was delivered (no failed sub-operation)."""
        return not self.failed and self.outcome is not None and self.outcome.failed == 0

    @property
    def reason(self) -> str:
        if self.outcome is None:
            return self.error or "no outcome"
        return f"status 0x{self.outcome.status:04X}" + (f" {self.outcome.error_comment}"
                                                         if self.outcome.error_comment else "")


def move_batch(job: Job, holders: Holders, batch: Batch,
               destination_ae: str) -> Generator[RetrieveProgress, None, MoveAttempt]:
    """C-MOVE one batch from its holder to `destination_ae`, relaying its pending counts on top of the job's."""
    last = RetrieveProgress(remaining=None)
    try:
        stream = holders.retrieve_port.move(holders.sources[batch.holder], batch_request(batch, job.request),
                                            destination_ae, job.token)
        try:
            while True:
                try:
                    last = next(stream)
                except StopIteration as stop:
                    return MoveAttempt(batch.holder, stop.value, last)
                yield job.tally.progress(job.expected, last)
        finally:
            stream.close()
    except Exception as exc:  # a holder's failure must not end the job: the next holder may have the entities
        if not isinstance(exc, SourceError):
            logger.exception("retrieve port raised", extra={"event": "retrieve_port_error", **job.fields()})
        return MoveAttempt(batch.holder, None, last, f"{type(exc).__name__}: {exc}")


def commit(job: Job, attempt: MoveAttempt) -> None:
    """Count a holder's final outcome as the job's."""
    outcome = attempt.outcome
    if outcome is not None:
        job.tally.add(outcome.completed, outcome.failed, outcome.warning, outcome.failed_uids)


def lose(job: Job, entities: Sequence[Entity], attempt: MoveAttempt | None = None) -> None:
    """Entities no holder delivered: their expected instances (1 when unknown) failed. With the attempt that lost a
    whole batch, what it had completed before failing did arrive and counts as completed."""
    if not entities:
        return
    done = warning = 0
    uids = image_uids(entities)
    if attempt is not None:
        done, warning = attempt.last.completed, attempt.last.warning
        uids += list(attempt.outcome.failed_uids) if attempt.outcome else []
    expected = sum(entity.expected if entity.expected is not None else 1 for entity in entities)
    job.tally.add(completed=done, warning=warning, failed=max(expected - done - warning, 0), failed_uids=tuple(uids))
    job.note("no holder left for some entities")


def run_direct(job: Job, holders: Holders, entities: Sequence[Entity],
               destination_ae: str) -> Generator[RetrieveProgress, None, None]:
    """DIRECT: per batch of entities by best holder, C-MOVE to the caller's destination; a failed holder's entities
    (PS3.4 C.4.2.1.5 failure with nothing completed, or unreachable) go to their next holder. When a holder failed
    after completing some sub-operations (an aborted association), its counts are dropped and the next holder sends
    the whole batch again (which instances arrived is not known)."""
    chain = HolderChain(holders.can_direct)
    pending = list(entities)
    while pending and not job.token.cancelled:
        batches, orphans = plan_batches(pending, chain.next_for)
        lose(job, orphans)
        pending = []
        for batch in batches:
            if job.token.cancelled:
                break
            attempt = yield from move_batch(job, holders, batch, destination_ae)
            chain.tried(batch)
            if not attempt.failed or job.token.cancelled:
                commit(job, attempt)
                continue
            log_holder_failed(job, batch, attempt.reason)
            retry, gone = chain.split(batch.entities)
            lose(job, gone, attempt if not retry else None)
            pending += retry


def run_hybrid_direct(job: Job, holders: Holders, entities: Sequence[Entity], destination_ae: str,
                      find_instances: InstanceFinder) -> Generator[RetrieveProgress, None, tuple[list[Entity], set]]:
    """HYBRID's first phase: DIRECT from each batch's best holder. Returns what PROXY must still deliver and the
    holders not to try again (unreachable ones). A holder answering 0xA801 (it does not know the destination) or
    failing leaves its whole batch to PROXY; one that failed some sub-operations and listed them (Failed SOP
    Instance UID List, PS3.4 C.4.2.1.6) leaves just those instances."""
    batches, no_direct = plan_batches(entities, HolderChain(holders.can_direct).next_for)
    to_proxy, unreachable = list(no_direct), set()
    for batch in batches:
        if job.token.cancelled:
            break
        attempt = yield from move_batch(job, holders, batch, destination_ae)
        if attempt.clean or job.token.cancelled:
            commit(job, attempt)
            continue
        unknown = attempt.outcome is not None and attempt.outcome.status == MOVE_DESTINATION_UNKNOWN
        log_holder_failed(job, batch, attempt.reason, next_step="proxy", destination_unknown=unknown)
        if attempt.error is not None:
            unreachable.add(batch.holder)
        to_proxy += missing_after(job, batch, attempt, find_instances)
    return to_proxy, unreachable


def missing_after(job: Job, batch: Batch, attempt: MoveAttempt, find_instances: InstanceFinder) -> list[Entity]:
    """What PROXY must deliver after a DIRECT attempt that was not clean. When the holder completed some
    sub-operations and listed the failed SOP Instance UIDs, only those instances (located at IMAGE level); their
    holder's completed/warning counts stand. Otherwise — the holder did not say which instances failed, or they
    cannot be located — the whole batch goes through PROXY and the direct counts are dropped: instances already
    delivered are sent again (a destination normally accepts an instance it already holds once more)."""
    outcome = attempt.outcome
    if outcome is None or attempt.failed or not outcome.failed_uids:
        return list(batch.entities)
    instances = find_instances(batch, outcome.failed_uids)
    if instances is None:
        return list(batch.entities)
    found = {entity.uid for entity in instances}
    unknown = tuple(uid for uid in outcome.failed_uids if uid not in found)
    job.tally.add(completed=outcome.completed, warning=outcome.warning, failed=len(unknown), failed_uids=unknown)
    if unknown:
        job.note("failed instances not found by locate")
    return instances
