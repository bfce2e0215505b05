"""The distributed mode of spanning: span state in Redis, steps as Celery tasks, results kept in PostgreSQL."""
