"""What `docker build` would put in /app is enough to run every Axiom service (no Docker engine needed).

The build context is made as the Docker CLI makes it (.dockerignore, moby/patternmatcher rules: `**`, `*`, `?`,
`!` exceptions, the last matching pattern wins, a pattern excluding a directory excludes what is under it) and
copied to a temporary /app. From there alone (PYTHONPATH=/app, cwd /app, as the image's editable install sees it):
every compose command, Dockerfile CMD and HEALTHCHECK module imports from /app, and the `migrate` one-shot's
`alembic upgrade head` brings an empty database to head. This catches a file the code reads at run time (alembic/,
a packaged definitions file) being left out of the image by .dockerignore.
"""

from __future__ import annotations

import os
import re
import shlex
import shutil
import subprocess
import sys
from functools import lru_cache
from pathlib import Path

import pytest
import yaml

ROOT = Path(__file__).resolve().parents[2]
COMPOSE_FILES = ("docker-compose.yml", "docker-compose.enterprise.yml")


# --- .dockerignore, as the Docker CLI reads it -------------------------------------------------------------------
def _pattern_regex(pattern: str) -> re.Pattern[str]:
    """moby/patternmatcher: `**` any number of path segments, `*` and `?` within one segment."""
    out, i = [], 0
    while i < len(pattern):
        if pattern.startswith("**/", i):
            out.append("(?:.*/)?")
            i += 3
        elif pattern.startswith("**", i):
            out.append(".*")
            i += 2
        elif pattern[i] == "*":
            out.append("[^/]*")
            i += 1
        elif pattern[i] == "?":
            out.append("[^/]")
            i += 1
        else:
            out.append(re.escape(pattern[i]))
            i += 1
    return re.compile("".join(out))


def dockerignore_rules(text: str) -> list[tuple[bool, re.Pattern[str]]]:
    """(exclude?, regex) per pattern line, in order (comments and blank lines skipped, paths cleaned)."""
    rules = []
    for line in text.splitlines():
        line = line.strip()
        if not line or line.startswith("#"):
            continue
        negated = line.startswith("!")
        pattern = os.path.normpath(line[1:] if negated else line).lstrip("/")
        rules.append((not negated, _pattern_regex(pattern)))
    return rules


def excluded(path: str, rules: list[tuple[bool, re.Pattern[str]]]) -> bool:
    """Whether `path` (relative, with /) is left out: the last rule matching it or one of its parents decides."""
    parts = path.split("/")
    prefixes = ["/".join(parts[:n]) for n in range(1, len(parts) + 1)]
    verdict = False
    for exclude, regex in rules:
        if any(regex.fullmatch(prefix) for prefix in prefixes):
            verdict = exclude
    return verdict


def test_the_pattern_rules_follow_docker():
    rules = dockerignore_rules("# c\n/deploy\n!deploy/rabbitmq/definitions.json\n**/__pycache__\n*.egg-info\n.env.*\n"
                               "!.env.example\n")
    assert excluded("deploy/redis/redis.conf", rules) and not excluded("deploy/rabbitmq/definitions.json", rules)
    assert excluded("shared/__pycache__/x.pyc", rules) and excluded("__pycache__/x.pyc", rules)
    assert excluded("axiom_dicom.egg-info/PKG-INFO", rules) and not excluded("shared/x.egg-info", rules)
    assert excluded(".env.local", rules) and not excluded(".env.example", rules)
    assert not excluded("shared/deploy.py", rules)


# --- the context --------------------------------------------------------------------------------------------------
@lru_cache(maxsize=1)
def context_files() -> tuple[str, ...]:
    """The repository's files (tracked and new, not git-ignored) that .dockerignore lets into the context."""
    listed = subprocess.run(["git", "ls-files", "-z", "--cached", "--others", "--exclude-standard"], cwd=ROOT,
                            capture_output=True, check=True).stdout.decode().split("\0")
    rules = dockerignore_rules((ROOT / ".dockerignore").read_text(encoding="utf-8"))
    return tuple(path for path in listed if path and (ROOT / path).is_file() and not excluded(path, rules))


