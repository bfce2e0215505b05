"""apply_config_yaml / export_config on SQLite: the example file, idempotency, located errors, self-loops, rollback."""

from __future__ import annotations

import pytest
import yaml
from sqlalchemy import func, select

from shared.config import ScpSettings
from shared.db.models import Base, Source, SpannerConfig, SpannerSourceMapping
from shared.db.session import make_engine, make_sessionmaker, session_scope
from shared.provisioning import ConfigError, apply_config_yaml, export_config, is_local_host, own_scp_refusal
from shared.provisioning.secrets import MASK

EXAMPLE = """\
sources:
  - {name: PACS0, kind: dimse, ae_title: PACS0, host: 127.0.0.1, port: 4242}
  - {name: WEB1, kind: dicomweb, base_url: "http://127.0.0.1:8043/dicom-web"}
spanner_configs:
  - name: main
    failure_strategy: BEST_EFFORT
    deduplication_strategy: MOST_COMPLETE
    query_timeout_seconds: 30
    scp_ae_title: AXIOM_SPANNER
    sources:
      - {source: PACS0, priority: 1, timeout_seconds: 20}
      - {source: WEB1, priority: 2}
"""
SCP = ScpSettings(AXIOM_SCP_AE_TITLE="AXIOM_SPANNER", AXIOM_SCP_HOST="0.0.0.0", AXIOM_SCP_PORT=11114)


@pytest.fixture()
def factory(tmp_path):
    engine = make_engine(f"sqlite:///{tmp_path / 'db' / 'axiom.db'}")
    Base.metadata.create_all(engine)
    yield make_sessionmaker(engine)
    engine.dispose()


def apply(factory, text: str):
    with session_scope(factory) as session:
        return apply_config_yaml(session, text, scp=SCP)


def counts(factory) -> tuple[int, int, int]:
    with factory() as session:
        return tuple(session.scalar(select(func.count()).select_from(m))
                     for m in (Source, SpannerConfig, SpannerSourceMapping))


def problem_of(factory, text: str) -> str:
    with pytest.raises(ConfigError) as caught:
        apply(factory, text)
    return str(caught.value)


def test_example_is_applied(factory):
    report = apply(factory, EXAMPLE)
    assert report.summary() == "3 created, 0 updated, 0 unchanged"
    with factory() as session:
        config = session.scalar(select(SpannerConfig).where(SpannerConfig.name == "main"))
        assert config.scp_ae_title == "AXIOM_SPANNER"
        assert [(m.source.name, m.priority, m.timeout_seconds) for m in config.mappings] == [
            ("PACS0", 1, 20.0), ("WEB1", 2, None)]
        pacs = session.scalar(select(Source).where(Source.name == "PACS0"))
        assert pacs.connection.port == 4242 and pacs.kind == "dimse"


def test_applying_twice_changes_nothing(factory):
    apply(factory, EXAMPLE)
    report = apply(factory, EXAMPLE)
    assert not report.changed
    assert report.summary() == "0 created, 0 updated, 3 unchanged"


def test_changes_are_reported_and_mappings_replaced(factory):
    apply(factory, EXAMPLE)
    text = EXAMPLE.replace("port: 4242", "port: 4243").replace("      - {source: WEB1, priority: 2}\n", "")
    report = apply(factory, text)
    assert [(c.name, c.action) for c in report.changes] == [
        ("PACS0", "updated"), ("WEB1", "unchanged"), ("main", "updated")]
    assert counts(factory) == (2, 1, 1)


def test_export_round_trips_and_masks_secrets(factory):
    text = EXAMPLE.replace(
        'base_url: "http://127.0.0.1:8043/dicom-web"}',
        'base_url: "http://127.0.0.1:8043/dicom-web", auth: {type: basic, username: u, password: s3cret}}')
    apply(factory, text)
    with factory() as session:
        document = export_config(session)
    dumped = yaml.safe_dump(document)
    assert "s3cret" not in dumped and MASK in dumped
    assert not apply(factory, dumped).changed  # the mask keeps the stored password
    with factory() as session:
        web = session.scalar(select(Source).where(Source.name == "WEB1"))
        assert web.connection.auth.password == "s3cret"


def test_bad_yaml_names_line_and_column(factory):
    message = problem_of(factory, "sources:\n  - name: A\n    host: a: b\n")
    assert message.startswith("invalid YAML at line 3, column 12: ")
    assert "mapping values are not allowed here" in message


def test_bad_value_names_field_path_and_line(factory):
    message = problem_of(factory, EXAMPLE.replace("port: 4242", "port: 99999"))
    assert "line 2: sources[0].port:" in message
    message = problem_of(factory, EXAMPLE.replace("failure_strategy: BEST_EFFORT", "failure_strategy: SOMETIMES"))
    assert "line 6: spanner_configs[0].failure_strategy:" in message
    message = problem_of(factory, EXAMPLE.replace("{source: WEB1, priority: 2}", "{source: WEB1, priority: -1}"))
    assert "line 12: spanner_configs[0].sources[1].priority:" in message


