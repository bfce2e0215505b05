"""The compose files -> local process plan of `axiom stack up` (services/cli/stack_plan.py), on fixture compose files
(tests/unit/stack_compose/) shaped like the repository's base file and enterprise overlay."""

from __future__ import annotations

import sys
from pathlib import Path

import pytest

from services.cli.stack_cmd import check_environment, parse_only, parse_scale
from services.cli.stack_plan import (
    StackPlanError, build_plan, default_compose_files, interpolate, is_migration, load_compose,
)

FIXTURES = Path(__file__).parent / "stack_compose"
FILES = [FIXTURES / "docker-compose.yml", FIXTURES / "docker-compose.enterprise.yml"]
ENV = {"DATABASE_URL": "postgresql://me@127.0.0.1:5432/mine", "REDIS_URL": "redis://127.0.0.1:6379/4",
       "RABBITMQ_URL": "amqp://guest:guest@127.0.0.1:5672/mine", "SECRET_KEY": "k" * 40, "PATH": "/usr/bin",
       "AXIOM_INSTANCE_ID": "from-the-shell"}


def plan(env=ENV, files=FILES, **options):
    return build_plan(load_compose(files), env, **options)


def by_label(stack_plan):
    return {spec.label: spec for spec in stack_plan.processes}


def test_services_commands_and_order_come_from_the_compose_files():
    result = plan(scale={"dimse-query-worker": 2})
    assert [spec.label for spec in result.processes] == [
        "api", "spanner-coordinator", "dimse-query-worker-1", "dimse-query-worker-2", "aggregation-worker",
        "dimse-scp-listener"]
    modules = {spec.label: spec.argv[1:] for spec in result.processes}
    assert modules["api"] == ("-m", "services.api")  # Dockerfile exec-form CMD
    assert modules["spanner-coordinator"] == ("-m", "services.spanner_coordinator")  # CMD with a line continuation
    assert modules["dimse-scp-listener"] == ("-m", "services.listener")  # shell-form CMD
    assert modules["dimse-query-worker-1"] == ("-m", "services.worker")  # compose `command`
    assert all(spec.argv[0] == sys.executable for spec in result.processes)
    assert result.skipped == ("db", "redis", "rabbitmq", "fluentd")
    assert [(shot.service, shot.argv) for shot in result.one_shots] == [("migrate", None)]  # in-process upgrade


def test_environment_stack_variables_win_and_each_instance_has_its_id():
    specs = by_label(plan(scale={"dimse-query-worker": 2}))
    for spec in specs.values():
        for name in ("DATABASE_URL", "REDIS_URL", "RABBITMQ_URL", "SECRET_KEY"):
            assert spec.env[name] == ENV[name], (spec.label, name)  # not the compose hostnames db/redis/rabbitmq
        assert spec.env["PATH"] == "/usr/bin" and spec.env["PYTHONUNBUFFERED"] == "1"
        assert spec.env["AXIOM_INSTANCE_ID"] == spec.label
        assert spec.restart == "unless-stopped"
    assert specs["dimse-query-worker-2"].env["WORKER_TYPE"] == "dimse-query"
    assert specs["dimse-query-worker-1"].env["WORKER_CONCURRENCY"] == "4"
    assert specs["aggregation-worker"].env["WORKER_TYPE"] == "aggregation"  # list-form environment
    assert specs["api"].env["LOG_LEVEL"] == "INFO"  # ${LOG_LEVEL:-INFO}
    assert specs["api"].env["REDIS_URL"] == ENV["REDIS_URL"]  # the overlay's environment merged into the base's


def test_bare_variable_and_defaults_follow_the_callers_environment():
    env = {**ENV, "AXIOM_HEARTBEAT_SECONDS": "1", "LOG_LEVEL": "DEBUG"}
    specs = by_label(plan(env))
    assert specs["aggregation-worker"].env["AXIOM_HEARTBEAT_SECONDS"] == "1"  # `- AXIOM_HEARTBEAT_SECONDS`
    assert specs["spanner-coordinator"].env["AXIOM_HEARTBEAT_SECONDS"] == "1"  # ${...:-5}
    assert specs["api"].env["LOG_LEVEL"] == "DEBUG"
    assert "AXIOM_HEARTBEAT_SECONDS" not in by_label(plan())["aggregation-worker"].env


