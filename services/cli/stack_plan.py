"""The compose files as a plan of local processes, for `axiom stack up` (services/cli/stack_cmd.py).

The service list, commands, environment, ports, dependencies and restart policies are read from the same
`docker-compose.yml` (+ `docker-compose.enterprise.yml`) Docker uses, so the two cannot drift:

* files are merged like `docker compose -f a -f b`: a later file's service keys replace the earlier ones, except
  `environment` (merged by variable) and `depends_on` (merged by service);
* `${VAR}`, `${VAR:-default}`, `${VAR-default}`, `${VAR:?message}`, `${VAR?message}`, `$VAR` and `$$` are
  interpolated from the caller's environment, as Compose does, in what the plan uses of the Axiom services only;
* a container path of a service's volume in its environment (AXIOM_SPOOL_DIR=/var/lib/axiom/spool) becomes the
  local path: a named volume is a directory under `<data_dir>/volumes/`, a bind mount its host path;
* services built from an image only (`db`, `redis`, `rabbitmq`, `fluentd`, ...) are infrastructure: the stack uses
  the servers named by DATABASE_URL / REDIS_URL / RABBITMQ_URL instead (STACK_VARIABLES, always taken from the
  caller, whatever the compose file says);
* a one-shot (a service another one depends on with `condition: service_completed_successfully`: `migrate`,
  `broker-setup`) runs to completion first, in dependency order; `alembic upgrade head` / `axiom db upgrade` run
  in-process as `shared.db.migrations.upgrade_to_head`, the same code, any other one-shot as a process
  (`broker-setup`: `axiom broker setup`, which needs RabbitMQ's management API);
* a service's command is its compose `command`, else the CMD of its `build.dockerfile`; `python -m X` runs with this
  interpreter (`sys.executable`);
* the first published port (`"8001:80"`) becomes the service's listen port (host side + port offset), set through
  its listen variables (LISTEN_VARIABLES); `--scale` (or `deploy.replicas`) gives N instances, each with its own
  AXIOM_INSTANCE_ID `<service>-<n>`; a service publishing a port cannot be scaled past 1 (the port would clash).
"""

from __future__ import annotations

import json
import re
import shlex
import sys
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Mapping

import yaml

REPO_ROOT = Path(__file__).resolve().parents[2]
COMPOSE_FILES = ("docker-compose.yml", "docker-compose.enterprise.yml")
STACK_VARIABLES = ("DATABASE_URL", "REDIS_URL", "RABBITMQ_URL", "SECRET_KEY")
# The listen address variables of each entrypoint (shared/config.py): where the published port goes.
LISTEN_VARIABLES = {
    "services.api": ("AXIOM_API_HOST", "AXIOM_API_PORT"),
    "services.spanner_coordinator": ("AXIOM_COORDINATOR_HOST", "AXIOM_COORDINATOR_PORT"),
    "services.listener": ("AXIOM_SCP_HOST", "AXIOM_SCP_PORT"),
}
MIGRATE_COMMANDS = (("alembic", "upgrade", "head"), ("axiom", "db", "upgrade"))
MERGED_KEYS = ("environment", "depends_on")
USED_KEYS = ("command", "ports", "restart", "deploy", "build", "volumes")
DEFAULT_DATA_DIR = Path("axiom-data") / "stack"
_VARIABLE = re.compile(r"\$(?:(\$)|\{([A-Za-z_][A-Za-z0-9_]*)(?:(:?[-?])([^}]*))?\}|([A-Za-z_][A-Za-z0-9_]*))")


class StackPlanError(ValueError):
    """The compose files or the options cannot be turned into a plan; the message names the file, service or key."""


@dataclass(frozen=True)
class ProcessSpec:
    """One local process: a compose service instance."""

    service: str
    instance: int
    argv: tuple[str, ...]
    env: Mapping[str, str]
    restart: str = "no"
    port: int | None = None

    @property
    def label(self) -> str:
        return self.service if self.instance == 0 else f"{self.service}-{self.instance}"


@dataclass(frozen=True)
class OneShot:
    """A one-shot service run to completion before the others (`migrate`, `broker-setup`); argv None = in-process
    migration."""

    service: str
    argv: tuple[str, ...] | None
    env: Mapping[str, str]


@dataclass(frozen=True)
class StackPlan:
    one_shots: tuple[OneShot, ...]
    processes: tuple[ProcessSpec, ...]
    skipped: tuple[str, ...] = field(default_factory=tuple)  # infrastructure services, provided by the environment
    directories: tuple[Path, ...] = field(default_factory=tuple)  # named volumes as local directories


# --- reading and merging -------------------------------------------------------------------------------------------


