"""Messaging: the Celery application factory and the task contracts (names, queues, payloads) services share."""
