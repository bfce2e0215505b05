"""`axiom demo --serve`: after the demo's spans, keep the embedded stack up so a user can try it with real clients.

In this process, on the demo's SQLite database and span client, with the demo's three archives still running:
the spanning DIMSE SCP (services.listener, AE AXIOM_DEMO on --scp-port, 11114), the main API (services.api on
--api-port, 8001: QIDO-RS/WADO-RS spanning) and the spanner coordinator in its embedded mode
(services.spanner_coordinator.embedded on --coordinator-port, 8002: POST/GET/DELETE /spanning-query, spans run in
this process). A demo administrator `demo-admin` gets a fresh random password, printed once; the API and the
coordinator share one random SECRET_KEY, so the API's access tokens work on both. Ctrl-C or SIGTERM stops
everything cleanly.
"""

from __future__ import annotations

import logging
import secrets
import signal
import socket
import threading
import time

import uvicorn
from rich.console import Console
from rich.markup import escape

from pydantic import SecretStr

from services.api.app import create_app
from services.listener.app import Listener
from services.spanner_coordinator.app import create_app as create_coordinator
from shared.config import get_settings
from shared.db.repo import users as user_repo
from shared.db.session import session_scope
from shared.logging import log_event
from shared.security.users import create_user, set_user_password

logger = logging.getLogger(__name__)
DEMO_ADMIN = "demo-admin"
DEMO_AE = "AXIOM_DEMO"
STARTUP_SECONDS = 20.0


def demo_admin_password(session_factory) -> str:
    """A new random password for the `demo-admin` administrator (created on first use)."""
    password = secrets.token_urlsafe(15)
    with session_scope(session_factory) as session:
        if user_repo.get_user(session, username=DEMO_ADMIN) is None:
            create_user(session, username=DEMO_ADMIN, password=password, role="admin")
        else:
            set_user_password(session, username=DEMO_ADMIN, password=password)
    return password


def check_ports_free(host: str, *ports: int) -> None:
    """OSError naming the option whose port is taken (checked before the demo runs, so it fails fast)."""
    for option, port in zip(("--api-port", "--scp-port", "--coordinator-port"), ports):
        if port == 0:
            continue
        with socket.socket() as sock:
            try:
                sock.bind((host, port))
            except OSError as exc:
                raise OSError(f"{option} {port}: cannot listen on {host}:{port}: {exc.strerror}") from None


def start_api(session_factory, span_client, host: str, port: int, secret: str
              ) -> tuple[uvicorn.Server, threading.Thread]:
    """The main API under uvicorn in a thread, sharing the demo's database and span client; returns once it
    listens (OSError when it cannot)."""
    settings = get_settings().model_copy(deep=True)
    settings.api.host, settings.api.port, settings.api.secret_key = host, port, SecretStr(secret)
    app = create_app(settings, session_factory=session_factory)
    app.state.span_client = span_client  # the lifespan keeps a client it finds
    return _start_server(app, "API", host, port)


def start_coordinator(session_factory, host: str, port: int, secret: str) -> tuple[uvicorn.Server, threading.Thread]:
    """The spanner coordinator, embedded (spans in this process, on the demo's database), under uvicorn in a
    thread; returns once it listens (OSError when it cannot)."""
    settings = get_settings().model_copy(deep=True)
    settings.coordinator.host, settings.coordinator.port = host, port
    settings.coordinator.secret_key = SecretStr(secret)
    app = create_coordinator(settings, session_factory=session_factory, embedded=True)
    return _start_server(app, "spanner coordinator", host, port)


def _start_server(app, name: str, host: str, port: int) -> tuple[uvicorn.Server, threading.Thread]:
    server = uvicorn.Server(uvicorn.Config(app, host=host, port=port, log_config=None, access_log=False,
                                           lifespan="on"))
    # uvicorn takes no signal handlers outside the main thread: the demo owns SIGINT/SIGTERM
    thread = threading.Thread(target=server.run, name=f"demo-{name.replace(' ', '-')}", daemon=True)
    thread.start()
    deadline = time.monotonic() + STARTUP_SECONDS
    while not server.started:
        if not thread.is_alive() or time.monotonic() > deadline:
            server.should_exit = True
            raise OSError(f"the {name} could not start on {host}:{port} (port in use?)")
        time.sleep(0.05)
    return server, thread


