"""The deployment files agree with the code: docker-compose*.yml, Dockerfile.*, .dockerignore and .env.example.

Commands and Dockerfile CMD/HEALTHCHECKs are real entrypoints of the package, published ports match the settings,
every variable compose sets is one the code reads, the overlay's services have health checks, dependency
conditions, resource limits, both networks and non-blocking Fluentd logging; and, when Debian's `docker-compose`
is installed, `docker-compose ... config -q` accepts the merged files (CI installs it: .ci/run).
"""

from __future__ import annotations

import json
import os
import re
import shlex
import shutil
import subprocess
from pathlib import Path

import pytest
import typer
import yaml
from pydantic_settings import BaseSettings

from services.cli.main import app as axiom_app
from shared.config import ApiSettings, CoordinatorSettings, ScpSettings, Settings
from shared.messaging.contracts import WORKER_QUEUES
from tests.peers import require

ROOT = Path(__file__).resolve().parents[2]
BASE, OVERLAY, LOGGING = "docker-compose.yml", "docker-compose.enterprise.yml", "docker-compose.logging.yml"
AXIOM_DOCKERFILES = ("Dockerfile.api", "Dockerfile.worker", "Dockerfile.listener", "Dockerfile.spanner-coordinator")
OVERLAY_SERVICES = ("spanner-coordinator", "dimse-query-worker", "spanning-aggregator", "dimse-scp-listener")
SERVICE_MARKER = "# --- service ---"
# Variables compose may set for Axiom services that are not shared/config.py aliases, with where they are read.
DOCUMENTED_EXTRAS = {"AXIOM_ALEMBIC_DIR": "shared/db/migrations.py"}
# Compose-only variables (interpolated into the files, never read by Axiom itself).
COMPOSE_ONLY = {"POSTGRES_USER", "POSTGRES_PASSWORD", "POSTGRES_DB", "RABBITMQ_DEFAULT_USER", "RABBITMQ_DEFAULT_PASS",
                "AXIOM_SHARED_NETWORK"}
THROWAWAY = {"SECRET_KEY": "test-throwaway-secret-key-0123456789abcdef", "POSTGRES_PASSWORD": "pw",
             "RABBITMQ_DEFAULT_PASS": "pw"}
_VARIABLE = re.compile(r"\$\{([A-Za-z_][A-Za-z0-9_]*)(?::?[-?][^}]*)?\}")


def load(name: str) -> dict:
    return yaml.safe_load((ROOT / name).read_text(encoding="utf-8"))


def merged_services(*names: str) -> dict[str, dict]:
    """The services of the files merged like `docker compose -f a -f b` (a later file's keys win)."""
    services: dict[str, dict] = {}
    for name in names:
        for service, body in load(name)["services"].items():
            services.setdefault(service, {}).update(body)
    return services


def axiom_services() -> dict[str, dict]:
    """Services built from the repository (the Axiom image), not third-party images."""
    return {name: body for name, body in merged_services(BASE, OVERLAY).items()
            if isinstance(body.get("build"), dict) and body["build"].get("context") == "."}


def settings_aliases() -> set[str]:
    aliases: set[str] = set()

    def walk(model: type[BaseSettings]) -> None:
        for field in model.model_fields.values():
            if isinstance(field.annotation, type) and issubclass(field.annotation, BaseSettings):
                walk(field.annotation)
            elif field.alias:
                aliases.add(field.alias)

    walk(Settings)
    return aliases


def axiom_subcommands() -> dict[str, object]:
    return typer.main.get_command(axiom_app).commands


