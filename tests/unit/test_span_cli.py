"""`axiom span submit|status|wait|cancel` against an in-test fake coordinator (httpx.MockTransport)."""

from __future__ import annotations

import io
import json
import socket

import httpx
import pytest
import typer
from rich.console import Console
from typer.testing import CliRunner

from services.cli import span_cmd

QID = "0123456789abcdef0123456789abcdef"
KEY = "axk_secret_key_value"


def source(name: str, status: str, matches: int = 0, latency: float | None = None, error: str | None = None) -> dict:
    return {"source": name, "status": status, "match_count": matches, "latency_ms": latency, "retries": 0,
            "error": error, "truncated": False}


def study(patient: str, uid: str, aet: str) -> dict:
    return {
        "00100010": {"vr": "PN", "Value": [{"Alphabetic": patient}]},
        "00100020": {"vr": "LO", "Value": ["12345"]},
        "00080020": {"vr": "DA", "Value": ["20240315"]},
        "00081030": {"vr": "LO", "Value": ["MRI BRAIN"]},
        "00080061": {"vr": "CS", "Value": ["MR", "SR"]},
        "0020000D": {"vr": "UI", "Value": [uid]},
        "00080054": {"vr": "AE", "Value": [aet]},
        "00080052": {"vr": "CS", "Value": ["STUDY"]},
    }


def state(status: str, sources: list[dict], results: list[dict] | None = None, **extra) -> dict:
    results = results or []
    data = {
        "query_id": QID, "status": status, "spanner_config_id": 1, "spanner_config": "main",
        "query_type": "C-FIND", "query_level": "STUDY", "total_results": len(results), "raw_results": len(results),
        "sources_queried": len(sources), "sources_responded": sum(s["status"] not in ("pending", "running")
                                                                  for s in sources),
        "execution_time_ms": 812.4 if status not in ("accepted", "running") else None,
        "accepted_at": "2024-05-01T10:00:00Z", "completed_at": None, "deadline_at": None, "error": None,
        "sources": sources, "offset": 0, "limit": 100, "results": results,
    }
    data.update(extra)
    return data


FINAL = state("completed", [source("PACS1", "ok", 1, 120.0), source("WEB2", "ok", 1, 340.0)],
              [study("Doe^Jane", "1.2.3.4", "PACS1"), study("Roe^Rick", "1.2.3.5", "WEB2")])
PROGRESSION = [
    state("accepted", []),
    state("running", [source("PACS1", "running"), source("WEB2", "pending")]),
    state("running", [source("PACS1", "ok", 1, 120.0), source("WEB2", "running")]),
    FINAL,
]


class FakeCoordinator:
    """Records every request; answers POST with 202, GET with the next of `states` (the last repeats), DELETE
    with `cancel_answer`. `error` (status, body) overrides every answer."""

    def __init__(self) -> None:
        self.requests: list[httpx.Request] = []
        self.states: list[dict] = [FINAL]
        self.cancel_answer: tuple[int, dict] = (200, {"query_id": QID, "status": "cancelled",
                                                      "message": f"query {QID} cancelled"})
        self.error: tuple[int, object] | None = None

    def __call__(self, request: httpx.Request) -> httpx.Response:
        self.requests.append(request)
        if self.error:
            return httpx.Response(self.error[0], json=self.error[1])
        if request.method == "POST":
            return httpx.Response(202, json={"query_id": QID, "status": "accepted", "message": "accepted",
                                             "status_url": f"/spanning-query/{QID}"})
        if request.method == "DELETE":
            return httpx.Response(self.cancel_answer[0], json=self.cancel_answer[1])
        current = self.states.pop(0) if len(self.states) > 1 else self.states[0]
        limit = int(request.url.params.get("limit", 100))
        return httpx.Response(200, json={**current, "limit": limit, "results": current["results"][:limit]})

    def gets(self) -> list[httpx.Request]:
        return [r for r in self.requests if r.method == "GET"]