def serve(console: Console, session_factory, span_client, patient_id: str, *, host: str, api_port: int,
          scp_port: int, coordinator_port: int) -> None:
    """Run the SCP, the API and the coordinator until SIGINT/SIGTERM, after printing how to use them."""
    settings = get_settings().model_copy(deep=True)
    settings.scp.host, settings.scp.port = host, scp_port
    password = demo_admin_password(session_factory)
    secret = secrets.token_urlsafe(48)  # this run's SECRET_KEY, shared by the API and the coordinator
    stop = threading.Event()
    previous = {sig: signal.signal(sig, lambda *_: stop.set()) for sig in (signal.SIGINT, signal.SIGTERM)}
    servers: list[tuple[uvicorn.Server, threading.Thread]] = []
    try:
        with Listener(settings, session_factory=session_factory, span_client=span_client) as listener:
            try:
                servers.append(start_api(session_factory, span_client, host, api_port, secret))
                servers.append(start_coordinator(session_factory, host, coordinator_port, secret))
                log_event(logger, "demo_serving", api_port=api_port, scp_port=listener.port,
                          coordinator_port=coordinator_port)
                print_usage(console, host, (api_port, listener.port, coordinator_port), password, patient_id)
                stop.wait()
                console.print("stopping: coordinator, API, SCP, archives")
            finally:
                for server, _ in reversed(servers):
                    server.should_exit = True
                for _, thread in reversed(servers):
                    thread.join(timeout=15)
    finally:
        for sig, handler in previous.items():
            signal.signal(sig, handler)


def print_usage(console: Console, host: str, ports: tuple[int, int, int], password: str, patient_id: str) -> None:
    api_port, scp_port, coordinator_port = ports
    api, coordinator = f"http://{host}:{api_port}", f"http://{host}:{coordinator_port}"
    lines = [
        f"[bold]Serving[/bold]: spanning SCP {DEMO_AE}@{host}:{scp_port}, API {api}, coordinator {coordinator}",
        f"  admin user {DEMO_ADMIN}, password (shown once): {password}",
        "",
        "  # DIMSE (DCMTK):",
        f"  findscu -S -aec {DEMO_AE} -k QueryRetrieveLevel=STUDY -k PatientID={patient_id} -k StudyInstanceUID "
        f"-k StudyDescription {host} {scp_port}",
        "  # HTTP (curl + jq):",
        f"  TOKEN=$(curl -s -X POST {api}/api/v1/auth/token -d username={DEMO_ADMIN} "
        f"--data-urlencode 'password={password}' | jq -r .access_token)",
        f"  curl -H \"Authorization: Bearer $TOKEN\" '{api}/api/v1/spanner/qido/studies?PatientID={patient_id}'",
        "  # spanner coordinator (embedded): submit, then long-poll the Location it answers",
        f"  QUERY=$(curl -s -X POST -H \"Authorization: Bearer $TOKEN\" -H 'Content-Type: application/json' "
        f"'{coordinator}/spanning-query?spanner_config=demo' -d '{{\"PatientID\": \"{patient_id}\", "
        f"\"StudyInstanceUID\": \"\"}}' | jq -r .status_url)",
        f"  curl -H \"Authorization: Bearer $TOKEN\" \"{coordinator}$QUERY?wait=10\"",
        "  # Python (dicomweb-client):",
        f"  DICOMwebClient(url='{api}/api/v1/spanner', qido_url_prefix='qido', wado_url_prefix='wado',",
        f"                 headers={{'Authorization': f'Bearer {{token}}'}}).search_for_studies("
        f"search_filters={{'PatientID': '{patient_id}'}})",
        "",
        "Ctrl-C to stop.",
    ]
    for line in lines:
        console.print(line if line.startswith("[bold]") else escape(line), soft_wrap=True, highlight=False)