def entrypoint_problem(argv: list[str]) -> str | None:
    """None when `argv` runs a real entrypoint of this repository, else why not."""
    if argv[:2] == ["python", "-m"] and len(argv) >= 3:
        parts = argv[2].split(".")
        package, module = ROOT.joinpath(*parts) / "__main__.py", ROOT.joinpath(*parts[:-1]) / f"{parts[-1]}.py"
        if parts[0] != "services" or not (package.is_file() or module.is_file()):
            return f"{argv[2]} is not a runnable module under services/"
        if module.is_file() and "__main__" not in module.read_text(encoding="utf-8"):
            return f"{module} has no __main__ block"
        return None
    if argv[:1] == ["axiom"]:
        group = axiom_subcommands().get(argv[1]) if len(argv) > 1 else None
        if group is None:
            return f"`axiom {argv[1:2]}` is not a command"
        if len(argv) > 2 and not argv[2].startswith("-") and argv[2] not in getattr(group, "commands", {}):
            return f"`axiom {argv[1]} {argv[2]}` is not a command"
        return None
    if argv == ["alembic", "upgrade", "head"]:
        ok = (ROOT / "alembic.ini").is_file() and (ROOT / "alembic" / "env.py").is_file()
        return None if ok else "alembic.ini / alembic/env.py missing"
    return f"{argv} is not `python -m services.X`, an `axiom` command or `alembic upgrade head`"


def dockerfile_exec_forms(path: Path, instruction: str) -> list[list[str]]:
    """The exec-form (JSON) arguments of every `instruction` line (continuations joined)."""
    text = re.sub(r"\\\n\s*", " ", path.read_text(encoding="utf-8"))
    found = []
    for line in text.splitlines():
        match = re.match(rf"^{instruction}\s+(?:--\S+\s+)*(?:CMD\s+)?(\[.*\])\s*$", line)
        if match:
            found.append(json.loads(match.group(1)))
    return found


def published(body: dict) -> list[tuple[int, int]]:
    pairs = []
    for port in body.get("ports", []):
        host, _, container = str(port).split("/")[0].rpartition(":")
        pairs.append((int(host.rpartition(":")[2]), int(container)))
    return pairs


# --- commands and Dockerfiles ---------------------------------------------------------------------------------


@pytest.mark.parametrize("service", sorted(axiom_services()))
def test_every_command_and_dockerfile_is_a_real_entrypoint(service):
    body = axiom_services()[service]
    dockerfile = ROOT / body["build"]["dockerfile"]
    assert dockerfile.is_file(), f"{service}: {dockerfile.name} does not exist"
    (cmd,) = dockerfile_exec_forms(dockerfile, "CMD")
    assert entrypoint_problem(cmd) is None, f"{dockerfile.name}: {entrypoint_problem(cmd)}"
    command = body.get("command")
    if command is not None:
        argv = command if isinstance(command, list) else shlex.split(command)
        assert entrypoint_problem(argv) is None, f"{service}: {entrypoint_problem(argv)}"
    if "healthcheck" in body and body["healthcheck"]["test"][:2] == ["CMD", "python"]:
        test = body["healthcheck"]["test"][1:]
        assert test[1] == "-c" or entrypoint_problem(test) is None, f"{service}: healthcheck {test}"


def test_the_migration_command_exists_as_an_axiom_command_too():
    assert entrypoint_problem(["axiom", "db", "upgrade"]) is None
    assert entrypoint_problem(["python", "-m", "services.nope"]) is not None
    assert entrypoint_problem(["axiom", "db", "nope"]) is not None


