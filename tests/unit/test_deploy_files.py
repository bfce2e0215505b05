"""The deploy/ configuration agrees with itself and with the code: Kibana saved objects, Fluentd, RabbitMQ, Redis.

Static checks read the files; tests/integration/test_redis_eviction.py runs a real redis-server with
deploy/redis/redis.conf.
"""

from __future__ import annotations

import ast
import json
import re
from pathlib import Path

from shared.messaging.contracts import ALL_QUEUES

ROOT = Path(__file__).resolve().parents[2]
DEPLOY = ROOT / "deploy"
NDJSON = DEPLOY / "kibana" / "axiom.ndjson"
REQUIRED_KEYS = {"type", "id", "attributes", "references", "coreMigrationVersion", "typeMigrationVersion"}


# --- helpers ----------------------------------------------------------------------------------------------------
def saved_objects() -> list[dict]:
    lines = NDJSON.read_text(encoding="utf-8").splitlines()
    assert lines and all(line.strip() for line in lines), "axiom.ndjson: no blank lines, one object per line"
    return [json.loads(line) for line in lines]


def logged_events() -> set[str]:
    """Every event name the code logs: the literal second argument of log_event(...)."""
    names = set()
    for path in [*(ROOT / "shared").rglob("*.py"), *(ROOT / "services").rglob("*.py")]:
        for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"))):
            if (isinstance(node, ast.Call) and getattr(node.func, "id", None) == "log_event" and len(node.args) > 1
                    and isinstance(node.args[1], ast.Constant)):
                names.add(node.args[1].value)
    return names


def fluent_sections(text: str) -> list[tuple[str, str, dict[str, str], list]]:
    """Fluentd config as nested (directive, argument, parameters, children); comments dropped."""
    root: list = []
    stack = [("root", "", {}, root)]
    for raw in text.splitlines():
        line = raw.split(" #", 1)[0].strip() if not raw.strip().startswith("#") else ""
        if not line:
            continue
        if line.startswith("</"):
            stack.pop()
        elif line.startswith("<"):
            name, _, arg = line[1:-1].partition(" ")
            section = (name, arg.strip(), {}, [])
            stack[-1][3].append(section)
            stack.append(section)
        else:
            key, _, value = line.partition(" ")
            stack[-1][2][key] = value.strip()
    assert len(stack) == 1, "fluent.conf: unbalanced <section> tags"
    return root


def fluent_tag_matches(pattern: str, tag: str) -> bool:
    """Fluentd's match-pattern rule: `*` is one tag part, `**` zero or more parts (`a.**` matches `a`)."""
    regex = re.escape(pattern).replace(r"\.\*\*", r"(\..+)?").replace(r"\*\*", ".*").replace(r"\*", r"[^.]+")
    return re.fullmatch(regex, tag) is not None


def conf_directives(path: Path) -> dict[str, str]:
    """`key value` lines of a Redis-style config (later lines win, as in Redis)."""
    directives = {}
    for line in path.read_text(encoding="utf-8").splitlines():
        line = line.strip()
        if line and not line.startswith("#"):
            key, _, value = line.partition(" ")
            directives[key.lower()] = value.strip()
    return directives


def conf_directives_rabbit(path: Path) -> dict[str, str]:
    """`key = value` lines of a rabbitmq.conf (sysctl format)."""
    pairs = (line.split("=", 1) for line in path.read_text().splitlines()
             if line.strip() and not line.lstrip().startswith("#"))
    return {key.strip(): value.strip() for key, value in pairs}


# --- Kibana -----------------------------------------------------------------------------------------------------
def test_ndjson_objects_have_the_saved_object_keys_and_unique_ids():
    objects = saved_objects()
    for item in objects:
        assert REQUIRED_KEYS <= item.keys(), f"{item.get('id')}: missing {REQUIRED_KEYS - item.keys()}"
        assert item["coreMigrationVersion"].startswith("8."), item["id"]
    assert len({(o["type"], o["id"]) for o in objects}) == len(objects)
    assert {"index-pattern", "search", "visualization", "dashboard"} <= {o["type"] for o in objects}


