"""The main API (FastAPI): `create_app(settings)` in services.api.app, started by `python -m services.api`."""