def test_the_four_dockerfiles_differ_only_in_their_service_lines():
    heads, tails = set(), {}
    for name in AXIOM_DOCKERFILES:
        text = (ROOT / name).read_text(encoding="utf-8")
        head, marker, tail = text.partition(SERVICE_MARKER)
        assert marker, f"{name}: no `{SERVICE_MARKER}` line"
        heads.add(head[head.index("\nFROM "):])  # the comment block above FROM names the service
        tails[name] = tail
        assert re.search(r"^FROM python:3\.11-slim$", head, re.M), f"{name}: not python:3.11-slim"
        assert re.search(r"^USER axiom$", head, re.M), f"{name}: runs as root"
        assert "HEALTHCHECK" in tail, f"{name}: no HEALTHCHECK"
        for instruction in ("HEALTHCHECK", "CMD"):
            for argv in dockerfile_exec_forms(ROOT / name, instruction):
                assert argv[1] == "-c" or entrypoint_problem(argv) is None, f"{name}: {argv}"
    assert len(heads) == 1, "the Dockerfiles' common part differs"
    (head,) = heads
    # Dependency layer before the source: pyproject.toml alone is copied and installed before `COPY . .`.
    assert head.index("COPY pyproject.toml") < head.index("pip install -r") < head.index("COPY . .")
    assert "--no-deps" in head[head.index("COPY . ."):], "the source layer must not install dependencies"
    assert len(set(tails.values())) == len(AXIOM_DOCKERFILES)


def dockerignore_patterns() -> list[str]:
    return [line.strip() for line in (ROOT / ".dockerignore").read_text().splitlines()
            if line.strip() and not line.startswith("#")]


def _glob_regex(pattern: str) -> re.Pattern:
    """A .dockerignore pattern as a regex (Go filepath.Match plus `**`: `*` and `?` stop at `/`)."""
    out, index = "", 0
    while index < len(pattern):
        char = pattern[index]
        if pattern.startswith("**/", index):
            out, index = out + "(?:.*/)?", index + 3
        elif pattern.startswith("**", index):
            out, index = out + ".*", index + 2
        elif char == "*":
            out, index = out + "[^/]*", index + 1
        elif char == "?":
            out, index = out + "[^/]", index + 1
        elif char == "[":
            end = pattern.index("]", index)
            out, index = out + pattern[index:end + 1].replace("[^", "[^/").replace("[!", "[^/"), end + 1
        else:
            out, index = out + re.escape(char), index + 1
    return re.compile(out)


def dockerignore_excludes(patterns: list[str], path: str) -> bool:
    """Whether Docker leaves `path` out of the build context: a pattern matches the path or one of its parent
    directories, a `!` pattern re-includes, and the last matching line decides (moby's patternmatcher)."""
    excluded = False
    parents = ["/".join(path.split("/")[:count]) for count in range(1, path.count("/") + 2)]
    for pattern in patterns:
        negated = pattern.startswith("!")
        regex = _glob_regex(os.path.normpath(pattern.lstrip("!").strip()).lstrip("/"))
        if any(regex.fullmatch(parent) for parent in parents):
            excluded = not negated
    return excluded


def test_the_dockerignore_matcher_follows_dockers_rules():
    assert dockerignore_excludes(["deploy"], "deploy/x/y.conf")
    assert not dockerignore_excludes(["deploy", "!deploy/x/y.conf"], "deploy/x/y.conf")
    assert dockerignore_excludes(["!deploy/x/y.conf", "deploy"], "deploy/x/y.conf")  # the last match decides
    assert dockerignore_excludes(["**/*.py[cod]"], "shared/a.pyc") and dockerignore_excludes(["*.md"], "README.md")
    assert not dockerignore_excludes(["*.md"], "docs/x.md")  # `*` does not cross `/`


def test_the_dockerignore_keeps_secrets_out_and_the_package_in():
    patterns = dockerignore_patterns()
    for path in (".env", ".env.local", ".git/config", ".venv/bin/python", "tests/unit/test_compose.py",
                 "shared/__pycache__/config.cpython-311.pyc", "docs/operations.md", "deploy/rabbitmq/rabbitmq.conf",
                 "deploy/fluentd/fluent.conf", "docker-compose.yml", "axiom-data/axiom.db"):
        assert dockerignore_excludes(patterns, path), f".dockerignore sends {path} to the Docker daemon"
    for path in ("shared/config.py", "services/cli/main.py", "alembic/env.py", "alembic.ini", "pyproject.toml",
                 "README.md", ".env.example", "deploy/rabbitmq/definitions.json"):
        assert not dockerignore_excludes(patterns, path), f".dockerignore drops {path}, which the image needs"