def default_compose_files(root: Path = REPO_ROOT) -> list[Path]:
    """The repository's compose files that exist (base first, then the enterprise overlay)."""
    return [root / name for name in COMPOSE_FILES if (root / name).is_file()]


def load_compose(paths: list[Path]) -> dict[str, dict[str, Any]]:
    """The merged `services` mapping of the compose files, in order (`docker compose -f ... -f ...`), not yet
    interpolated (build_plan interpolates what it uses); each service gets `_dir`, the directory of the file that
    defined it (for `build.context` and relative bind mounts)."""
    if not paths:
        raise StackPlanError("no compose file found (expected docker-compose.yml, or give --file)")
    services: dict[str, dict[str, Any]] = {}
    for path in paths:
        try:
            document = yaml.safe_load(Path(path).read_text(encoding="utf-8")) or {}
        except (OSError, yaml.YAMLError) as exc:
            raise StackPlanError(f"{path}: {exc}") from None
        if not isinstance(document, dict) or not isinstance(document.get("services", {}), dict):
            raise StackPlanError(f"{path}: `services` must be a mapping")
        for name, body in (document.get("services") or {}).items():
            merged = services.setdefault(name, {"_dir": str(Path(path).resolve().parent)})
            for key, value in (body or {}).items():
                if key in MERGED_KEYS and key in merged:
                    merged[key] = {**_as_mapping(merged[key], key, name), **_as_mapping(value, key, name)}
                else:
                    merged[key] = value
    return services


def interpolate(value: Any, environ: Mapping[str, str], *, where: str) -> Any:
    """Compose variable interpolation over every string of `value` (the module doc lists the forms)."""
    if isinstance(value, dict):
        return {key: interpolate(item, environ, where=where) for key, item in value.items()}
    if isinstance(value, list):
        return [interpolate(item, environ, where=where) for item in value]
    if not isinstance(value, str):
        return value

    def substitute(match: re.Match) -> str:
        escaped, name, operator, argument, bare = match.groups()
        if escaped:
            return "$"
        name = name or bare
        current = environ.get(name)
        if operator in (":-", "-"):
            unset = current is None or (operator == ":-" and current == "")
            return interpolate(argument, environ, where=where) if unset else current
        if operator in (":?", "?") and (current is None or (operator == ":?" and current == "")):
            raise StackPlanError(f"{where}: variable {name} is required: {argument or 'not set'}")
        return current or ""

    return _VARIABLE.sub(substitute, value)


def _as_mapping(value: Any, key: str, service: str) -> dict[str, Any]:
    """`environment` / `depends_on` in list or mapping form, as a mapping."""
    if value is None:
        return {}
    if isinstance(value, dict):
        return dict(value)
    if isinstance(value, list):
        if key == "environment":
            pairs = (str(item).split("=", 1) for item in value)
            return {pair[0]: pair[1] if len(pair) == 2 else None for pair in pairs}
        return {str(item): {"condition": "service_started"} for item in value}
    raise StackPlanError(f"services.{service}.{key} must be a list or a mapping")


# --- the plan ------------------------------------------------------------------------------------------------------


def build_plan(services: dict[str, dict[str, Any]], environ: Mapping[str, str], *, scale: Mapping[str, int] | None = None,
               only: list[str] | None = None, port_offset: int = 0, host: str = "127.0.0.1",
               data_dir: Path = DEFAULT_DATA_DIR) -> StackPlan:
    """The processes to run for the merged compose `services` (load_compose), in dependency order. Only the Axiom
    services are interpolated (an infrastructure service's required variables, e.g. POSTGRES_PASSWORD, are not
    needed); named volumes become directories under `data_dir`/volumes."""
    scale = dict(scale or {})
    axiom = [name for name in _ordered(services) if _is_axiom_service(name, services)]
    one_shot_names = _one_shots(services)
    long_running = [name for name in axiom if name not in one_shot_names]
    for name in [*scale, *(only or [])]:
        if name not in long_running:
            raise StackPlanError(f"unknown service {name!r}: the compose files define {', '.join(long_running)}")
    for name, count in scale.items():
        if count < 0:
            raise StackPlanError(f"--scale {name}={count}: the count must be 0 or more")
    views = {name: _interpolated(name, services[name], environ, data_dir) for name in axiom}
    one_shots = tuple(_one_shot(name, views[name], environ) for name in axiom if name in one_shot_names)
    processes: list[ProcessSpec] = []
    for name in long_running:
        if only and name not in only:
            continue
        count = scale.get(name, _replicas(views[name]))
        processes.extend(_instances(name, views[name], environ, count, port_offset, host))
    planned = one_shot_names | {spec.service for spec in processes}
    directories = sorted({path for name in planned & set(views) for path in views[name]["_named_volumes"]})
    skipped = tuple(name for name in services if name not in axiom)
    return StackPlan(one_shots=one_shots, processes=tuple(processes), skipped=skipped,
                     directories=tuple(directories))


