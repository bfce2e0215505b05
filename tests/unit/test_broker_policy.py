"""shared.messaging.broker_policy without a broker: reading the definitions file, where and as whom the policies go,
and the `axiom broker setup` errors that need no network. The management API itself: tests/integration/
test_broker_setup.py (a real RabbitMQ)."""

from __future__ import annotations

import json
import re

import pytest
import typer
from typer.testing import CliRunner

from services.cli.broker_cmd import register
from shared.config import DistributedSettings, get_settings
from shared.messaging.broker_policy import (
    DEFAULT_DEFINITIONS, BrokerSetupError, Policy, load_policies, management_target,
)
from shared.messaging.contracts import ALL_QUEUES


def write(tmp_path, document) -> str:
    path = tmp_path / "definitions.json"
    path.write_text(document if isinstance(document, str) else json.dumps(document))
    return str(path)


# --- the definitions file ------------------------------------------------------------------------------------------


def test_the_repositorys_definitions_file_gives_the_queue_limit_policy():
    (policy,) = load_policies(DEFAULT_DEFINITIONS)
    assert policy == Policy(name="spanning-limits", pattern="^(spanning_.*|dimse_tasks|results_aggregation)$",
                            definition={"max-length": 10000, "overflow": "reject-publish"}, priority=10,
                            apply_to="queues")
    assert policy.body() == {"pattern": policy.pattern, "definition": dict(policy.definition), "priority": 10,
                             "apply-to": "queues"}  # the file's "vhost" is not sent: RABBITMQ_URL's is used
    assert all(re.search(policy.pattern, queue) for queue in ALL_QUEUES)


def test_rabbitmqs_defaults_fill_what_a_policy_leaves_out(tmp_path):
    (policy,) = load_policies(write(tmp_path, {"policies": [{"name": "p", "pattern": "^q$",
                                                              "definition": {"max-length": 5}}]}))
    assert (policy.priority, policy.apply_to) == (0, "all")


def test_matches_compares_what_the_api_answers():
    policy = Policy("p", "^q$", {"max-length": 5}, 10, "queues")
    answer = {"vhost": "v", "name": "p", "pattern": "^q$", "apply-to": "queues", "definition": {"max-length": 5},
              "priority": 10}
    assert policy.matches(answer)
    assert not policy.matches({**answer, "definition": {"max-length": 6}})
    assert not policy.matches({**answer, "priority": 0})


@pytest.mark.parametrize(("document", "message"), [
    ("{not json", "is not valid JSON"),
    ({"vhosts": [{"name": "/"}]}, "has no policies"),
    ({"policies": []}, "has no policies"),
    ([1, 2], "has no policies"),
    ({"policies": ["x"]}, r"policies\[0\] is not an object"),
    ({"policies": [{"pattern": "x", "definition": {"a": 1}}]}, r"policies\[0\] has no `name`"),
    ({"policies": [{"name": "p", "definition": {"a": 1}}]}, r"\(p\) has no `pattern`"),
    ({"policies": [{"name": "p", "pattern": "x", "definition": {}}]}, r"\(p\) has no `definition` object"),
    ({"policies": [{"name": "p", "pattern": "x", "definition": {"a": 1}, "priority": "high"}]},
     "`priority` must be an integer"),
    ({"policies": [{"name": "p", "pattern": "x", "definition": {"a": 1}, "apply-to": 3}]}, "`apply-to` must be"),
    ({"policies": [{"vhost": "a", "name": "p", "pattern": "x", "definition": {"a": 1}},
                   {"vhost": "b", "name": "p", "pattern": "y", "definition": {"a": 1}}]},
     "p is defined more than once"),
])
def test_unusable_definitions_files_are_refused_with_the_reason(tmp_path, document, message):
    path = write(tmp_path, document)
    with pytest.raises(BrokerSetupError, match=message) as caught:
        load_policies(path)
    assert path in str(caught.value)


def test_an_unreadable_definitions_file_names_the_path(tmp_path):
    with pytest.raises(BrokerSetupError, match=f"cannot read the definitions file {tmp_path / 'nope.json'}: "
                                               "No such file or directory"):
        load_policies(tmp_path / "nope.json")


# --- where and as whom ---------------------------------------------------------------------------------------------


