"""RabbitMQ policies from a definitions file, applied through the management HTTP API (`axiom broker setup`).

Axiom's queue limits (policy `spanning-limits` in deploy/rabbitmq/definitions.json, the single source of the
policy) are applied to the running broker, not loaded at boot: a boot-time definitions file makes RabbitMQ skip
seeding its default user (deploy/rabbitmq/rabbitmq.conf explains why). Three steps, each a pure function or one
round of HTTP calls:

* `load_policies(path)`: the `policies` list of a RabbitMQ definitions file (the format `rabbitmqctl
  export_definitions` writes, https://www.rabbitmq.com/docs/definitions). A policy's own `vhost` is ignored: every
  policy goes to the vhost RABBITMQ_URL names.
* `management_target(rabbitmq_url, management_url)`: where and as whom. The API is AXIOM_RABBITMQ_MANAGEMENT_URL,
  else `http://<RABBITMQ_URL's host>:15672`, the management plugin's default listener
  (https://www.rabbitmq.com/docs/management#usage-ui). User, password and vhost are RABBITMQ_URL's, read by kombu
  exactly as the services read them: `amqp://h//` and `amqp://h` are vhost `/`, `%2F` decodes to `/`, and a URL
  without credentials means guest/guest (https://www.rabbitmq.com/docs/uri-spec).
* `apply_policies(target, policies, wait_seconds=...)`: waits up to `wait_seconds` for the API to answer (a broker's
  health check can pass before the management listener is up), checks that the vhost exists, then per policy
  `GET /api/policies/{vhost}/{name}` and, unless the broker already holds exactly that policy,
  `PUT /api/policies/{vhost}/{name}` with `pattern`, `definition`, `priority` and `apply-to`
  (https://www.rabbitmq.com/docs/http-api-reference; 201 created, 204 updated). Running it again changes nothing.
  Setting a policy needs a user tagged `policymaker` or `administrator`
  (https://www.rabbitmq.com/docs/management#permissions).

Every failure is a BrokerSetupError with one line for the operator. No message contains the password: the
credentials travel only in the Authorization header, and URLs are shown without user info.
"""

from __future__ import annotations

import json
import logging
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable, Mapping, Sequence
from urllib.parse import quote, urlsplit

import httpx
from kombu import Connection

from shared.logging import log_event

logger = logging.getLogger(__name__)
DEFAULT_DEFINITIONS = Path(__file__).resolve().parents[2] / "deploy" / "rabbitmq" / "definitions.json"
MANAGEMENT_PORT = 15672
AMQP_SCHEMES = ("amqp", "amqps", "pyamqp")
RETRY_STATUSES = frozenset({502, 503, 504})  # a proxy or a node still starting: the API is not up yet
REQUEST_TIMEOUT = 5.0
MAX_RETRY_DELAY = 2.0
NOT_REACHABLE_HINT = ("enable the rabbitmq_management plugin (`rabbitmq-plugins enable rabbitmq_management`) or set "
                      "AXIOM_RABBITMQ_MANAGEMENT_URL")
TAG_HINT = "the user needs the management tag `policymaker` or `administrator`"


class BrokerSetupError(ValueError):
    """The policies cannot be applied; the message is one line for the operator and never holds the password."""


@dataclass(frozen=True)
class Policy:
    """One policy of a definitions file, as the management API takes it
    (https://www.rabbitmq.com/docs/parameters#policies). `priority` 0 and `apply-to` `all` are RabbitMQ's defaults
    when the file leaves them out."""

    name: str
    pattern: str
    definition: Mapping[str, Any]
    priority: int = 0
    apply_to: str = "all"

    def body(self) -> dict[str, Any]:
        """The JSON body of `PUT /api/policies/{vhost}/{name}`."""
        return {"pattern": self.pattern, "definition": dict(self.definition), "priority": self.priority,
                "apply-to": self.apply_to}

    def matches(self, existing: Mapping[str, Any]) -> bool:
        """True when `existing` (a `GET /api/policies/{vhost}/{name}` answer) is this very policy."""
        return all(existing.get(key) == value for key, value in self.body().items())


@dataclass(frozen=True)
class ManagementTarget:
    """The management API (`base_url`, without user info) and RABBITMQ_URL's vhost and credentials."""

    base_url: str
    vhost: str
    username: str
    password: str = field(repr=False)


@dataclass(frozen=True)
class PolicyChange:
    """What `apply_policies` did with one policy: `created`, `updated` or `unchanged`."""

    name: str
    action: str


# --- the definitions file ------------------------------------------------------------------------------------------