def _interpolated(name: str, service: dict[str, Any], environ: Mapping[str, str], data_dir: Path) -> dict[str, Any]:
    """What the plan uses of one service, interpolated; its environment without the stack variables (taken from
    the caller) and with container paths of its volumes turned into local ones."""
    where = f"services.{name}"
    view = {key: interpolate(service[key], environ, where=f"{where}.{key}") for key in USED_KEYS if key in service}
    view["_dir"] = service.get("_dir", ".")
    mounts, named = volume_paths(view, data_dir)
    view["_named_volumes"] = named
    environment = {}
    for key, value in _as_mapping(service.get("environment"), "environment", name).items():
        if key in STACK_VARIABLES or value is None:
            environment[key] = None if key not in STACK_VARIABLES else environ.get(key)
            continue
        environment[key] = _local_path(interpolate(value, environ, where=f"{where}.environment.{key}"), mounts)
    view["environment"] = environment
    return view


def volume_paths(service: dict[str, Any], data_dir: Path) -> tuple[dict[str, str], list[Path]]:
    """Container path -> local path of each volume of the service (a named volume is `data_dir`/volumes/NAME, a
    bind mount its host path), and the named volumes' directories (to create)."""
    mounts, named = {}, []
    for entry in service.get("volumes") or []:
        if isinstance(entry, dict):
            source, target = entry.get("source"), entry.get("target")
        else:
            parts = str(entry).split(":")
            source, target = (parts[0], parts[1]) if len(parts) > 1 else (None, None)
        if not source or not target:
            continue  # an anonymous volume: nothing to map
        if source.startswith((".", "/", "~")):
            local = (Path(service["_dir"]) / Path(source).expanduser()).resolve()
        else:
            local = (Path(data_dir) / "volumes" / source).resolve()
            named.append(local)
        mounts[str(target).rstrip("/")] = str(local)
    return mounts, named


def _local_path(value: Any, mounts: Mapping[str, str]) -> Any:
    if not isinstance(value, str):
        return value
    for target in sorted(mounts, key=len, reverse=True):
        if value == target or value.startswith(target + "/"):
            return mounts[target] + value[len(target):]
    return value


def _instances(name: str, service: dict[str, Any], environ: Mapping[str, str], count: int, port_offset: int,
               host: str) -> list[ProcessSpec]:
    argv = resolve_command(name, service)
    port = _published_port(name, service)
    if port is not None and count > 1:
        raise StackPlanError(f"--scale {name}={count}: {name} publishes port {port}, so only one instance can run")
    compose_env = service["environment"]
    listen = LISTEN_VARIABLES.get(_module(argv) or "")
    specs = []
    for number in range(1, count + 1):
        env = service_environment(compose_env, environ)
        if count > 1 or compose_env.get("AXIOM_INSTANCE_ID") is None:
            env["AXIOM_INSTANCE_ID"] = name if count == 1 else f"{name}-{number}"
        if listen and port is not None:
            env[listen[0]], env[listen[1]] = host, str(port + port_offset)
        specs.append(ProcessSpec(service=name, instance=0 if count == 1 else number, argv=argv, env=env,
                                 restart=str(service.get("restart", "no")),
                                 port=None if port is None else port + port_offset))
    return specs


def service_environment(compose_env: Mapping[str, Any], environ: Mapping[str, str]) -> dict[str, str]:
    """The caller's environment, then the compose values (a bare `- NAME` keeps the caller's), then the stack
    variables from the caller again (the servers named by the environment win over the compose hostnames)."""
    env = dict(environ)
    for key, value in compose_env.items():
        if value is not None:
            env[key] = "true" if value is True else "false" if value is False else str(value)
    for key in STACK_VARIABLES:
        if key in environ:
            env[key] = environ[key]
    env["PYTHONUNBUFFERED"] = "1"
    return env


def _one_shot(name: str, service: dict[str, Any], environ: Mapping[str, str]) -> OneShot:
    argv = resolve_command(name, service)
    env = service_environment(service["environment"], environ)
    return OneShot(service=name, argv=None if is_migration(argv) else argv, env=env)


def is_migration(argv: tuple[str, ...]) -> bool:
    """`alembic upgrade head`, `python -m alembic upgrade head` or `axiom db upgrade` (any interpreter)."""
    words = tuple(Path(word).name if index == 0 else word for index, word in enumerate(argv))
    if words[:3] == (Path(sys.executable).name, "-m", "services.cli.main"):
        words = ("axiom", *words[3:])
    if len(words) > 2 and words[1] == "-m":
        words = words[2:]
    return words in MIGRATE_COMMANDS