# --- the broker-setup one-shot ----------------------------------------------------------------------------------


def test_broker_setup_runs_once_after_rabbitmq_and_before_everything_that_uses_it():
    base = load(BASE)["services"]
    body = axiom_services()["broker-setup"]
    assert body["command"] == ["axiom", "broker", "setup"] and body["restart"] == "no"
    assert body["build"] == {"context": ".", "dockerfile": "Dockerfile.api"}
    assert body["depends_on"] == {"rabbitmq": {"condition": "service_healthy"}}
    assert body["environment"] == base["migrate"]["environment"]  # the shared axiom environment (x-axiom-environment)
    assert "RABBITMQ_URL" in body["environment"]
    one_shots = {"migrate", "broker-setup"}
    for name, service in axiom_services().items():
        if name not in one_shots:
            condition = service["depends_on"].get("broker-setup", {}).get("condition")
            assert condition == "service_completed_successfully", f"{name} does not wait for broker-setup"


def test_the_policy_file_reaches_the_one_shot_not_the_broker():
    """The image holds deploy/rabbitmq/definitions.json where `axiom broker setup` looks by default; the broker
    itself no longer mounts it (it is not loaded at boot: deploy/rabbitmq/rabbitmq.conf)."""
    from shared.messaging.broker_policy import DEFAULT_DEFINITIONS

    assert DEFAULT_DEFINITIONS == ROOT / "deploy" / "rabbitmq" / "definitions.json"
    assert not dockerignore_excludes(dockerignore_patterns(), "deploy/rabbitmq/definitions.json")
    for name in (BASE, OVERLAY, LOGGING):
        for service, body in load(name)["services"].items():
            assert not any("definitions.json" in str(volume) for volume in body.get("volumes", [])), service


# --- ports, environment, workers ------------------------------------------------------------------------------


@pytest.mark.parametrize(("service", "variable", "default", "mapping"), [
    ("api", "AXIOM_API_PORT", ApiSettings.model_fields["port"].default, (8001, 80)),
    ("spanner-coordinator", "AXIOM_COORDINATOR_PORT", CoordinatorSettings.model_fields["port"].default,
     (8002, 8000)),
    ("dimse-scp-listener", "AXIOM_SCP_PORT", ScpSettings.model_fields["port"].default, (11114, 11114)),
])
def test_published_ports_agree_with_the_settings(service, variable, default, mapping):
    body = axiom_services()[service]
    listen = int(body["environment"].get(variable, default))
    assert listen == default == mapping[1], f"{service}: {variable}={listen}, settings default {default}"
    assert published(body) == [mapping], f"{service}: publishes {published(body)}, expected {mapping}"


def test_every_variable_compose_sets_is_read_by_the_code():
    known = settings_aliases() | set(DOCUMENTED_EXTRAS)
    for service, body in axiom_services().items():
        unknown = set(body.get("environment", {})) - known
        assert not unknown, f"{service} sets {sorted(unknown)}, which no code reads"
        assert "FLUENTD_HOST" not in body.get("environment", {}), f"{service}: logs would be shipped twice"


def test_the_workers_cover_every_queue_and_scale():
    services = axiom_services()
    worker = services["dimse-query-worker"]
    assert "container_name" not in worker, "a container_name prevents --scale dimse-query-worker=N"
    types = {body["environment"]["WORKER_TYPE"] for body in services.values() if "WORKER_TYPE" in
             body.get("environment", {})}
    assert types <= set(WORKER_QUEUES)
    consumed = {queue for worker_type in types for queue in WORKER_QUEUES[worker_type]}
    assert consumed == set(WORKER_QUEUES["all"]), f"no worker consumes {set(WORKER_QUEUES['all']) - consumed}"


# --- the enterprise overlay -----------------------------------------------------------------------------------


