"""`axiom broker setup` against the machine's RabbitMQ and its management API, as a subprocess, in a vhost of its own.

Checked: the policy of deploy/rabbitmq/definitions.json arrives in the vhost RABBITMQ_URL names (GET
/api/policies/<vhost>), a second run changes nothing, a policy changed on the broker is put back, and the policy
does what it is for: `spanning_queries`, declared as Celery declares it, takes 10,000 messages and the 10,001st
publish is nacked (reject-publish with publisher confirms, https://www.rabbitmq.com/docs/maxlength#overflow-behaviour).
Errors: a closed management port (quickly, with --wait 1), a wrong password (401, the password nowhere in the
output), a vhost that does not exist. Without the management API (rabbitmq-plugins enable rabbitmq_management)
these tests skip, and fail under AXIOM_REQUIRE_SERVICES=1.
"""

from __future__ import annotations

import base64
import json
import os
import secrets
import subprocess
import sys
import time
from pathlib import Path
from urllib.parse import quote

import httpx
import pytest
from amqp.exceptions import MessageNacked
from kombu import Connection, Exchange, Queue

from shared.messaging.broker_policy import DEFAULT_DEFINITIONS
from shared.messaging.contracts import SPANNING_QUERIES
from tests.peers import free_port
from tests.peers.services import (
    RABBITMQ_HOST, RABBITMQ_MANAGEMENT_URL, RABBITMQ_PASSWORD, RABBITMQ_PORT, RABBITMQ_USER, STACK_VARIABLES,
    RabbitVhost, require_broker_management,
)

pytestmark = pytest.mark.integration
REPO = Path(__file__).resolve().parents[2]
POLICY = json.loads(DEFAULT_DEFINITIONS.read_text())["policies"][0]
MAX_LENGTH = POLICY["definition"]["max-length"]


@pytest.fixture(scope="module")
def vhost():
    require_broker_management()
    vhost = RabbitVhost("axiom-broker-setup")
    vhost.create()
    try:
        yield vhost
    finally:
        vhost.delete()


def broker_setup(rabbitmq_url: str, *args: str, **extra_env: str) -> subprocess.CompletedProcess:
    """`axiom broker setup ARGS` with RABBITMQ_URL; the management URL is the default one derived from it unless
    the tests run against another (AXIOM_TEST_RABBITMQ_MANAGEMENT_URL) or `extra_env` names one."""
    env = {k: v for k, v in os.environ.items() if k not in STACK_VARIABLES and k != "AXIOM_RABBITMQ_MANAGEMENT_URL"}
    if "AXIOM_TEST_RABBITMQ_MANAGEMENT_URL" in os.environ:
        env["AXIOM_RABBITMQ_MANAGEMENT_URL"] = RABBITMQ_MANAGEMENT_URL
    env.update({"RABBITMQ_URL": rabbitmq_url, "LOG_LEVEL": "INFO", "COLUMNS": "200", **extra_env})
    return subprocess.run([sys.executable, "-m", "services.cli.main", "broker", "setup", *args], cwd=REPO, env=env,
                          capture_output=True, text=True, timeout=60)


def management(method: str, path: str, **kwargs) -> httpx.Response:
    return httpx.request(method, f"{RABBITMQ_MANAGEMENT_URL}{path}", auth=(RABBITMQ_USER, RABBITMQ_PASSWORD),
                         timeout=10, **kwargs)


def events(stderr: str) -> list[dict]:
    return [json.loads(line) for line in stderr.splitlines() if line.startswith("{")]


def test_setup_applies_the_policy_to_the_urls_vhost_idempotently_and_a_full_queue_rejects(vhost):
    first = broker_setup(vhost.url)
    assert first.returncode == 0, first.stdout + first.stderr
    assert "created   policy spanning-limits" in first.stdout
    (applied,) = [e for e in events(first.stderr) if e["event"] == "broker_policy_applied"]
    assert (applied["vhost"], applied["policies"], applied["changed"]) == (vhost.name, ["spanning-limits"],
                                                                          ["spanning-limits"])

    answer = management("GET", f"/api/policies/{quote(vhost.name, safe='')}")
    assert answer.status_code == 200, answer.text
    assert answer.json() == [{"vhost": vhost.name, "name": "spanning-limits", "pattern": POLICY["pattern"],
                              "apply-to": "queues", "priority": POLICY["priority"],
                              "definition": {"max-length": 10000, "overflow": "reject-publish"}}]

    second = broker_setup(vhost.url)
    assert second.returncode == 0, second.stdout + second.stderr
    assert "unchanged policy spanning-limits" in second.stdout
    assert [e["changed"] for e in events(second.stderr) if e["event"] == "broker_policy_applied"] == [[]]

    assert_full_queue_rejects_publishes(vhost)