def load_policies(path: Path | str) -> tuple[Policy, ...]:
    """The policies of the definitions file at `path`; BrokerSetupError when it is unreadable, not JSON, has no
    `policies`, or a policy lacks its `name`, `pattern` or `definition` (or repeats a name)."""
    path = Path(path)
    try:
        document = json.loads(path.read_text(encoding="utf-8"))
    except OSError as exc:
        raise BrokerSetupError(f"cannot read the definitions file {path}: {exc.strerror or exc}") from None
    except (UnicodeDecodeError, json.JSONDecodeError) as exc:
        raise BrokerSetupError(f"definitions file {path} is not valid JSON: {exc}") from None
    entries = document.get("policies") if isinstance(document, dict) else None
    if not isinstance(entries, list) or not entries:
        raise BrokerSetupError(f"definitions file {path} has no policies (expected a non-empty `policies` list, "
                               "as in deploy/rabbitmq/definitions.json)")
    policies = tuple(_policy(entry, index, path) for index, entry in enumerate(entries))
    names = [policy.name for policy in policies]
    duplicates = sorted({name for name in names if names.count(name) > 1})
    if duplicates:
        raise BrokerSetupError(f"definitions file {path}: policy {', '.join(duplicates)} is defined more than once "
                               "(all policies go to RABBITMQ_URL's vhost)")
    return policies


def _policy(entry: Any, index: int, path: Path) -> Policy:
    where = f"definitions file {path}: policies[{index}]"
    if not isinstance(entry, dict):
        raise BrokerSetupError(f"{where} is not an object")
    name, pattern, definition = entry.get("name"), entry.get("pattern"), entry.get("definition")
    priority, apply_to = entry.get("priority", 0), entry.get("apply-to", "all")
    if not isinstance(name, str) or not name:
        raise BrokerSetupError(f"{where} has no `name`")
    if not isinstance(pattern, str) or not pattern:
        raise BrokerSetupError(f"{where} ({name}) has no `pattern`")
    if not isinstance(definition, dict) or not definition:
        raise BrokerSetupError(f"{where} ({name}) has no `definition` object")
    if not isinstance(priority, int) or isinstance(priority, bool):
        raise BrokerSetupError(f"{where} ({name}): `priority` must be an integer")
    if not isinstance(apply_to, str) or not apply_to:
        raise BrokerSetupError(f"{where} ({name}): `apply-to` must be a string such as \"queues\"")
    return Policy(name=name, pattern=pattern, definition=definition, priority=priority, apply_to=apply_to)


# --- where and as whom ---------------------------------------------------------------------------------------------


def management_target(rabbitmq_url: str, management_url: str | None = None) -> ManagementTarget:
    """The management API and the vhost, user and password of `rabbitmq_url` (module doc); BrokerSetupError for an
    unusable URL (never echoed: it holds the password)."""
    try:
        scheme = urlsplit(rabbitmq_url).scheme
        info = Connection(rabbitmq_url).info() if scheme in AMQP_SCHEMES else None
    except ValueError:
        info = None
    if info is None:
        raise BrokerSetupError("RABBITMQ_URL is not a valid amqp:// or amqps:// URL "
                               "(e.g. amqp://axiom:secret@rabbitmq:5672//)")
    if management_url:
        base_url = _management_base(management_url)
    else:
        host = str(info["hostname"])
        base_url = f"http://{f'[{host}]' if ':' in host else host}:{MANAGEMENT_PORT}"
    return ManagementTarget(base_url=base_url, vhost=str(info["virtual_host"]), username=str(info["userid"]),
                            password=str(info["password"]))


def _management_base(url: str) -> str:
    """AXIOM_RABBITMQ_MANAGEMENT_URL without a trailing slash (a path prefix, management.path_prefix, is kept)."""
    try:
        parts = urlsplit(url.strip())
        has_credentials = parts.username is not None or parts.password is not None
        ok = parts.scheme in ("http", "https") and bool(parts.hostname)
        port = parts.port  # ValueError for a port that is not a number
    except ValueError:
        ok, has_credentials, port = False, False, None
    if not ok:
        raise BrokerSetupError("AXIOM_RABBITMQ_MANAGEMENT_URL must be an http:// or https:// URL of the management "
                               f"API (e.g. http://rabbitmq:{MANAGEMENT_PORT})")
    if has_credentials:
        raise BrokerSetupError("AXIOM_RABBITMQ_MANAGEMENT_URL must not carry a user or password: they are "
                               "RABBITMQ_URL's")
    host = f"[{parts.hostname}]" if ":" in parts.hostname else parts.hostname
    netloc = host if port is None else f"{host}:{port}"
    return f"{parts.scheme}://{netloc}{parts.path.rstrip('/')}"


# --- the management API --------------------------------------------------------------------------------------------