@pytest.mark.parametrize("service", OVERLAY_SERVICES)
def test_overlay_services_are_production_shaped(service):
    body = load(OVERLAY)["services"][service]
    assert body["healthcheck"]["test"], f"{service}: no healthcheck"
    conditions = {name: dep["condition"] for name, dep in body["depends_on"].items()}
    assert conditions == {"db": "service_healthy", "redis": "service_healthy", "rabbitmq": "service_healthy",
                          "migrate": "service_completed_successfully",
                          "broker-setup": "service_completed_successfully"}
    limits = body["deploy"]["resources"]["limits"]
    assert limits.get("cpus") and limits.get("memory"), f"{service}: no resource limits"
    assert set(body["networks"]) == {"default", "shared"}
    logging = body["logging"]
    assert logging["driver"] == "fluentd"
    options = logging["options"]
    assert options["tag"] == f"axiom.{service}.{{{{.Name}}}}"
    assert options["fluentd-async"] == "true" and int(options["fluentd-buffer-limit"]) > 0
    assert options["fluentd-address"].startswith("${FLUENTD_HOST")


def test_every_mounted_file_exists():
    for name in (BASE, OVERLAY, LOGGING):
        for service, body in load(name)["services"].items():
            for volume in body.get("volumes", []):
                source = str(volume).split(":")[0]
                if source.startswith("./"):
                    assert (ROOT / source).is_file(), f"{name}: {service} mounts {source}, which does not exist"


# --- .env.example ----------------------------------------------------------------------------------------------


def env_example() -> dict[str, str]:
    entries = {}
    for line in (ROOT / ".env.example").read_text(encoding="utf-8").splitlines():
        match = re.match(r"^#?\s?([A-Z][A-Z0-9_]*)=(.*)$", line)
        if match:
            entries[match.group(1)] = match.group(2)
    return entries


def test_env_example_lists_every_variable_and_no_secret():
    entries = env_example()
    interpolated = set()
    for name in (BASE, OVERLAY, LOGGING):
        interpolated |= set(_VARIABLE.findall((ROOT / name).read_text(encoding="utf-8")))
    missing = (settings_aliases() | interpolated | COMPOSE_ONLY | {"GOOGLE_APPLICATION_CREDENTIALS"}) - set(entries)
    assert not missing, f".env.example lacks {sorted(missing)}"
    for secret in ("SECRET_KEY", "POSTGRES_PASSWORD", "RABBITMQ_DEFAULT_PASS", "AXIOM_METRICS_TOKEN"):
        assert entries[secret] == "", f".env.example gives {secret} a value"


# --- docker-compose config ------------------------------------------------------------------------------------


def compose_config(*files: str, env: dict[str, str]) -> subprocess.CompletedProcess:
    argv = ["docker-compose", "--project-directory", str(ROOT)]
    for name in files:
        argv += ["-f", str(ROOT / name)]
    clean = {key: value for key, value in os.environ.items() if key not in THROWAWAY}
    return subprocess.run(argv + ["config", "-q"], env={**clean, **env}, capture_output=True, text=True,
                          timeout=60, cwd=ROOT)


@pytest.mark.parametrize("files", [(BASE,), (BASE, OVERLAY), (BASE, OVERLAY, LOGGING)])
def test_docker_compose_accepts_the_merged_files(files):
    require(shutil.which("docker-compose") is not None, "docker-compose is not installed (apt-get install "
                                                        "docker-compose)")
    result = compose_config(*files, env=THROWAWAY)
    assert result.returncode == 0, result.stderr


def test_docker_compose_refuses_to_start_without_a_secret_key():
    require(shutil.which("docker-compose") is not None, "docker-compose is not installed (apt-get install "
                                                        "docker-compose)")
    result = compose_config(BASE, OVERLAY, env={**THROWAWAY, "SECRET_KEY": ""})
    assert result.returncode != 0 and "set SECRET_KEY in .env" in result.stderr