@pytest.fixture()
def fake(monkeypatch):
    coordinator = FakeCoordinator()
    real_factory = span_cmd.make_client
    monkeypatch.setattr(span_cmd, "make_client",
                        lambda url, key: real_factory(url, key, transport=httpx.MockTransport(coordinator)))
    monkeypatch.setattr(span_cmd, "POLL_INTERVAL_SECONDS", 0)
    return coordinator


@pytest.fixture()
def cli(monkeypatch):
    monkeypatch.setenv("AXIOM_API_KEY", KEY)
    monkeypatch.delenv("AXIOM_COORDINATOR_URL", raising=False)
    app = typer.Typer()
    span_cmd.register(app)
    runner = CliRunner()
    return lambda *args: runner.invoke(app, ["span", *map(str, args)])


def one_line(text: str) -> str:
    return " ".join(text.split())


def assert_user_error(result, *fragments: str) -> None:
    assert result.exit_code == 2, result.output
    assert result.stdout == ""
    assert result.stderr.startswith("error: ") and result.stderr.count("\n") == 1, result.stderr
    for fragment in fragments:
        assert fragment in result.stderr
    assert "Traceback" not in result.output and KEY not in result.output


def test_submit_by_id_sends_keys_and_prints_the_id(cli, fake):
    result = cli("submit", "--config", "1", "-k", "PatientID=12345", "-k", "StudyDate=20240101-20241231",
                 "-k", "StudyDescription=*MRI*", "-k", "StudyInstanceUID", "-k", "AccessionNumber=")
    assert result.exit_code == 0, result.output
    assert result.stdout == f"{QID}\n"
    (request,) = fake.requests
    assert request.method == "POST" and request.url.path == "/spanning-query"
    assert dict(request.url.params) == {"spanner_config_id": "1", "query_type": "C-FIND", "query_level": "STUDY"}
    assert json.loads(request.content) == {"PatientID": "12345", "StudyDate": "20240101-20241231",
                                           "StudyDescription": "*MRI*", "StudyInstanceUID": "", "AccessionNumber": ""}
    assert request.headers["X-API-Key"] == KEY
    assert str(request.url).startswith("http://localhost:8002/")


def test_submit_by_name_with_level_type_url_and_json(cli, fake):
    result = cli("submit", "-c", "main-pacs", "-k", "PatientName=Doe*=x", "--level", "series", "--type", "c-find",
                 "--url", "http://coord.example:9000/axiom/", "--api-key", "other-key", "--json")
    assert result.exit_code == 0, result.output
    assert json.loads(result.stdout)["query_id"] == QID
    (request,) = fake.requests
    assert str(request.url).startswith("http://coord.example:9000/axiom/spanning-query?")
    assert dict(request.url.params) == {"spanner_config": "main-pacs", "query_type": "C-FIND",
                                        "query_level": "SERIES"}
    assert json.loads(request.content) == {"PatientName": "Doe*=x"}
    assert request.headers["X-API-Key"] == "other-key"


@pytest.mark.parametrize("args, message", [
    (("-k", "=123"), "-k '=123'"),
    (("-k", "PatientID=1", "-k", "PatientID=2"), "PatientID is given twice"),
    (("--timeout", "5"), "add --wait"),
])
def test_submit_rejects_bad_options_before_sending(cli, fake, args, message):
    result = cli("submit", "--config", "1", *args)
    assert_user_error(result, message)
    assert fake.requests == []


def test_submit_wait_follows_until_completed(cli, fake):
    fake.states = list(PROGRESSION)
    result = cli("submit", "--config", "main", "-k", "PatientID=12345", "--wait")
    assert result.exit_code == 0, result.output
    assert "completed" in result.stdout and "Doe^Jane" in result.stdout
    polls = fake.gets()
    assert [r.url.params["limit"] for r in polls] == ["0"] * 4 + ["100"]
    assert all(1 <= int(r.url.params["wait"]) <= 2 for r in polls[:-1]) and "wait" not in polls[-1].url.params
    assert all(r.url.path == f"/spanning-query/{QID}" for r in polls)


