"""The spanner coordinator: `python -m services.spanner_coordinator`, POST/GET/DELETE /spanning-query, /health."""
