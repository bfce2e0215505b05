"""Celery workers: `python -m services.worker`, the queues chosen by WORKER_TYPE (shared.messaging.contracts)."""