def test_submit_wait_json_prints_only_the_final_json(cli, fake):
    fake.states = list(PROGRESSION)
    result = cli("submit", "--config", "1", "--wait", "--json")
    assert result.exit_code == 0, result.output
    assert json.loads(result.stdout)["status"] == "completed"


def test_status_renders_header_sources_and_decoded_results(cli, fake):
    result = cli("status", QID, "--offset", "0", "--limit", "50")
    assert result.exit_code == 0, result.output
    out = result.stdout
    assert f"query {QID}" in out and "completed" in out and "config main #1" in out
    assert "2 results (2 before deduplication) from 2/2 sources in 812 ms" in one_line(out)
    for text in ("PACS1", "WEB2", "340", "Doe^Jane", "Roe^Rick", "20240315", "MRI BRAIN", "1.2.3.4", "MR\\SR"):
        assert text in out, text
    assert "QueryRetrieveLevel" not in out
    (request,) = fake.requests
    assert dict(request.url.params) == {"offset": "0", "limit": "50"}


def test_status_json_is_the_servers_json_and_exit_code_follows_status(cli, fake):
    fake.states = [state("failed", [source("PACS1", "failed", error="association rejected")], error="all failed")]
    result = cli("status", QID, "--json")
    assert result.exit_code == 1
    assert json.loads(result.stdout)["error"] == "all failed"
    fake.states = [state("running", [source("PACS1", "running")])]
    running = cli("status", QID)
    assert running.exit_code == 0 and "running" in running.stdout


def test_status_says_when_more_results_exist(cli, fake):
    fake.states = [{**FINAL, "total_results": 250}]
    result = cli("status", QID, "--limit", "1")
    assert result.exit_code == 0
    assert "Results 1-1 of 250" in result.stdout and "249 more" in one_line(result.stdout)


def test_wait_progresses_accepted_running_completed(cli, fake):
    fake.states = list(PROGRESSION)
    result = cli("wait", QID)
    assert result.exit_code == 0, result.output
    assert [r.url.params.get("limit") for r in fake.gets()] == ["0", "0", "0", "0", "100"]
    assert "Doe^Jane" in result.stdout and "Sources" in result.stdout


def test_wait_live_display_shows_each_source():
    live = span_cmd.SpanProgress(display=Console(file=io.StringIO()))
    for current in PROGRESSION[:3]:
        live.update(current)
    screen = Console(record=True, width=100, file=io.StringIO())
    screen.print(live.progress.get_renderable())
    lines = screen.export_text().splitlines()
    assert "overall" in lines[0] and "running" in lines[0] and "1/2 sources" in lines[0]
    assert "PACS1" in lines[1] and "ok" in lines[1] and "1 matches" in lines[1] and "120 ms" in lines[1]
    assert "WEB2" in lines[2] and "running" in lines[2]
    tasks = {t.description: t for t in live.progress.tasks}
    assert tasks["PACS1"].finished and not tasks["WEB2"].finished and not tasks["[bold]overall[/bold]"].finished
    live.update(FINAL)
    assert all(task.finished for task in live.progress.tasks)


def test_wait_failed_or_cancelled_exits_1(cli, fake):
    fake.states = [state("cancelled", [source("PACS1", "cancelled")])]
    result = cli("wait", QID, "--json")
    assert result.exit_code == 1
    assert json.loads(result.stdout)["status"] == "cancelled"


def test_wait_timeout_exits_3_and_says_it_keeps_running(cli, fake):
    fake.states = [state("running", [source("PACS1", "running")])]
    result = cli("wait", QID, "--timeout", "0.05")
    assert result.exit_code == 3, result.output
    assert result.stdout == ""
    assert "still running after 0.05 s" in one_line(result.stderr) and "keeps" in result.stderr
    assert all(r.method == "GET" for r in fake.requests)