def test_values_a_database_or_socket_cannot_take_are_named(factory):
    message = problem_of(factory, EXAMPLE.replace("query_timeout_seconds: 30", 'description: "a\\0b"'))
    assert "spanner_configs[0].description:" in message and "NUL" in message
    message = problem_of(factory, EXAMPLE.replace("timeout_seconds: 20", "timeout_seconds: .inf"))
    assert "spanner_configs[0].sources[0].timeout_seconds:" in message
    message = problem_of(factory, EXAMPLE.replace("port: 4242}", "port: 4242, connect_timeout: 1e300}"))
    assert "sources[0].connect_timeout:" in message
    message = problem_of(factory, EXAMPLE.replace("{source: WEB1, priority: 2}", "{source: WEB1, priority: 1e40}"))
    assert "spanner_configs[0].sources[1].priority:" in message
    assert counts(factory) == (0, 0, 0)


def test_unknown_kind_and_unknown_field_are_named(factory):
    assert "line 2: sources[0].kind: unknown kind 'ftp'" in problem_of(factory, EXAMPLE.replace("kind: dimse", "kind: ftp"))
    message = problem_of(factory, EXAMPLE.replace("query_timeout_seconds: 30", "query_timeout: 30"))
    assert "line 8: spanner_configs[0].query_timeout:" in message


def test_unknown_source_in_mapping_is_named(factory):
    message = problem_of(factory, EXAMPLE.replace("{source: WEB1, priority: 2}", "{source: NOPE, priority: 2}"))
    assert "line 12: spanner_configs[0].sources[1].source: unknown source 'NOPE'" in message


def test_duplicate_key_is_refused(factory):
    message = problem_of(factory, "sources:\n  - name: A\n    port: 1\n    port: 2\n")
    assert message == "line 4: sources[0].port: duplicate key"


@pytest.mark.parametrize("host", ["127.0.0.1", "127.1.2.3", "localhost", "::1", "0.0.0.0"])
def test_source_pointing_at_own_scp_is_refused(factory, host):
    text = EXAMPLE.replace("{name: PACS0, kind: dimse, ae_title: PACS0, host: 127.0.0.1, port: 4242}",
                           f'{{name: PACS0, kind: dimse, ae_title: AXIOM_SPANNER, host: "{host}", port: 11114}}')
    message = problem_of(factory, text)
    assert "line 2: sources[0]: source 'PACS0' points at this spanner's own SCP" in message
    assert counts(factory) == (0, 0, 0)


def test_own_scp_check_uses_config_titles_and_hostname():
    from shared.connections import DimseConnection

    loop = DimseConnection(ae_title="OTHER_SPAN", host="myhost", port=11114)
    assert own_scp_refusal("X", loop, scp_ae_titles={"OTHER_SPAN"}, scp_port=11114, scp_host="0.0.0.0",
                           hostname="myhost")
    assert own_scp_refusal("X", loop, scp_ae_titles={"OTHER_SPAN"}, scp_port=11115, scp_host="0.0.0.0",
                           hostname="myhost") is None
    assert own_scp_refusal("X", loop, scp_ae_titles={"AXIOM_SPANNER"}, scp_port=11114, scp_host="0.0.0.0",
                           hostname="myhost") is None
    assert not is_local_host("10.1.2.3") and is_local_host("10.1.2.3", local_names=["10.1.2.3"])


def test_an_error_leaves_the_database_unchanged(factory):
    problem_of(factory, EXAMPLE.replace("{source: WEB1, priority: 2}", "{source: NOPE, priority: 2}"))
    assert counts(factory) == (0, 0, 0)


def test_scp_ae_titles_can_swap_between_configs(factory):
    apply(factory, EXAMPLE + "  - {name: second, scp_ae_title: SECOND}\n")
    swapped = EXAMPLE.replace("scp_ae_title: AXIOM_SPANNER", "scp_ae_title: SECOND") + \
        "  - {name: second, scp_ae_title: AXIOM_SPANNER}\n"
    assert [c.action for c in apply(factory, swapped).changes][-2:] == ["updated", "updated"]
    with factory() as session:
        assert {c.name: c.scp_ae_title for c in session.scalars(select(SpannerConfig))} == {
            "main": "SECOND", "second": "AXIOM_SPANNER"}


def test_a_database_refusal_rolls_back_the_whole_file(factory, monkeypatch):
    from sqlalchemy.exc import IntegrityError

    import shared.provisioning.apply as apply_module

    apply(factory, EXAMPLE)

    def refuse(session, **_fields):
        raise IntegrityError("UPDATE spanner_configs", {}, Exception("simulated unique violation"))

    monkeypatch.setattr(apply_module, "upsert_spanner_config", refuse)
    with pytest.raises(ConfigError, match="the database refused the change: simulated"):
        apply(factory, EXAMPLE.replace("port: 4242", "port: 5555"))
    with factory() as session:
        assert session.scalar(select(Source).where(Source.name == "PACS0")).connection.port == 4242