def test_published_ports_become_listen_variables_with_the_offset():
    specs = by_label(plan(port_offset=1000, host="127.0.0.2"))
    assert (specs["api"].env["AXIOM_API_HOST"], specs["api"].env["AXIOM_API_PORT"]) == ("127.0.0.2", "9001")
    assert specs["spanner-coordinator"].env["AXIOM_COORDINATOR_PORT"] == "9002"
    assert specs["dimse-scp-listener"].env["AXIOM_SCP_PORT"] == "12114"
    assert [specs[name].port for name in ("api", "spanner-coordinator", "dimse-scp-listener")] == [9001, 9002, 12114]
    assert specs["aggregation-worker"].port is None


def test_only_scale_zero_and_replicas(tmp_path):
    assert [s.label for s in plan(only=["api", "dimse-query-worker"]).processes] == ["api", "dimse-query-worker"]
    assert "aggregation-worker" not in by_label(plan(scale={"aggregation-worker": 0}))
    overlay = tmp_path / "replicas.yml"
    overlay.write_text("services:\n  dimse-query-worker:\n    deploy: {replicas: 3}\n")
    labels = [s.label for s in plan(files=[*FILES, overlay]).processes]
    assert labels.count("dimse-query-worker-3") == 1 and "dimse-query-worker-4" not in labels


@pytest.mark.parametrize("options, message", [
    ({"scale": {"nope": 2}}, "unknown service 'nope'"),
    ({"only": ["db"]}, "unknown service 'db'"),  # infrastructure is not run by the stack
    ({"scale": {"api": 2}}, "api publishes port 8001, so only one instance can run"),
    ({"scale": {"dimse-query-worker": -1}}, "the count must be 0 or more"),
])
def test_bad_options_are_named(options, message):
    with pytest.raises(StackPlanError, match=message):
        plan(**options)


def test_required_variables_matter_only_where_the_plan_uses_them(tmp_path):
    # SECRET_KEY (a stack variable, from the caller) and the infrastructure's POSTGRES_PASSWORD are never needed
    compose = tmp_path / "c.yml"
    compose.write_text("services:\n  db:\n    image: postgres\n    environment: {P: '${POSTGRES_PASSWORD:?set it}'}\n"
                       "  api:\n    build: .\n    command: python -m services.api\n"
                       "    environment: {SECRET_KEY: '${SECRET_KEY:?set it}', AXIOM_X: '${X_NEEDED:?set X_NEEDED}'}\n")
    with pytest.raises(StackPlanError, match=r"services.api.environment.AXIOM_X: variable X_NEEDED is required: "
                                             r"set X_NEEDED"):
        plan(files=[compose])
    (spec,) = plan({**ENV, "X_NEEDED": "1"}, files=[compose]).processes
    assert (spec.env["SECRET_KEY"], spec.env["AXIOM_X"]) == (ENV["SECRET_KEY"], "1")


def test_volume_paths_in_the_environment_become_local_directories(tmp_path):
    result = plan(data_dir=tmp_path)
    env = by_label(result)["dimse-scp-listener"].env
    assert env["AXIOM_SPOOL_DIR"] == str(tmp_path.resolve() / "volumes" / "listener-spool" / "scp")
    assert env["AXIOM_ALEMBIC_DIR"] == str(FIXTURES.resolve() / "alembic")  # a bind mount: its host path
    assert result.directories == (tmp_path.resolve() / "volumes" / "listener-spool",)
    assert plan(data_dir=tmp_path, only=["api"]).directories == ()