def test_cancel_prints_the_message(cli, fake):
    result = cli("cancel", QID)
    assert result.exit_code == 0, result.output
    assert result.stdout.strip() == f"query {QID} cancelled"
    (request,) = fake.requests
    assert request.method == "DELETE" and request.url.path == f"/spanning-query/{QID}"


def test_cancel_of_a_finished_query_is_an_error(cli, fake):
    fake.cancel_answer = (409, {"detail": f"query {QID} already finished (completed)"})
    assert_user_error(cli("cancel", QID), "already finished (completed)", "HTTP 409")


@pytest.mark.parametrize("status_code, body, fragments", [
    (401, {"detail": "invalid API key"}, ("API key rejected", "http://localhost:8002", "invalid API key")),
    (403, {"detail": "role user may not do this"}, ("may not", "role user")),
    (404, {"detail": "spanner config 'nope' not found"}, ("spanner config 'nope' not found", "HTTP 404")),
    (422, {"detail": "query key 'Foo': not a DICOM keyword"}, ("query key 'Foo': not a DICOM keyword",)),
    (422, {"detail": [{"loc": ["query", "spanner_config_id"], "msg": "Input should be a valid integer"},
                      {"loc": ["body"], "msg": "Input should be a valid dictionary"}]},
     ("spanner_config_id: Input should be a valid integer; Input should be a valid dictionary",)),
    (503, {"detail": "broker unavailable"}, ("broker unavailable", "HTTP 503")),
    (500, "Internal Server Error", ("HTTP 500",)),
])
def test_http_errors_on_submit_are_one_line(cli, fake, status_code, body, fragments):
    fake.error = (status_code, body)
    assert_user_error(cli("submit", "--config", "nope", "-k", "PatientID=1"), *fragments)


@pytest.mark.parametrize("command", ["status", "wait", "cancel"])
def test_unknown_query_is_no_such_query(cli, fake, command):
    fake.error = (404, {"detail": "not found"})
    assert_user_error(cli(command, QID), f"no such query {QID}")


def test_malformed_query_id_is_refused_before_any_request(cli, fake):
    assert_user_error(cli("status", "../health"), "is not a query id")
    assert fake.requests == []


def test_missing_api_key(cli, fake, monkeypatch):
    monkeypatch.delenv("AXIOM_API_KEY")
    assert_user_error(cli("status", QID), "no API key", "AXIOM_API_KEY")
    assert fake.requests == []


def test_connection_refused_names_the_url(cli):
    with socket.socket() as sock:  # a port nobody listens on once closed
        sock.bind(("127.0.0.1", 0))
        port = sock.getsockname()[1]
    url = f"http://user:pw@127.0.0.1:{port}"
    result = cli("status", QID, "--url", url)
    assert_user_error(result, f"cannot reach the coordinator at http://user:***@127.0.0.1:{port}")
    assert "pw" not in result.stderr


def test_mocked_connect_error_and_bad_url(cli, monkeypatch):
    def refuse(request):
        raise httpx.ConnectError("Connection refused", request=request)

    real_factory = span_cmd.make_client
    monkeypatch.setattr(span_cmd, "make_client",
                        lambda url, key: real_factory(url, key, transport=httpx.MockTransport(refuse)))
    assert_user_error(cli("cancel", QID, "--url", "http://coord:8002"), "coordinator at http://coord:8002",
                      "Connection refused")
    assert_user_error(cli("status", QID, "--url", "coord:8002"), "--url must start with http://")


def test_wait_on_a_terminal_runs_the_live_display(cli, fake, monkeypatch):
    screen = io.StringIO()
    monkeypatch.setattr(span_cmd, "err_console", Console(file=screen, force_terminal=True, width=100))
    fake.states = list(PROGRESSION)
    result = cli("wait", QID)
    assert result.exit_code == 0, result.output
    assert "Doe^Jane" in result.stdout
    assert "overall" in screen.getvalue() and "\x1b[" in screen.getvalue()  # drawn, then erased (transient)
