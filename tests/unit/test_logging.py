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