def apply_policies(target: ManagementTarget, policies: Sequence[Policy], *, wait_seconds: float = 30.0,
                   sleep: Callable[[float], None] = time.sleep) -> list[PolicyChange]:
    """Apply `policies` to `target.vhost` (module doc): what happened to each, in order. Logs
    `broker_policy_applied`; BrokerSetupError when the API stays unreachable for `wait_seconds`, refuses the
    credentials (401/403), the vhost does not exist, or the broker refuses a policy (400)."""
    vhost_path = quote(target.vhost, safe="")
    with httpx.Client(base_url=target.base_url, auth=(target.username, target.password), timeout=REQUEST_TIMEOUT,
                      headers={"Accept": "application/json"}) as client:
        response = _wait_for_api(client, f"/api/vhosts/{vhost_path}", target, wait_seconds, sleep)
        if response.status_code == 404:
            raise BrokerSetupError(f"vhost {target.vhost!r} (named by RABBITMQ_URL) does not exist on the broker at "
                                   f"{target.base_url}: create it (rabbitmqctl add_vhost) or correct RABBITMQ_URL")
        _raise_for_status(response, target, f"read vhost {target.vhost!r}")
        changes = [_apply_one(client, target, vhost_path, policy) for policy in policies]
    log_event(logger, "broker_policy_applied", vhost=target.vhost, policies=[policy.name for policy in policies],
              changed=[change.name for change in changes if change.action != "unchanged"],
              management_url=target.base_url)
    return changes


def _wait_for_api(client: httpx.Client, path: str, target: ManagementTarget, wait_seconds: float,
                  sleep: Callable[[float], None]) -> httpx.Response:
    """The first answer to GET `path` that is not a gateway/unavailable status, retrying transport errors with a
    backoff (0.25 s doubling to 2 s) until `wait_seconds` have passed."""
    deadline, delay, waiting_logged = time.monotonic() + max(wait_seconds, 0.0), 0.25, False
    while True:
        try:
            response = client.get(path)
            if response.status_code not in RETRY_STATUSES:
                return response
            problem = f"HTTP {response.status_code}"
        except httpx.TransportError as exc:
            problem = str(exc) or type(exc).__name__
        remaining = deadline - time.monotonic()
        if remaining <= 0:
            waited = f" for {wait_seconds:g} s" if wait_seconds > 0 else ""
            raise BrokerSetupError(f"RabbitMQ management API not reachable at {target.base_url}{waited} ({problem}): "
                                   f"{NOT_REACHABLE_HINT}")
        if not waiting_logged:
            log_event(logger, "broker_management_waiting", management_url=target.base_url, error=problem[:300],
                      wait_seconds=wait_seconds)
            waiting_logged = True
        sleep(min(delay, remaining))
        delay = min(delay * 2, MAX_RETRY_DELAY)


def _apply_one(client: httpx.Client, target: ManagementTarget, vhost_path: str, policy: Policy) -> PolicyChange:
    path = f"/api/policies/{vhost_path}/{quote(policy.name, safe='')}"
    current = _request(client, "GET", path, target)
    if current.status_code == 200 and policy.matches(_json(current)):
        return PolicyChange(policy.name, "unchanged")
    if current.status_code != 404:
        _raise_for_status(current, target, f"read policy {policy.name!r}")
    answer = _request(client, "PUT", path, target, json=policy.body())
    if answer.status_code == 400:
        raise BrokerSetupError(f"RabbitMQ refused policy {policy.name!r} for vhost {target.vhost!r}: "
                               f"{_reason(answer)}")
    _raise_for_status(answer, target, f"set policy {policy.name!r}")
    return PolicyChange(policy.name, "created" if answer.status_code == 201 else "updated")


def _request(client: httpx.Client, method: str, path: str, target: ManagementTarget, **kwargs: Any) -> httpx.Response:
    try:
        return client.request(method, path, **kwargs)
    except httpx.HTTPError as exc:
        raise BrokerSetupError(f"RabbitMQ management API at {target.base_url} failed during {method} "
                               f"({str(exc) or type(exc).__name__})") from None


def _raise_for_status(response: httpx.Response, target: ManagementTarget, what: str) -> None:
    """Nothing for a 2xx answer; else BrokerSetupError saying what to check."""
    status = response.status_code
    if 200 <= status < 300:
        return
    reason = _reason(response)
    if status == 401:
        raise BrokerSetupError(f"RabbitMQ management API at {target.base_url} refused user {target.username!r} "
                               f"(401 {reason}): check the password in RABBITMQ_URL; {TAG_HINT}")
    if status == 403:
        raise BrokerSetupError(f"user {target.username!r} may not {what} (403 {reason}): {TAG_HINT}, and "
                               f"permissions on vhost {target.vhost!r}")
    if status == 404:
        raise BrokerSetupError(f"{target.base_url} answered 404 to {what} ({reason}): is it RabbitMQ's management "
                               "API? (AXIOM_RABBITMQ_MANAGEMENT_URL)")
    raise BrokerSetupError(f"RabbitMQ management API at {target.base_url} answered {status} to {what} ({reason})")


def _json(response: httpx.Response) -> dict[str, Any]:
    try:
        body = response.json()
    except ValueError:
        return {}
    return body if isinstance(body, dict) else {}


def _reason(response: httpx.Response) -> str:
    """The API's error `reason` (its JSON error body), else the start of the body; one line."""
    body = _json(response)
    text = str(body.get("reason") or body.get("error") or "") if body else response.text
    return " ".join(text.split())[:300] or response.reason_phrase