def test_every_reference_resolves_to_an_object_in_the_file_and_every_ref_name_is_declared():
    objects = saved_objects()
    present = {(o["type"], o["id"]) for o in objects}
    for item in objects:
        names = {ref["name"] for ref in item["references"]}
        for ref in item["references"]:
            assert (ref["type"], ref["id"]) in present, f"{item['id']} references missing {ref}"
        attributes = item["attributes"]
        source = json.loads(attributes.get("kibanaSavedObjectMeta", {}).get("searchSourceJSON", "{}"))
        if "indexRefName" in source:
            assert source["indexRefName"] in names, item["id"]
        if "savedSearchRefName" in attributes:
            assert attributes["savedSearchRefName"] in names, item["id"]
        for panel in json.loads(attributes.get("panelsJSON", "[]")):
            assert f"{panel['panelIndex']}:{panel['panelRefName']}" in names, (item["id"], panel["panelIndex"])
        if "visState" in attributes:
            assert json.loads(attributes["visState"])["title"] == attributes["title"]


def test_data_view_matches_the_fluentd_indices_and_their_time_field():
    view = next(o for o in saved_objects() if o["type"] == "index-pattern")
    elasticsearch = next(section for section in _match_stores() if section[2].get("@type") == "elasticsearch")
    assert view["attributes"]["title"] == elasticsearch[2]["logstash_prefix"] + "-*"
    assert view["attributes"]["timeFieldName"] == "@timestamp"  # what logstash_format writes


def test_saved_searches_query_events_the_code_really_logs():
    queried = set()
    for item in saved_objects():
        source = json.loads(item["attributes"].get("kibanaSavedObjectMeta", {}).get("searchSourceJSON", "{}"))
        queried |= set(re.findall(r"event:(\w+)", source.get("query", {}).get("query", "")))
        if item["type"] == "visualization":
            params = json.loads(item["attributes"]["visState"]).get("params", {})
            queried |= set(re.findall(r"event:(\w+)", params.get("filter", {}).get("query", "")))
    assert {"spanning_query_completed", "source_query_failed", "dimse_worker_status"} <= queried
    assert queried <= logged_events(), f"not logged anywhere: {queried - logged_events()}"


def test_aggregated_numeric_fields_are_mapped_as_numbers_by_the_index_template():
    template = json.loads((DEPLOY / "fluentd" / "axiom-template.json").read_text())
    mapped = template["template"]["mappings"]["properties"]
    aggregated = set()
    for item in saved_objects():
        if item["type"] == "visualization":
            for agg in json.loads(item["attributes"]["visState"]).get("aggs", []):
                if agg["type"] in ("percentiles", "avg", "max", "sum") or (
                        agg["type"] == "top_hits" and agg["params"]["field"] != "worker_type"):
                    aggregated.add(agg["params"]["field"])
    assert {"duration_ms", "in_flight", "processed", "failed"} <= aggregated
    for field in aggregated:
        assert mapped[field]["type"] in ("long", "float"), field
    for field in ("service", "source", "status", "event", "level", "service_id", "query_id"):
        assert mapped[field]["type"] == "keyword", field


# --- Fluentd ----------------------------------------------------------------------------------------------------
def _fluent() -> list:
    return fluent_sections((DEPLOY / "fluentd" / "fluent.conf").read_text(encoding="utf-8"))


def _match_stores() -> list:
    match = next(s for s in _fluent() if s[0] == "match" and s[1] == "axiom.**")
    return [child for child in match[3] if child[0] == "store"] or [match]


def test_fluentd_listens_for_the_forward_protocol_on_24224():
    source = next(s for s in _fluent() if s[0] == "source")
    assert source[2] == {"@type": "forward", "bind": "0.0.0.0", "port": "24224"}


def test_fluentd_writes_logstash_indices_to_elasticsearch_with_a_retrying_buffer():
    store = next(s for s in _match_stores() if s[2].get("@type") == "elasticsearch")
    params = store[2]
    assert params["logstash_format"] == "true" and params["logstash_prefix"] == "axiom"
    assert "elasticsearch" in params["host"] and "9200" in params["port"]
    assert params["time_key"] == "timestamp"  # @timestamp from the record, as shared/logging.py writes it
    assert (DEPLOY / "fluentd" / Path(params["template_file"]).name).is_file()
    buffer = next(child for child in store[3] if child[0] == "buffer")[2]
    assert buffer["retry_forever"] == "true" and buffer["retry_type"] == "exponential_backoff"


