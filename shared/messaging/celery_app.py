"""The Celery application factory: every process of the distributed mode builds its app here (no global app).

Delivery guarantees (what "no accepted query is lost" rests on):
* durable queues and persistent messages, published with RabbitMQ publisher confirms (`confirm_publish`), and
  publishing retried on a dropped connection;
* `task_acks_late` + `task_reject_on_worker_lost`: a message is acknowledged only after its task ran, so a worker
  killed mid-task (kill -9, OOM) or a dropped connection gets the message redelivered to another worker;
* `worker_prefetch_multiplier=1`: a worker reserves no more messages than it has execution slots, so a slow task
  never holds others hostage; tasks are idempotent (shared.messaging.contracts).
Results are not stored by Celery (no result backend): spans keep their state in Redis and PostgreSQL.
"""

from __future__ import annotations

from typing import Any, Sequence

from celery import Celery
from kombu import Exchange, Queue

from shared.config import Settings
from shared.messaging.contracts import ALL_QUEUES, TASK_QUEUES

PUBLISH_RETRY_POLICY = {"max_retries": 6, "interval_start": 0, "interval_step": 0.5, "interval_max": 2.0}  # ~7 s


def create_celery_app(settings: Settings, *, name: str = "axiom") -> Celery:
    """A Celery app on RABBITMQ_URL with Axiom's queues, routes and delivery settings (module doc).

    ValueError when RABBITMQ_URL is not set.
    """
    broker_url = settings.distributed.rabbitmq_url
    if not broker_url:
        raise ValueError("RABBITMQ_URL is not set (e.g. amqp://guest:guest@rabbitmq:5672//)")
    app = Celery(name, broker=broker_url, set_as_current=False)
    app.conf.update(
        task_serializer="json",
        accept_content=["json"],
        result_serializer="json",
        task_ignore_result=True,
        result_backend=None,
        task_acks_late=True,
        task_reject_on_worker_lost=True,
        worker_prefetch_multiplier=1,
        task_queues=[Queue(queue, Exchange(queue, type="direct", durable=True), routing_key=queue, durable=True)
                     for queue in ALL_QUEUES],
        task_routes={task: {"queue": queue, "routing_key": queue} for task, queue in TASK_QUEUES.items()},
        task_default_queue=ALL_QUEUES[0],
        task_default_delivery_mode="persistent",
        task_publish_retry=True,
        task_publish_retry_policy=PUBLISH_RETRY_POLICY,
        broker_transport_options={"confirm_publish": True},
        broker_connection_retry_on_startup=True,
        broker_connection_max_retries=None,
        broker_heartbeat=30,
        # Workers run the threads pool (services.worker). After a broker reconnect Celery lowers the prefetch count
        # and restores it with a synchronous basic.qos sent from whichever thread acknowledges a task: a pool thread
        # then reads the consumer connection while the event loop reads it too, frames interleave (UnexpectedFrame),
        # the consumer reconnects again and deliveries are lost, so the worker sits idle with unacked messages.
        worker_enable_prefetch_count_reduction=False,
        worker_hijack_root_logger=False,
        worker_redirect_stdouts=False,
        worker_send_task_events=False,
        enable_utc=True,
    )
    return app


def publish(app: Celery, task_name: str, args: Sequence[Any], *, countdown: float | None = None) -> None:
    """Send task `task_name` to its queue (shared.messaging.contracts.TASK_QUEUES), confirmed by the broker.

    Raises the broker's error when it stays unreachable through the retry policy.
    """
    queue = TASK_QUEUES[task_name]
    app.send_task(task_name, args=list(args), queue=queue, routing_key=queue, countdown=countdown,
                  retry=True, retry_policy=PUBLISH_RETRY_POLICY)
