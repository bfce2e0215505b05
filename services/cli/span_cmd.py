"""`axiom span submit|status|wait|cancel`: the command-line client of the spanner coordinator's HTTP API.

The coordinator (services/spanner_coordinator) runs a spanning query in the background: POST /spanning-query
accepts it (202 + query id), GET /spanning-query/{id} reports its state and a page of DICOM JSON results
(PS3.18 F), optionally long-polling with `wait=SECONDS`, and DELETE cancels it. Every route needs an API key
(`axiom apikey create`), sent as `X-API-Key`; it is never printed.

Exit codes: 0 completed or partial (and, for `status`, accepted or running), 1 failed or cancelled, 2 a user or
HTTP error (one line on stderr), 3 `--timeout` ran out before the query finished (it keeps running server-side).
"""

from __future__ import annotations

import time
import uuid
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from typing import Annotated, Any, Optional

import httpx
import typer
from rich.markup import escape

from services.cli.errors import display_url, err_console, user_errors
from services.cli.span_render import ACTIVE, CoordinatorError, SUCCEEDED, SpanProgress, console, print_json, show_state

DEFAULT_URL = "http://localhost:8002"
DEFAULT_LIMIT = 100
CONNECT_TIMEOUT = 5.0  # seconds to open a connection
REQUEST_TIMEOUT = 30.0  # seconds for an answer; a long-poll adds its `wait` on top
LONG_POLL_SECONDS = 2  # `wait=` each poll of `axiom span wait` asks for (1..2 s keeps the display live)
POLL_INTERVAL_SECONDS = 0.5  # least time between polls, should a server answer a long-poll at once (tests: 0)
EXIT_TIMEOUT = 3


span_app = typer.Typer(help="Spanning queries on the coordinator service: submit, status, wait, cancel.",
                       no_args_is_help=True)

UrlOption = Annotated[str, typer.Option("--url", envvar="AXIOM_COORDINATOR_URL", help="the coordinator's base URL")]
KeyOption = Annotated[Optional[str], typer.Option(
    "--api-key", envvar="AXIOM_API_KEY", show_default=False, help="API key (axiom apikey create); required")]
JsonOption = Annotated[bool, typer.Option("--json", help="print the coordinator's JSON instead of tables")]
TimeoutOption = Annotated[Optional[float], typer.Option(
    "--timeout", min=0, help="stop waiting after this many seconds (exit 3; the query keeps running)")]


def make_client(url: str, api_key: str, *, transport: httpx.BaseTransport | None = None) -> httpx.Client:
    """The one place an httpx client for the coordinator is built (tests pass a MockTransport)."""
    return httpx.Client(base_url=url, headers={"X-API-Key": api_key}, transport=transport,
                        timeout=httpx.Timeout(REQUEST_TIMEOUT, connect=CONNECT_TIMEOUT))


def parse_keys(keys: list[str]) -> dict[str, str]:
    """`-k Keyword=Value` options -> the JSON body; `-k Keyword` (no `=`) is a return key, sent as ""."""
    body: dict[str, str] = {}
    for text in keys:
        keyword, _, value = text.partition("=")
        keyword = keyword.strip()
        if not keyword:
            raise ValueError(f"-k {text!r}: give Keyword=Value, or Keyword alone for a return key")
        if keyword in body:
            raise ValueError(f"-k {keyword} is given twice")
        body[keyword] = value
    return body


def config_params(config: str) -> dict[str, str]:
    """--config: all digits is a spanner config id, anything else its name."""
    config = config.strip()
    if not config:
        raise ValueError("--config is empty: give a spanner config name or id")
    return {"spanner_config_id": config} if config.isdigit() else {"spanner_config": config}


def describe_detail(response: httpx.Response) -> str:
    """The server's `detail` as one line: a string as is, FastAPI's validation list as `loc: msg; ...`."""
    try:
        detail = response.json().get("detail")
    except (ValueError, AttributeError):
        detail = None
    if isinstance(detail, list):
        detail = "; ".join(_validation_error(item) for item in detail)
    if not detail:
        detail = response.text.strip()[:200] or response.reason_phrase
    return " ".join(str(detail).split())


def _validation_error(item: Any) -> str:
    """One FastAPI/pydantic error {"loc": [...], "msg": ...} as `field: msg` (the loc's body/query part dropped)."""
    if not isinstance(item, dict):
        return str(item)
    where = ".".join(str(part) for part in item.get("loc", ()) if part not in ("body", "query", "path"))
    return f"{where}: {item.get('msg', '')}" if where else str(item.get("msg", item))