def test_both_tag_schemes_reach_the_parser_and_the_output():
    """fluent-logger path: axiom.<service>; docker driver: axiom.<service>.<container> (compose overlay)."""
    parser = next(s for s in _fluent() if s[0] == "filter" and s[2].get("@type") == "parser")
    assert parser[2]["key_name"] == "log" and parser[2]["reserve_data"] == "true"
    assert next(child for child in parser[3] if child[0] == "parse")[2]["@type"] == "json"
    driver_only = next(s for s in _fluent() if s[0] == "filter" and s[2].get("@type") == "record_transformer")
    for tag in ("axiom.api", "axiom.dimse-query-worker.axiom-dimse-query-worker-3"):
        assert fluent_tag_matches(parser[1], tag) and fluent_tag_matches("axiom.**", tag)
    assert fluent_tag_matches(driver_only[1], "axiom.api.axiom-api-1")
    assert not fluent_tag_matches(driver_only[1], "axiom.api")  # the fluent-logger records keep their `source`
    compose = ROOT / "docker-compose.enterprise.yml"
    if compose.is_file():
        for tag in re.findall(r"tag: (axiom\.[\w.-]+)\.\{\{\.Name\}\}", compose.read_text()):
            assert fluent_tag_matches(driver_only[1], f"{tag}.container-1"), tag


def test_fluent_tag_matcher_follows_fluentd_rules():
    assert fluent_tag_matches("axiom.**", "axiom")
    assert fluent_tag_matches("axiom.*.*", "axiom.a.b") and not fluent_tag_matches("axiom.*.*", "axiom.a.b.c")
    assert not fluent_tag_matches("axiom.**", "axiomx.a")


# --- RabbitMQ ---------------------------------------------------------------------------------------------------
def test_queue_policy_limits_every_axiom_queue_and_rejects_publishes_beyond():
    definitions = json.loads((DEPLOY / "rabbitmq" / "definitions.json").read_text())
    policy = next(p for p in definitions["policies"] if p["name"] == "spanning-limits")
    assert policy["vhost"] == "/" and policy["apply-to"] == "queues"
    assert policy["definition"] == {"max-length": 10000, "overflow": "reject-publish"}
    for queue in ALL_QUEUES:
        assert re.search(policy["pattern"], queue), queue
    for other in ("celery.pidbox", "celeryev.1234", "worker1.celery.pidbox", "amq.gen-x", "spanning"):
        assert not re.search(policy["pattern"], other), other


def test_definitions_loaded_at_boot_must_carry_their_own_users():
    """RabbitMQ seeds no default user when definitions are loaded at boot: RABBITMQ_DEFAULT_USER would be ignored."""
    conf = conf_directives_rabbit(DEPLOY / "rabbitmq" / "rabbitmq.conf")
    definitions = json.loads((DEPLOY / "rabbitmq" / "definitions.json").read_text())
    if "load_definitions" in conf:
        assert definitions.get("users") and definitions.get("permissions")
    else:
        assert "users" not in definitions  # applied to a running broker: its users stay as they are


def test_no_document_asks_for_a_manual_policy_import():
    """`broker-setup` (`axiom broker setup`) applies the policy; the docs say so, and that outside Docker it is run
    once after the broker is up."""
    for name in ("README.md", "docs/operations.md", "deploy/rabbitmq/rabbitmq.conf", "docker-compose.yml",
                 "docker-compose.enterprise.yml", ".env.example"):
        assert "import_definitions" not in (ROOT / name).read_text(encoding="utf-8"), name
    for name in ("README.md", "docs/operations.md", "deploy/rabbitmq/rabbitmq.conf"):
        text = " ".join((ROOT / name).read_text(encoding="utf-8").split())
        assert "broker-setup" in text and "axiom broker setup" in text, name
    assert "broker_policy_applied" in logged_events()



# --- Redis ------------------------------------------------------------------------------------------------------
def test_redis_evicts_only_expiring_keys_and_persists_nothing():
    conf = conf_directives(DEPLOY / "redis" / "redis.conf")
    assert conf["maxmemory-policy"] == "volatile-lru"
    assert re.fullmatch(r"\d+(mb|gb)", conf["maxmemory"])
    assert conf["save"] == '""' and conf["appendonly"] == "no"