@pytest.fixture(scope="module")
def app_dir(tmp_path_factory) -> Path:
    if shutil.which("git") is None or not (ROOT / ".git").exists():
        pytest.skip("needs the git checkout to list the build context")
    app = tmp_path_factory.mktemp("image") / "app"
    for path in context_files():
        (app / path).parent.mkdir(parents=True, exist_ok=True)
        shutil.copy2(ROOT / path, app / path)
    return app


def in_image(app: Path, argv: list[str], **env: str) -> subprocess.CompletedProcess:
    """Run `argv` with /app as the image's working directory and import root (nothing from the checkout)."""
    environ = {key: value for key, value in os.environ.items() if not key.startswith(("AXIOM_", "DATABASE_URL"))}
    environ.update(PYTHONPATH=str(app), PYTHONDONTWRITEBYTECODE="1", **env)
    return subprocess.run(argv, cwd=app, env=environ, capture_output=True, text=True, timeout=120)


def entry_modules() -> set[str]:
    """The module of every compose command, Dockerfile CMD and python HEALTHCHECK of the Axiom services."""
    modules: set[str] = set()
    argvs: list[list[str]] = []
    for name in COMPOSE_FILES:
        for body in yaml.safe_load((ROOT / name).read_text(encoding="utf-8"))["services"].values():
            if isinstance(body.get("build"), dict):
                command = body.get("command")
                if command is not None:
                    argvs.append(command if isinstance(command, list) else shlex.split(command))
                argvs.append(list((body.get("healthcheck") or {}).get("test", ["NONE"]))[1:])
    for dockerfile in ROOT.glob("Dockerfile.*"):
        for match in re.finditer(r'^(?:CMD|  CMD) (\[.*\])$', dockerfile.read_text(encoding="utf-8"), re.M):
            argvs.append(yaml.safe_load(match.group(1)))
    for argv in argvs:
        if argv[:2] == ["python", "-m"]:
            modules.add(argv[2])
        elif argv[:1] == ["axiom"]:
            modules.add("services.cli.main")
        elif argv[:1] == ["alembic"]:
            modules.add("alembic.config")
    return modules


def test_every_entry_point_imports_from_the_image(app_dir):
    modules = entry_modules()
    assert {"services.api", "services.listener", "services.spanner_coordinator", "services.cli.main"} <= modules
    script = ("import importlib, sys\n"
              "app = sys.argv[1] + '/'\n"
              "for name in sys.argv[2:]:\n"
              "    module = importlib.import_module(name)\n"
              "    if name.startswith(('services', 'shared')) and not module.__file__.startswith(app):\n"
              "        sys.exit(f'{name} came from {module.__file__}, not the image')\n")
    proc = in_image(app_dir, [sys.executable, "-c", script, str(app_dir), *sorted(modules)])
    assert proc.returncode == 0, proc.stderr[-3000:]


def test_the_migrate_one_shot_runs_from_the_image(app_dir, tmp_path):
    database = f"sqlite:///{tmp_path / 'axiom.db'}"
    proc = in_image(app_dir, [sys.executable, "-m", "alembic", "upgrade", "head"], DATABASE_URL=database)
    assert proc.returncode == 0, proc.stderr[-3000:]
    heads = in_image(app_dir, [sys.executable, "-m", "alembic", "current"], DATABASE_URL=database)
    assert "(head)" in heads.stdout, heads.stdout + heads.stderr


def test_nothing_secret_or_local_reaches_the_context():
    files = context_files()
    assert not [path for path in files if re.match(r"(\.env($|\.(?!example$))|\.git/|\.venv/|axiom-data/|tests/)",
                                                   path)]
    for needed in ("pyproject.toml", "README.md", "alembic.ini", "alembic/env.py", "shared/config.py",
                   "services/api/__main__.py"):
        assert needed in files, f".dockerignore leaves {needed} out of the image"