def test_the_repositorys_compose_files_give_the_documented_topology():
    """docker-compose.yml + docker-compose.enterprise.yml: the services, commands and ports `axiom stack up` runs."""
    files = default_compose_files()
    assert [path.name for path in files] == ["docker-compose.yml", "docker-compose.enterprise.yml"]
    result = build_plan(load_compose(files), ENV, scale={"dimse-query-worker": 2})
    migrate, broker_setup = result.one_shots
    assert (migrate.service, migrate.argv) == ("migrate", None)  # in-process upgrade_to_head
    assert (broker_setup.service, broker_setup.argv) == (
        "broker-setup", (sys.executable, "-m", "services.cli.main", "broker", "setup"))  # a process, after migrate
    assert broker_setup.env["RABBITMQ_URL"] == ENV["RABBITMQ_URL"]  # the caller's broker and vhost
    specs = by_label(result)
    modules = {label: spec.argv[2] for label, spec in specs.items()}
    assert modules == {"api": "services.api", "spanner-coordinator": "services.spanner_coordinator",
                       "dimse-query-worker-1": "services.worker", "dimse-query-worker-2": "services.worker",
                       "spanning-aggregator": "services.worker", "dimse-scp-listener": "services.listener"}
    assert {label: spec.port for label, spec in specs.items() if spec.port} == {
        "api": 8001, "spanner-coordinator": 8002, "dimse-scp-listener": 11114}
    assert specs["dimse-query-worker-2"].env["WORKER_TYPE"] == "dimse-query"
    assert specs["spanning-aggregator"].env["WORKER_TYPE"] == "aggregation"
    assert len({spec.env["AXIOM_INSTANCE_ID"] for spec in specs.values()}) == len(specs)
    assert all(spec.env["DATABASE_URL"] == ENV["DATABASE_URL"] for spec in specs.values())
    assert {"db", "redis", "rabbitmq"} <= set(result.skipped)


def test_interpolation_forms():
    env = {"SET": "x", "EMPTY": ""}
    assert interpolate("$SET ${SET} ${EMPTY:-d} ${EMPTY-d} ${UNSET-d} $$SET ${UNSET}.", env, where="t") == "x x d  d $SET ."
    assert interpolate({"a": ["${SET:-y}", 3]}, env, where="t") == {"a": ["x", 3]}
    with pytest.raises(StackPlanError, match="variable EMPTY is required: no"):
        interpolate("${EMPTY:?no}", env, where="t")


def test_migration_commands_are_recognised():
    assert is_migration(("alembic", "upgrade", "head"))
    assert is_migration((sys.executable, "-m", "alembic", "upgrade", "head"))
    assert is_migration((sys.executable, "-m", "services.cli.main", "db", "upgrade"))
    assert not is_migration(("alembic", "downgrade", "base"))


def test_a_one_shot_that_is_not_a_migration_runs_as_a_process(tmp_path):
    compose = tmp_path / "c.yml"
    compose.write_text("services:\n  seed:\n    build: .\n    command: axiom config apply /etc/axiom.yaml\n"
                       "  api:\n    build: .\n    command: python -m services.api\n"
                       "    depends_on: {seed: {condition: service_completed_successfully}}\n")
    (shot,) = plan(files=[compose]).one_shots
    assert shot.argv == (sys.executable, "-m", "services.cli.main", "config", "apply", "/etc/axiom.yaml")


def test_unusable_compose_files_are_reported(tmp_path):
    with pytest.raises(StackPlanError, match="no compose file found"):
        load_compose([])
    broken = tmp_path / "broken.yml"
    broken.write_text("services: [api]\n")
    with pytest.raises(StackPlanError, match="`services` must be a mapping"):
        load_compose([broken])
    cycle = tmp_path / "cycle.yml"
    cycle.write_text("services:\n  a: {build: ., command: python -m services.api, depends_on: [b]}\n"
                     "  b: {build: ., command: python -m services.api, depends_on: [a]}\n")
    with pytest.raises(StackPlanError, match="depends_on cycle"):
        plan(files=[cycle])
    no_cmd = tmp_path / "nocmd.yml"
    no_cmd.write_text("services:\n  a: {build: {context: ., dockerfile: Missing}}\n")
    with pytest.raises(StackPlanError, match="services.a: cannot read .*Missing for its CMD"):
        plan(files=[no_cmd])
    assert default_compose_files(tmp_path) == []


def test_command_options_and_environment_check():
    assert parse_scale(["dimse-query-worker=3", "api=1"]) == {"dimse-query-worker": 3, "api": 1}
    with pytest.raises(ValueError, match="--scale wants SERVICE=N"):
        parse_scale(["dimse-query-worker"])
    assert parse_only(["api,dimse-scp-listener", "spanner-coordinator"]) == [
        "api", "dimse-scp-listener", "spanner-coordinator"]
    assert parse_only([]) is None
    with pytest.raises(ValueError, match="needs REDIS_URL, SECRET_KEY in the environment"):
        check_environment({"DATABASE_URL": "x", "RABBITMQ_URL": "y"})
    with pytest.raises(ValueError, match="SECRET_KEY must be at least 32"):
        check_environment({**ENV, "SECRET_KEY": "short"})
