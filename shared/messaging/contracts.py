"""Task contracts of the distributed mode: queue names, task names and which worker type consumes what.

Tasks take ids, never objects (ARCHITECTURE.md), and are idempotent: a redelivered message (a worker killed
mid-task, a broker connection dropped before the ack) must do no harm when it runs again.

Spanning flow (shared.distributed):
    coordinator --PLAN_SPAN(query_id)--> spanning_queries
    planner --QUERY_SOURCE(query_id, source)--> dimse_tasks        (one per source, at most max_concurrent at once)
    source worker --SOURCE_FINISHED(query_id, source)--> results_aggregation
    planner --FINALIZE_SPAN(query_id) with an ETA at the deadline--> results_aggregation
"""

from __future__ import annotations

SPANNING_QUERIES = "spanning_queries"
DIMSE_TASKS = "dimse_tasks"
RESULTS_AGGREGATION = "results_aggregation"
ALL_QUEUES = (SPANNING_QUERIES, DIMSE_TASKS, RESULTS_AGGREGATION)

PLAN_SPAN = "axiom.spanning.plan_span"  # args: (query_id,)
QUERY_SOURCE = "axiom.spanning.query_source"  # args: (query_id, source_name)
SOURCE_FINISHED = "axiom.spanning.source_finished"  # args: (query_id, source_name)
FINALIZE_SPAN = "axiom.spanning.finalize_span"  # args: (query_id,)

TASK_QUEUES = {
    PLAN_SPAN: SPANNING_QUERIES,
    QUERY_SOURCE: DIMSE_TASKS,
    SOURCE_FINISHED: RESULTS_AGGREGATION,
    FINALIZE_SPAN: RESULTS_AGGREGATION,
}

# WORKER_TYPE -> the queues such a worker consumes. `dimse-query` workers talk to the archives and are the ones to
# scale out; `aggregation` workers plan and merge (light, database- and Redis-bound); `all` is one worker for all.
WORKER_QUEUES: dict[str, tuple[str, ...]] = {
    "dimse-query": (DIMSE_TASKS,),
    "aggregation": (SPANNING_QUERIES, RESULTS_AGGREGATION),
    "all": ALL_QUEUES,
}


def queues_for_worker(worker_type: str) -> tuple[str, ...]:
    """The queues a worker of `worker_type` consumes; ValueError naming the known types otherwise."""
    try:
        return WORKER_QUEUES[worker_type]
    except KeyError:
        raise ValueError(f"WORKER_TYPE {worker_type!r} is not one of {', '.join(sorted(WORKER_QUEUES))}") from None
