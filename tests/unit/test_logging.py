"""shared.logging: JSON lines whose fixed keys (timestamp, level, service, event) no extra field can replace."""

from __future__ import annotations

import io
import json
import logging

from shared.logging import JsonFormatter, log_event


def test_an_extra_field_named_like_a_fixed_key_does_not_replace_it():
    stream = io.StringIO()
    handler = logging.StreamHandler(stream)
    handler.setFormatter(JsonFormatter("unit"))
    logger = logging.getLogger("axiom.unit.logging")
    logger.addHandler(handler)
    logger.propagate = False
    try:
        log_event(logger, "retrieve_holder_failed", logging.WARNING, level="STUDY", service="other",
                  query_level="STUDY", password="hunter2")
    finally:
        logger.removeHandler(handler)
    line = json.loads(stream.getvalue().strip())
    assert (line["level"], line["service"], line["event"]) == ("warning", "unit", "retrieve_holder_failed")
    assert line["query_level"] == "STUDY" and line["password"] == "***"


def test_without_fluentd_host_only_stdout_is_configured(monkeypatch):
    from shared.config import LoggingSettings
    from shared.fluentd import FluentForwardHandler
    from shared.logging import configure_logging

    monkeypatch.delenv("FLUENTD_HOST", raising=False)
    root = logging.getLogger()
    saved, level = list(root.handlers), root.level
    try:
        configure_logging("unit", stream=io.StringIO())
        assert not any(isinstance(h, FluentForwardHandler) for h in root.handlers)
        configure_logging("unit", stream=io.StringIO(), shipping=LoggingSettings(FLUENTD_HOST="127.0.0.1"))
        shipping = [h for h in root.handlers if isinstance(h, FluentForwardHandler)]
        assert [(h.tag, h.port) for h in shipping] == [("axiom.unit", 24224)]
    finally:
        for handler in list(root.handlers):
            if handler not in saved:
                root.removeHandler(handler)
                handler.close()
        root.handlers[:] = saved
        root.setLevel(level)


def test_a_forward_message_is_tag_and_time_record_entries():
    import msgpack

    from shared.fluentd import event_time, forward_message

    entry = msgpack.packb([event_time(1700000000.25), {"event": "x"}])
    tag, entries = msgpack.unpackb(forward_message("axiom.api", [entry, entry]), raw=False)
    assert tag == "axiom.api" and len(entries) == 2
    stamp, record = entries[0]
    assert record == {"event": "x"} and stamp.code == 0
    assert stamp.data == (1700000000).to_bytes(4, "big") + (250_000_000).to_bytes(4, "big")
