"""A schemathesis run over the whole main API: every operation of the OpenAPI schema (read from the app itself, so
routes added later are covered without editing this file) is called with generated valid (positive) and invalid
(negative) requests, as an admin, in-process through schemathesis's ASGI transport. No answer may be a 5xx and no
request may raise.

The world is a migrated database with an admin (SQLite, and PostgreSQL when it is reachable: it refuses text
SQLite stores, e.g. NUL), a spanner config whose sources are two running PACS
simulators (A over DIMSE, B over QIDO-RS) so QIDO calls run real spans, and a fake Google issuer so
/api/v1/auth/google verifies against a live JWKS. Every source is alive and the JWKS is served: a 502 (failed
span) or a 503 (keys or database unavailable) would be a bug here, so every 5xx counts.

Bounded and reproducible: MAX_EXAMPLES per operation and mode, Hypothesis derandomized (a fixed seed derived from
each test), no example database, no shrinking. Read operations run before writes, so the spans are made on the
pristine configuration before generated writes change it.
"""

from __future__ import annotations

import os
import time
import traceback

import pytest
import schemathesis
from hypothesis import HealthCheck, Phase, given, settings
from hypothesis.errors import Unsatisfiable
from schemathesis import GenerationMode

from services.api.app import create_app
from services.pacs_sim import PacsSimulator, overlapping_catalogs
from shared.db.models import Role
from shared.db.session import make_engine, make_sessionmaker
from shared.security import api_keys
from shared.security.users import create_user
from tests.fakes.google_issuer import CLIENT_ID, FakeGoogleIssuer
from tests.integration.api_fixtures import CHEAP, PASSWORDS, api_settings, database_with_users, provision
from tests.peers import require
from tests.peers.services import PostgresDatabase, postgres_problem

# Per operation and generation mode; AXIOM_SCHEMATHESIS_EXAMPLES=50 digs deeper (minutes, not for the default run).
MAX_EXAMPLES = int(os.environ.get("AXIOM_SCHEMATHESIS_EXAMPLES", "5"))
REQUEST_TIMEOUT = 30  # seconds; a hung request is reported like a server error
WRITES_LAST = {"GET": 0, "POST": 1, "PUT": 1, "PATCH": 1, "DELETE": 2}
FUZZ_SETTINGS = settings(max_examples=MAX_EXAMPLES, derandomize=True, database=None, deadline=None,
                         phases=[Phase.explicit, Phase.generate], suppress_health_check=list(HealthCheck))


@pytest.fixture(scope="module", params=["sqlite", "postgresql"])
def database(request, tmp_path_factory, monkeypatch_module):
    """(url, session factory) of a migrated database with the admin `root`: SQLite, then PostgreSQL."""
    monkeypatch_module.setattr(api_keys, "default_hasher", lambda: CHEAP)
    if request.param == "sqlite":
        url, engine, factory = database_with_users(tmp_path_factory.mktemp("schemathesis"))
        yield url, factory
        engine.dispose()
        return
    problem = postgres_problem()
    require(problem is None, problem or "")
    postgres = PostgresDatabase("axiom_schemathesis")
    try:
        engine = make_engine(postgres.create())
        factory = make_sessionmaker(engine)
        with factory.begin() as session:
            create_user(session, username="root", password=PASSWORDS["root"], role=Role.ADMIN, hasher=CHEAP)
        yield postgres.url, factory
        engine.dispose()
    finally:
        postgres.drop()


@pytest.fixture(scope="module")
def world(database):
    """The app on `database` with the simulators and the fake Google issuer configured."""
    url, factory = database
    catalogs = overlapping_catalogs(11, ["A", "B"], studies=4, patients=2, series_per_study=(1, 2),
                                    instances_per_series=(1, 2))
    with PacsSimulator("A", "PACS_A", catalogs["A"]) as a, \
            PacsSimulator("B", "PACS_B", catalogs["B"], http_port=0) as b, FakeGoogleIssuer() as issuer:
        sources = {"A": ("dimse", {"ae_title": "PACS_A", "host": "127.0.0.1", "port": a.dimse_port}),
                   "B": ("dicomweb", {"base_url": b.http_url})}
        provision(factory, sources=sources, configs={"sims": (["A", "B"], {})})
        app = create_app(api_settings(url, AXIOM_GOOGLE_CLIENT_ID=CLIENT_ID, AXIOM_GOOGLE_CERTS_URL=issuer.certs_url),
                         session_factory=factory)
        try:
            yield app
        finally:  # schemathesis keeps an app's lifespan (background runners) open until told, or until exit
            schemathesis.python.asgi.shutdown_lifespans()


@pytest.fixture(scope="module")
def monkeypatch_module():
    with pytest.MonkeyPatch.context() as patch:
        yield patch


def admin_header(app) -> dict[str, str]:
    with schemathesis.python.asgi.get_client(app) as client:
        answer = client.post("/api/v1/auth/token", data={"username": "root", "password": PASSWORDS["root"]})
    assert answer.status_code == 200, answer.text
    return {"Authorization": f"Bearer {answer.json()['access_token']}"}


def fuzz_operation(operation, mode: GenerationMode, headers: dict[str, str], failures: list[str]) -> int:
    """Run MAX_EXAMPLES generated requests of `operation` in `mode`; append a line per 5xx or exception."""
    calls = 0

    @FUZZ_SETTINGS
    @given(case=operation.as_strategy(generation_mode=mode))
    def run(case) -> None:
        nonlocal calls
        calls += 1
        try:
            response = case.call(headers=headers, timeout=REQUEST_TIMEOUT)
        except Exception as exc:  # an unhandled exception in the app (500) or a hung request
            failures.append(f"{operation.label} [{mode}] raised {type(exc).__name__}: {exc}\n"
                            f"  reproduce: {case.as_curl_command(headers=headers)}\n"
                            + "".join(traceback.format_exception(exc)[-4:]))
            return
        if response.status_code >= 500:
            failures.append(f"{operation.label} [{mode}] answered {response.status_code}: {response.text[:300]}\n"
                            f"  reproduce: {case.as_curl_command(headers=headers)}")

    try:
        run()
    except Unsatisfiable:  # nothing in the operation can be made invalid (e.g. GET /health has no parameters)
        if mode is GenerationMode.POSITIVE:
            raise
    return calls


def modes_for(operation) -> tuple[GenerationMode, ...]:
    """Both modes, but only POSITIVE for an operation without path, query or body parameters: there is nothing to
    make invalid but the credential headers, and searching for such cases costs seconds."""
    has_input = any(len(part) for part in (operation.path_parameters, operation.query, operation.body))
    return (GenerationMode.POSITIVE, GenerationMode.NEGATIVE) if has_input else (GenerationMode.POSITIVE,)


def test_no_operation_answers_a_server_error(world):
    headers = admin_header(world)
    schema = schemathesis.openapi.from_asgi("/api/v1/openapi.json", world, headers=headers)
    operations = [result.ok() for result in schema.get_all_operations()]
    assert len(operations) >= 20, [op.label for op in operations]  # the schema was really read
    operations.sort(key=lambda op: (WRITES_LAST.get(op.method.upper(), 1), op.path))
    failures: list[str] = []
    started, calls = time.monotonic(), 0
    for operation in operations:
        for mode in modes_for(operation):
            calls += fuzz_operation(operation, mode, headers, failures)
    elapsed = time.monotonic() - started
    assert calls >= len(operations) * MAX_EXAMPLES, "every operation was called"
    summary = f"{len(failures)} server errors in {calls} calls ({elapsed:.0f} s):\n\n"
    assert not failures, summary + "\n\n".join(failures)