def assert_full_queue_rejects_publishes(vhost: RabbitVhost) -> None:
    """`spanning_queries` as shared/messaging/celery_app.py declares it, filled with publisher confirms."""
    queue = Queue(SPANNING_QUERIES, Exchange(SPANNING_QUERIES, type="direct", durable=True),
                  routing_key=SPANNING_QUERIES, durable=True)
    with Connection(vhost.url, transport_options={"confirm_publish": True}, connect_timeout=5) as connection:
        channel = connection.channel()
        queue(channel).declare()
        started, nacked = time.monotonic(), []
        for number in range(MAX_LENGTH + 1):
            try:
                channel.basic_publish(channel.prepare_message(b"{}"), exchange=SPANNING_QUERIES,
                                      routing_key=SPANNING_QUERIES)
            except MessageNacked:
                nacked.append(number)
        _, ready, _ = channel.queue_declare(SPANNING_QUERIES, passive=True)
        channel.close()
    assert nacked == [MAX_LENGTH], f"nacked publishes: {nacked[:5]}... after {time.monotonic() - started:.1f} s"
    assert ready == MAX_LENGTH


def test_setup_puts_back_a_policy_changed_on_the_broker(vhost):
    path = f"/api/policies/{quote(vhost.name, safe='')}/spanning-limits"
    drifted = management("PUT", path, json={"pattern": POLICY["pattern"], "apply-to": "queues", "priority": 0,
                                            "definition": {"max-length": 5}})
    assert drifted.status_code in (201, 204), drifted.text
    result = broker_setup(vhost.url)
    assert result.returncode == 0, result.stdout + result.stderr
    assert "updated   policy spanning-limits" in result.stdout
    assert management("GET", path).json()["definition"] == {"max-length": 10000, "overflow": "reject-publish"}


def test_a_closed_management_port_fails_quickly_with_what_to_do(vhost):
    closed = f"http://127.0.0.1:{free_port()}"
    started = time.monotonic()
    result = broker_setup(vhost.url, "--wait", "1", AXIOM_RABBITMQ_MANAGEMENT_URL=closed)
    elapsed = time.monotonic() - started
    assert result.returncode != 0
    message = " ".join(result.stderr.split())
    assert f"error: RabbitMQ management API not reachable at {closed} for 1 s" in message, message
    assert "enable the rabbitmq_management plugin" in message and "AXIOM_RABBITMQ_MANAGEMENT_URL" in message
    assert elapsed < 15, f"took {elapsed:.1f} s"


def test_a_wrong_password_is_a_401_and_the_password_is_never_shown(vhost):
    password = f"wrong-{secrets.token_hex(8)}"
    url = f"amqp://{RABBITMQ_USER}:{password}@{RABBITMQ_HOST}:{RABBITMQ_PORT}/{vhost.name}"
    result = broker_setup(url, "--wait", "0", LOG_LEVEL="DEBUG")  # even httpx's own debug lines
    assert result.returncode != 0
    message = " ".join(result.stderr.split())
    assert f"refused user '{RABBITMQ_USER}' (401" in message and "check the password in RABBITMQ_URL" in message
    basic = base64.b64encode(f"{RABBITMQ_USER}:{password}".encode()).decode()
    for secret in (password, basic):
        assert secret not in result.stdout + result.stderr


def test_a_vhost_that_does_not_exist_is_named():
    require_broker_management()
    name = f"axiom-missing-{secrets.token_hex(6)}"
    url = f"amqp://{RABBITMQ_USER}:{RABBITMQ_PASSWORD}@{RABBITMQ_HOST}:{RABBITMQ_PORT}/{name}"
    result = broker_setup(url, "--wait", "0")
    assert result.returncode != 0
    assert f"vhost '{name}' (named by RABBITMQ_URL) does not exist" in " ".join(result.stderr.split())