SCP_EXAMPLE = EXAMPLE.replace(
    "    scp_ae_title: AXIOM_SPANNER\n",
    "    scp_ae_title: AXIOM_SPANNER\n    allowed_calling_ae_titles: [' FINDSCU ', MOVESCU]\n") + """\
destinations:
  - {ae_title: STORESCP, host: 10.0.0.5, port: 11112, description: workstation}
  - {ae_title: " OFFLINE ", host: 10.0.0.6, port: 104, is_enabled: false}
"""


def test_destinations_and_calling_ae_titles_are_applied(factory):
    from shared.db.models import DicomDestination

    report = apply(factory, SCP_EXAMPLE)
    assert [(c.entity, c.name, c.action) for c in report.changes][-2:] == [
        ("destination", "STORESCP", "created"), ("destination", "OFFLINE", "created")]
    with factory() as session:
        config = session.scalar(select(SpannerConfig).where(SpannerConfig.name == "main"))
        assert config.allowed_calling_ae_titles == ["FINDSCU", "MOVESCU"]
        rows = {d.ae_title: (d.host, d.port, d.description, d.is_enabled)
                for d in session.scalars(select(DicomDestination))}
        assert rows == {"STORESCP": ("10.0.0.5", 11112, "workstation", True),
                        "OFFLINE": ("10.0.0.6", 104, None, False)}
    assert apply(factory, SCP_EXAMPLE).summary() == "0 created, 0 updated, 5 unchanged"
    changed = apply(factory, SCP_EXAMPLE.replace("port: 11112", "port: 11113").replace(", MOVESCU]", "]"))
    assert [(c.name, c.action) for c in changed.changes if c.action != "unchanged"] == [
        ("main", "updated"), ("STORESCP", "updated")]


def test_empty_calling_ae_titles_mean_any_and_are_stored_as_none(factory):
    apply(factory, SCP_EXAMPLE.replace("[' FINDSCU ', MOVESCU]", "[]"))
    with factory() as session:
        assert session.scalar(select(SpannerConfig.allowed_calling_ae_titles)) is None


def test_export_round_trips_destinations_and_calling_ae_titles(factory):
    apply(factory, SCP_EXAMPLE)
    with factory() as session:
        document = export_config(session)
    assert document["destinations"] == [
        {"ae_title": "OFFLINE", "host": "10.0.0.6", "port": 104, "is_enabled": False},
        {"ae_title": "STORESCP", "host": "10.0.0.5", "port": 11112, "description": "workstation"}]
    assert document["spanner_configs"][0]["allowed_calling_ae_titles"] == ["FINDSCU", "MOVESCU"]
    dumped = yaml.safe_dump(document, sort_keys=False)
    assert not apply(factory, dumped).changed
    with factory() as session:
        assert export_config(session) == document


@pytest.mark.parametrize("old, new, expected", [
    ("port: 11112", "port: 0", "line 15: destinations[0].port:"),
    ("ae_title: STORESCP", "ae_title: WAY_TOO_LONG_AE_TITLE", "line 15: destinations[0].ae_title:"),
    ("host: 10.0.0.5", 'host: " "', "line 15: destinations[0].host:"),
    ("ae_title: STORESCP, host: 10.0.0.5", "ae_title: STORESCP, hostname: 10.0.0.5",
     "line 15: destinations[0].hostname:"),
    ('" OFFLINE "', "STORESCP", "line 16: destinations[1].ae_title: destination 'STORESCP' is listed twice"),
    ("MOVESCU]", "'BAD\\AE']", "line 10: spanner_configs[0].allowed_calling_ae_titles[1]:"),
    ("MOVESCU]", "FINDSCU]", "line 10: spanner_configs[0].allowed_calling_ae_titles: Value error, AE title(s) "
                             "listed twice: FINDSCU"),
])
def test_bad_destinations_and_calling_ae_titles_are_located(factory, old, new, expected):
    assert old in SCP_EXAMPLE
    assert expected in problem_of(factory, SCP_EXAMPLE.replace(old, new, 1))
    assert counts(factory) == (0, 0, 0)


def test_client_networks_are_normalised_and_a_bad_one_is_located(factory):
    networks = SCP_EXAMPLE.replace("    allowed_calling_ae_titles:",
                                   "    allowed_client_networks: [10.1.2.3/8, '2001:db8::/32']\n"
                                   "    allowed_calling_ae_titles:")
    apply(factory, networks)
    with factory() as session:
        stored = session.scalar(select(SpannerConfig.allowed_client_networks))
    assert stored == ["10.0.0.0/8", "2001:db8::/32"]
    problem = problem_of(factory, networks.replace("10.1.2.3/8", "10.0.0.0/33"))
    assert "line 10: spanner_configs[0].allowed_client_networks: Value error, '10.0.0.0/33' is not an IP network" \
        in problem