@pytest.mark.parametrize(("url", "vhost", "user", "password", "base"), [
    ("amqp://axiom:s3cret@rabbitmq:5672//", "/", "axiom", "s3cret", "http://rabbitmq:15672"),
    ("amqp://axiom:s3cret@rabbitmq:5672/%2F", "/", "axiom", "s3cret", "http://rabbitmq:15672"),
    ("amqp://axiom:s3cret@rabbitmq", "/", "axiom", "s3cret", "http://rabbitmq:15672"),
    ("amqp://u:p%40x@10.0.0.5:5673/axiom-e2e", "axiom-e2e", "u", "p@x", "http://10.0.0.5:15672"),
    ("amqps://u:p@broker.example.org/prod", "prod", "u", "p", "http://broker.example.org:15672"),
    ("amqp://rabbitmq//", "/", "guest", "guest", "http://rabbitmq:15672"),  # kombu's (and so the services') default
    ("amqp://u:p@[::1]:5672/v", "v", "u", "p", "http://[::1]:15672"),
])
def test_the_vhost_and_credentials_are_read_as_the_services_read_them(url, vhost, user, password, base):
    target = management_target(url)
    assert (target.vhost, target.username, target.password, target.base_url) == (vhost, user, password, base)
    assert "password" not in repr(target)  # the dataclass repr leaves the password out


@pytest.mark.parametrize(("management_url", "base"), [
    ("http://mq-admin:8080/", "http://mq-admin:8080"),
    ("https://mq.example.org:15671/rabbitmq/", "https://mq.example.org:15671/rabbitmq"),  # management.path_prefix
    ("http://[::1]:15672", "http://[::1]:15672"),
])
def test_axiom_rabbitmq_management_url_replaces_the_default(management_url, base):
    assert management_target("amqp://u:p@rabbitmq//", management_url).base_url == base


@pytest.mark.parametrize(("url", "management_url", "message"), [
    ("redis://u:pw-in-url@h/0", None, "RABBITMQ_URL is not a valid amqp:// or amqps:// URL"),
    ("amqp://u:pw-in-url@h:port/v", None, "RABBITMQ_URL is not a valid amqp:// or amqps:// URL"),
    ("amqp://u:p@h//", "rabbitmq:15672", "AXIOM_RABBITMQ_MANAGEMENT_URL must be an http:// or https:// URL"),
    ("amqp://u:p@h//", "http://h:port", "AXIOM_RABBITMQ_MANAGEMENT_URL must be an http:// or https:// URL"),
    ("amqp://u:p@h//", "http://admin:pw-in-url@h:15672", "must not carry a user or password"),
])
def test_unusable_urls_are_refused_without_echoing_them(url, management_url, message):
    with pytest.raises(BrokerSetupError, match=message) as caught:
        management_target(url, management_url)
    assert "pw-in-url" not in str(caught.value)


def test_the_management_url_is_a_setting_and_empty_means_unset(monkeypatch):
    monkeypatch.setenv("AXIOM_RABBITMQ_MANAGEMENT_URL", "http://mq:15672")
    assert DistributedSettings().rabbitmq_management_url == "http://mq:15672"
    monkeypatch.setenv("AXIOM_RABBITMQ_MANAGEMENT_URL", "")  # compose's `${AXIOM_RABBITMQ_MANAGEMENT_URL:-}`
    assert DistributedSettings().rabbitmq_management_url is None


# --- the command, where no broker is needed ----------------------------------------------------------------------


@pytest.fixture()
def cli_env(monkeypatch):
    """The `broker` group on an app of its own (not the `axiom` app: its callback would reconfigure the root logger
    for every later test in this process)."""
    get_settings.cache_clear()
    yield monkeypatch
    get_settings.cache_clear()


def invoke(*args: str):
    app = typer.Typer()
    register(app)
    return CliRunner().invoke(app, list(args))


def test_broker_setup_without_rabbitmq_url_says_so(cli_env):
    cli_env.delenv("RABBITMQ_URL", raising=False)
    result = invoke("broker", "setup")
    assert result.exit_code == 2
    assert "error: RABBITMQ_URL is not set" in result.output


def test_broker_setup_with_a_definitions_file_without_policies_says_so(cli_env, tmp_path):
    cli_env.setenv("RABBITMQ_URL", "amqp://axiom:pw-in-url@127.0.0.1:5672//")
    path = write(tmp_path, {"vhosts": [{"name": "/"}]})
    result = invoke("broker", "setup", "--definitions", path)
    assert result.exit_code == 2
    assert f"error: definitions file {path} has no policies" in " ".join(result.output.split())
    assert "pw-in-url" not in result.output