class Coordinator:
    """The coordinator's three routes over one httpx client; errors become CoordinatorError."""

    def __init__(self, client: httpx.Client, url: str) -> None:
        self.client, self.where = client, f"the coordinator at {display_url(url)}"

    def submit(self, params: dict[str, str], body: dict[str, str]) -> dict:
        """POST /spanning-query -> the 202 body (query_id, status, status_url)."""
        return self._check(self.client.post("/spanning-query", params=params, json=body))

    def get(self, query_id: str, *, offset: int = 0, limit: int = DEFAULT_LIMIT, wait: int | None = None) -> dict:
        """GET /spanning-query/{id}: state and a page of results; `wait` long-polls up to that many seconds."""
        params: dict[str, int] = {"offset": offset, "limit": limit}
        timeout = httpx.USE_CLIENT_DEFAULT
        if wait is not None:
            params["wait"] = wait
            timeout = httpx.Timeout(REQUEST_TIMEOUT + wait, connect=CONNECT_TIMEOUT)
        return self._check(self.client.get(f"/spanning-query/{query_id}", params=params, timeout=timeout), query_id)

    def cancel(self, query_id: str) -> dict:
        """DELETE /spanning-query/{id} -> {query_id, status: cancelled, message}."""
        return self._check(self.client.delete(f"/spanning-query/{query_id}"), query_id)

    def _check(self, response: httpx.Response, query_id: str | None = None) -> dict:
        if response.status_code == 401:
            raise CoordinatorError(f"API key rejected by {self.where} (check --api-key / AXIOM_API_KEY): "
                                   f"{describe_detail(response)}")
        if response.status_code == 403:
            raise CoordinatorError(f"this API key's role may not do that: {describe_detail(response)}")
        if response.status_code == 404 and query_id:
            raise CoordinatorError(f"no such query {query_id} on {self.where}")
        if response.is_error:
            raise CoordinatorError(f"{describe_detail(response)} (HTTP {response.status_code})")
        try:
            data = response.json()
        except ValueError:  # not JSON at all
            data = None
        if not isinstance(data, dict):
            raise CoordinatorError(f"{self.where} answered HTTP {response.status_code} without a JSON object")
        return data


@contextmanager
def coordinator(url: str, api_key: str | None) -> Iterator[Coordinator]:
    """A Coordinator for the command; user and transport errors end it with one line and exit code 2."""
    with user_errors():
        if not api_key or not api_key.strip():
            raise ValueError("no API key: pass --api-key or set AXIOM_API_KEY (create one with `axiom apikey create`)")
        api_key = api_key.strip()
        if not api_key.isascii() or not api_key.isprintable():
            raise ValueError("the API key has characters an HTTP header cannot carry")
        if not url.lower().startswith(("http://", "https://")):
            raise ValueError("--url must start with http:// or https://")
        try:
            with make_client(url.rstrip("/"), api_key) as client:
                yield Coordinator(client, url)
        except httpx.TimeoutException:
            raise CoordinatorError(f"the coordinator at {display_url(url)} did not answer in time") from None
        except (httpx.TransportError, httpx.InvalidURL) as exc:
            reason = " ".join(str(exc).split()) or type(exc).__name__
            raise CoordinatorError(f"cannot reach the coordinator at {display_url(url)}: {reason}") from None


def check_query_id(text: str) -> str:
    """QUERY_ID as `submit` printed it: 32 hex digits (a dashed UUID is accepted too)."""
    try:
        return uuid.UUID(text.strip()).hex
    except ValueError:
        raise ValueError(f"QUERY_ID {text!r} is not a query id (32 hex digits, as `span submit` prints)") from None


def poll_until_finished(coord: Coordinator, query_id: str, *, timeout: float | None,
                        on_update: Callable[[dict], None] = lambda state: None) -> dict | None:
    """Long-poll GET (limit=0) until the query is no longer accepted/running; None if `timeout` s pass first."""
    deadline = None if timeout is None else time.monotonic() + timeout
    while True:
        started = time.monotonic()
        remaining = LONG_POLL_SECONDS if deadline is None else deadline - started
        state = coord.get(query_id, limit=0, wait=max(1, min(LONG_POLL_SECONDS, int(remaining))))
        on_update(state)
        if state.get("status") not in ACTIVE:
            return state
        now = time.monotonic()
        if deadline is not None and now >= deadline:
            return None
        pause = POLL_INTERVAL_SECONDS - (now - started)
        if pause > 0:
            time.sleep(pause if deadline is None else min(pause, deadline - now))


