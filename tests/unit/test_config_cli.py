"""`axiom config apply|show` and `axiom db upgrade|downgrade|current` on an embedded SQLite database."""

from __future__ import annotations

import json

import pytest
import typer
import yaml
from typer.testing import CliRunner

from services.cli.config_cmd import register
from shared.config import get_settings
from shared.db.migrations import head_revision
from tests.unit.test_provisioning import EXAMPLE, SCP_EXAMPLE


@pytest.fixture()
def cli(tmp_path, monkeypatch):
    monkeypatch.setenv("DATABASE_URL", f"sqlite:///{tmp_path / 'data' / 'axiom.db'}")
    monkeypatch.delenv("AXIOM_SCP_PORT", raising=False)
    get_settings.cache_clear()
    app = typer.Typer()
    register(app)
    runner = CliRunner()
    yield lambda *args: runner.invoke(app, [str(a) for a in args])
    get_settings.cache_clear()


def one_line(text: str) -> str:
    return " ".join(text.split())


def test_apply_migrates_then_is_idempotent(cli, tmp_path):
    path = tmp_path / "axiom.yaml"
    path.write_text(EXAMPLE)
    first = cli("config", "apply", path)
    assert first.exit_code == 0, first.output
    assert f"migrated empty -> {head_revision()}" in first.output and "3 created" in first.output
    second = cli("config", "apply", path)
    assert second.exit_code == 0 and "0 created, 0 updated, 3 unchanged" in second.output
    assert "migrated" not in second.output


def test_show_round_trips_yaml_and_json(cli, tmp_path):
    path = tmp_path / "axiom.yaml"
    path.write_text(EXAMPLE)
    cli("config", "apply", path)
    shown = cli("config", "show")
    assert shown.exit_code == 0
    document = yaml.safe_load(shown.stdout)
    assert [s["name"] for s in document["sources"]] == ["PACS0", "WEB1"]
    assert json.loads(cli("config", "show", "--json").stdout) == document
    path.write_text(shown.stdout)
    assert "3 unchanged" in cli("config", "apply", path).output


def test_dry_run_writes_nothing(cli, tmp_path):
    path = tmp_path / "axiom.yaml"
    path.write_text(EXAMPLE)
    assert "dry run" in cli("config", "apply", path, "--dry-run").output
    assert yaml.safe_load(cli("config", "show").stdout) == {"sources": [], "spanner_configs": [], "destinations": []}


def test_destinations_are_reported_shown_and_round_trip(cli, tmp_path):
    path = tmp_path / "axiom.yaml"
    path.write_text(SCP_EXAMPLE)
    applied = cli("config", "apply", path)
    assert applied.exit_code == 0, applied.output
    assert "created   destination STORESCP" in applied.output and "5 created" in applied.output
    document = yaml.safe_load(cli("config", "show").stdout)
    assert [d["ae_title"] for d in document["destinations"]] == ["OFFLINE", "STORESCP"]
    assert document["spanner_configs"][0]["allowed_calling_ae_titles"] == ["FINDSCU", "MOVESCU"]
    path.write_text(cli("config", "show").stdout)
    assert "0 created, 0 updated, 5 unchanged" in cli("config", "apply", path).output


@pytest.mark.parametrize("text, expected", [
    ("sources: [", "invalid YAML at line 1"),
    (EXAMPLE.replace("port: 4242", "port: nope"), "line 2: sources[0].port:"),
    (EXAMPLE.replace("{source: WEB1", "{source: GHOST"), "unknown source 'GHOST'"),
    (SCP_EXAMPLE.replace("port: 104", "port: 70000"), "line 16: destinations[1].port:"),
    (EXAMPLE.replace("ae_title: PACS0, host: 127.0.0.1, port: 4242", "ae_title: AXIOM_SPANNER, host: 127.0.0.1, port: 11114"),
     "points at this spanner's own SCP"),
])
def test_user_errors_are_one_red_line_and_exit_2(cli, tmp_path, text, expected):
    path = tmp_path / "bad.yaml"
    path.write_text(text)
    result = cli("config", "apply", path)
    assert result.exit_code == 2
    assert "Traceback" not in result.output and result.exception is None or isinstance(result.exception, SystemExit)
    assert expected in one_line(result.output) and "error:" in result.output


def test_missing_file_is_a_user_error(cli, tmp_path):
    result = cli("config", "apply", tmp_path / "missing.yaml")
    assert result.exit_code == 2 and "missing.yaml" in one_line(result.output)


def test_db_commands(cli):
    assert f"revision - (head {head_revision()}, empty)" in one_line(cli("db", "current").output)
    assert cli("config", "show").exit_code == 2
    assert cli("db", "upgrade").exit_code == 0
    assert f"(head {head_revision()}, up to date)" in one_line(cli("db", "current").output)
    refused = cli("db", "downgrade")
    assert refused.exit_code == 2 and "--yes" in refused.output
    assert cli("db", "downgrade", "--yes").exit_code == 0
    assert "empty" in cli("db", "current").output