def resolve_command(name: str, service: dict[str, Any]) -> tuple[str, ...]:
    """The service's argv for a local process: compose `command`, else its Dockerfile's CMD; `python` is this
    interpreter and `axiom` is `python -m services.cli.main`."""
    command = service.get("command")
    if command is None:
        command = dockerfile_cmd(name, service)
    argv = shlex.split(command) if isinstance(command, str) else [str(word) for word in command or []]
    if not argv:
        raise StackPlanError(f"services.{name}: no command (neither `command` nor a Dockerfile CMD)")
    if re.fullmatch(r"python(3(\.\d+)?)?", Path(argv[0]).name):
        argv[0] = sys.executable
    elif argv[0] == "axiom":
        argv[:1] = [sys.executable, "-m", "services.cli.main"]
    return tuple(argv)


def dockerfile_cmd(name: str, service: dict[str, Any]) -> str | list[str]:
    """The last CMD of the service's `build` Dockerfile (exec form as a list, shell form as a string)."""
    build = service.get("build")
    if build is None:
        raise StackPlanError(f"services.{name}: no `command` and no `build` to read a CMD from")
    build = {"context": build} if isinstance(build, str) else build
    context = Path(service.get("_dir", ".")) / str(build.get("context", "."))
    path = context / str(build.get("dockerfile", "Dockerfile"))
    try:
        text = path.read_text(encoding="utf-8").replace("\\\n", " ")
    except OSError as exc:
        raise StackPlanError(f"services.{name}: cannot read {path} for its CMD: {exc}") from None
    commands = [line.strip()[3:].strip() for line in text.splitlines() if line.strip().upper().startswith("CMD ")]
    if not commands:
        raise StackPlanError(f"services.{name}: {path} has no CMD")
    try:
        return json.loads(commands[-1]) if commands[-1].startswith("[") else commands[-1]
    except json.JSONDecodeError as exc:
        raise StackPlanError(f"services.{name}: {path}: CMD is not valid JSON: {exc}") from None


def _module(argv: tuple[str, ...]) -> str | None:
    return argv[2] if len(argv) > 2 and argv[1] == "-m" else None


def _published_port(name: str, service: dict[str, Any]) -> int | None:
    """The host side of the first `ports` entry ("8001:80", "127.0.0.1:8001:80/tcp", or the long syntax)."""
    ports = service.get("ports") or []
    if not ports:
        return None
    first = ports[0]
    published = first.get("published") if isinstance(first, dict) else (
        str(first).split("/")[0].rsplit(":", 1)[0].rsplit(":", 1)[-1] if ":" in str(first) else None)
    if published in (None, ""):
        return None
    try:
        return int(str(published).split("-")[0])
    except ValueError:
        raise StackPlanError(f"services.{name}.ports: cannot read the host port of {first!r}") from None


def _replicas(service: dict[str, Any]) -> int:
    replicas = (service.get("deploy") or {}).get("replicas", 1)
    return int(replicas) if replicas is not None else 1


def _one_shots(services: dict[str, dict[str, Any]]) -> set[str]:
    """Services another one waits for with `condition: service_completed_successfully`."""
    found = set()
    for name, service in services.items():
        for dependency, rule in _as_mapping(service.get("depends_on"), "depends_on", name).items():
            if isinstance(rule, dict) and rule.get("condition") == "service_completed_successfully":
                found.add(dependency)
    return found


def _is_axiom_service(name: str, services: dict[str, dict[str, Any]]) -> bool:
    """Built from this repository (`build`, or the image a built service produces), or running an Axiom command."""
    service = services[name]
    if "build" in service:
        return True
    built_images = {s.get("image") for s in services.values() if "build" in s and s.get("image")}
    if service.get("image") in built_images:
        return True
    command = service.get("command")
    words = shlex.split(command) if isinstance(command, str) else [str(w) for w in command or []]
    return bool(words) and (words[0] == "axiom" or any(w.startswith("services.") for w in words[:3])
                            or (len(words) > 2 and words[:1] == ["alembic"]))


def _ordered(services: dict[str, dict[str, Any]]) -> list[str]:
    """File order, with every service after what it depends on (StackPlanError naming a cycle)."""
    done: list[str] = []
    visiting: set[str] = set()

    def visit(name: str) -> None:
        if name in done or name not in services:
            return
        if name in visiting:
            raise StackPlanError(f"depends_on cycle through {name!r}")
        visiting.add(name)
        for dependency in _as_mapping(services[name].get("depends_on"), "depends_on", name):
            visit(dependency)
        visiting.discard(name)
        done.append(name)

    for name in services:
        visit(name)
    return done