def wait_and_report(coord: Coordinator, query_id: str, *, timeout: float | None, as_json: bool) -> int:
    """`wait`: poll (with a live display unless --json), then print the final state; returns the exit code."""
    try:
        if as_json or not err_console.is_terminal:  # a display only where someone watches
            final = poll_until_finished(coord, query_id, timeout=timeout)
        else:
            live = SpanProgress(display=err_console)
            with live.progress:  # drawn on stderr, erased when done (transient)
                final = poll_until_finished(coord, query_id, timeout=timeout, on_update=live.update)
    except KeyboardInterrupt:
        err_console.print(f"stopped waiting; query {query_id} keeps running (`axiom span cancel {query_id}`)")
        return 130
    if final is None:
        err_console.print(f"[yellow]timeout:[/yellow] query {query_id} still running after {timeout:g} s; it keeps "
                          f"running on the coordinator (`axiom span status {query_id}`)", soft_wrap=True)
        return EXIT_TIMEOUT
    state = coord.get(query_id, offset=0, limit=DEFAULT_LIMIT)
    show_state(state, as_json=as_json)
    return 0 if state.get("status") in SUCCEEDED else 1


@span_app.command("submit")
def submit(
    config: Annotated[str, typer.Option("--config", "-c", help="spanner config: a name, or an id (all digits)")],
    key: Annotated[list[str], typer.Option("--key", "-k", help="Keyword=Value matching key, or Keyword alone "
                                           "as a return key (repeatable)")] = [],  # noqa: B006 - typer default
    level: Annotated[str, typer.Option("--level", "-L", help="PATIENT, STUDY, SERIES or IMAGE")] = "STUDY",
    query_type: Annotated[str, typer.Option("--type", help="C-FIND (what the coordinator supports)")] = "C-FIND",
    wait: Annotated[bool, typer.Option("--wait", "-w", help="then wait for it like `axiom span wait`")] = False,
    timeout: TimeoutOption = None,
    url: UrlOption = DEFAULT_URL,
    api_key: KeyOption = None,
    as_json: JsonOption = False,
) -> None:
    """Submit a spanning query and print its id (alone on stdout, for scripts), or with --wait its results."""
    with coordinator(url, api_key) as coord:
        if timeout is not None and not wait:
            raise ValueError("--timeout is how long --wait waits: add --wait (the query's own deadline comes from "
                             "its spanner config)")
        params = {**config_params(config), "query_type": query_type.strip().upper(),
                  "query_level": level.strip().upper()}
        accepted = coord.submit(params, parse_keys(key))
        query_id = accepted.get("query_id")
        if not isinstance(query_id, str) or not query_id:
            raise CoordinatorError("the coordinator accepted the query but sent no query_id")
        if not wait:
            if as_json:
                print_json(accepted)
            else:
                typer.echo(query_id)
            return
        code = wait_and_report(coord, query_id, timeout=timeout, as_json=as_json)
    raise typer.Exit(code)


@span_app.command("status")
def status(
    query_id: Annotated[str, typer.Argument(help="the id `axiom span submit` printed")],
    offset: Annotated[int, typer.Option("--offset", min=0, help="first result to show")] = 0,
    limit: Annotated[int, typer.Option("--limit", min=0, help="results to show")] = DEFAULT_LIMIT,
    url: UrlOption = DEFAULT_URL,
    api_key: KeyOption = None,
    as_json: JsonOption = False,
) -> None:
    """Show a query's current state, each source's status and a page of its results (one request)."""
    with coordinator(url, api_key) as coord:
        state = coord.get(check_query_id(query_id), offset=offset, limit=limit)
        show_state(state, as_json=as_json)
    raise typer.Exit(0 if state.get("status") in SUCCEEDED | ACTIVE else 1)  # failed, cancelled (or unknown): 1


@span_app.command("wait")
def wait_cmd(
    query_id: Annotated[str, typer.Argument(help="the id `axiom span submit` printed")],
    timeout: TimeoutOption = None,
    url: UrlOption = DEFAULT_URL,
    api_key: KeyOption = None,
    as_json: JsonOption = False,
) -> None:
    """Follow a query live, source by source, until it finishes; then show it like `status`."""
    with coordinator(url, api_key) as coord:
        code = wait_and_report(coord, check_query_id(query_id), timeout=timeout, as_json=as_json)
    raise typer.Exit(code)


@span_app.command("cancel")
def cancel(
    query_id: Annotated[str, typer.Argument(help="the id `axiom span submit` printed")],
    url: UrlOption = DEFAULT_URL,
    api_key: KeyOption = None,
    as_json: JsonOption = False,
) -> None:
    """Cancel a running query (an error if it had already finished)."""
    with coordinator(url, api_key) as coord:
        answer = coord.cancel(check_query_id(query_id))
    if as_json:
        print_json(answer)
    else:
        console.print(escape(str(answer.get("message") or f"query {answer.get('query_id')} cancelled")))


def register(app: typer.Typer) -> None:
    """Add the `span` command group to the `axiom` app."""
    app.add_typer(span_app, name="span")
