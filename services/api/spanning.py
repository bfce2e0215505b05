"""What the DICOMweb spanning routes (QIDO-RS routes/qido.py, WADO-RS routes/wado.py) share: the choice of the
spanner config a request runs on, the client network allowlist, the span client's lifespan, the requester written
to the query log and Warning headers.

Config choice: `spanner_config_id`, or else the only enabled config that offers the service (supports_qido for
QIDO-RS, supports_wado for WADO-RS); 400 naming `spanner_config_id` when there are none or several, or when it is
not an integer. Unknown id 404; a disabled config, or one that does not offer the service, 400. A client whose
address is outside the config's `allowed_client_networks` (CIDR; empty = anyone) gets 403.
"""

from __future__ import annotations

from contextlib import asynccontextmanager
from typing import NoReturn

from fastapi import FastAPI, HTTPException, Request, status
from fastapi.concurrency import run_in_threadpool

from shared.adapters.google_auth import google_healthcare_access
from shared.adapters.query_ports import build_query_ports
from shared.db.repo.spanner_configs import SpanPlan, list_spanner_configs, load_span_plan
from shared.security.networks import address_allowed
from shared.span_client import InProcessSpanClient

CONFIG_PARAMETER = "spanner_config_id"
QIDO = ("supports_qido", "QIDO-RS")  # (config capability column, service name)
WADO = ("supports_wado", "WADO-RS")


@asynccontextmanager
async def span_client_lifespan(app: FastAPI):
    """Give the app a span client for its life unless it has one already (e.g. a distributed client); its query
    ports reach Google Cloud Healthcare sources with the app's settings (AXIOM_GOOGLE_HEALTHCARE_URL, ADC)."""
    owned = None
    if getattr(app.state, "span_client", None) is None:
        google = google_healthcare_access(app.state.settings)
        owned = app.state.span_client = InProcessSpanClient(
            session_factory=app.state.session_factory, ports_factory=lambda: build_query_ports(google=google))
    try:
        yield
    finally:
        if owned is not None:
            app.state.span_client = None
            await run_in_threadpool(owned.close)


def span_plan(request: Request, service: tuple[str, str] = QIDO) -> SpanPlan:
    """The plan of the requested (or the default) config for `service` (QIDO or WADO); 400/404/403 as the module
    doc says."""
    given = request.query_params.getlist(CONFIG_PARAMETER)
    capability, name = service
    if len(given) > 1:
        bad_config(f"{CONFIG_PARAMETER} is given more than once")
    with request.app.state.session_factory() as session:
        config_id = _config_id(session, given[0] if given else None, service)
        try:
            plan = load_span_plan(session, config_id=config_id)
        except LookupError:
            raise HTTPException(status.HTTP_404_NOT_FOUND, f"no spanner config with id {config_id}") from None
        except ValueError as exc:
            bad_config(f"{CONFIG_PARAMETER}={config_id}: {exc}")
    if not getattr(plan.config, capability):
        bad_config(f"{CONFIG_PARAMETER}={config_id}: spanner config {plan.config.name!r} does not serve {name} "
                   f"({capability} is false)")
    address = client_address(request)
    if not address_allowed(address, plan.config.allowed_client_networks):
        raise HTTPException(status.HTTP_403_FORBIDDEN, f"client address {address} is not in the allowed networks "
                                                       f"of spanner config {plan.config.name!r}")
    return plan


def _config_id(session, given: str | None, service: tuple[str, str]) -> int:
    if given is not None:
        if not given.strip().isdigit():
            bad_config(f"{CONFIG_PARAMETER} must be a spanner config id (an integer), got {given!r}")
        return int(given)
    capability, name = service
    serving = [c for c in list_spanner_configs(session, enabled_only=True) if getattr(c, capability)]
    if len(serving) == 1:
        return serving[0].id
    which = ", ".join(f"{c.id} ({c.name})" for c in serving) or f"none is enabled with {capability}"
    bad_config(f"give {CONFIG_PARAMETER}: no single default spanner config serves {name} ({which})")


def bad_config(message: str) -> NoReturn:
    raise HTTPException(status.HTTP_400_BAD_REQUEST, message)


def client_address(request: Request) -> str | None:
    return request.client.host if request.client else None


def requester(request: Request, user: str) -> dict[str, str | None]:
    """Who asked, as the query log records it."""
    return {"user": user, "address": client_address(request)}


def warning_header(text: str) -> str:
    """A Warning header value (RFC 7234 5.5): code 299, agent "axiom", a quoted ASCII text."""
    clean = "".join(c if 0x20 <= ord(c) < 0x7F and c not in '"\\' else "'" if c == '"' else "?" for c in text)
    return f'299 axiom "{clean[:300]}"'
