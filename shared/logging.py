"""Structured JSON logs: one JSON object per line on stdout, with a stable `event` name.

`configure_logging(service)` installs the handler once per process; `log_event(logger, event, **fields)` writes
an event with correlation fields (query_id, source, study_uid, ...). Secret-looking fields are masked.
With FLUENTD_HOST set (shared.config.LoggingSettings) the same records are also shipped to Fluentd with tag
`axiom.<service>` by shared.fluentd.FluentForwardHandler, which never blocks the service.
"""

from __future__ import annotations

import json
import logging
import sys
from datetime import datetime, timezone
from typing import Any

from shared.config import LoggingSettings
from shared.fluentd import FluentForwardHandler

SECRET_FIELDS = frozenset({"password", "token", "secret", "api_key", "authorization", "secret_key"})
_RESERVED = frozenset(vars(logging.makeLogRecord({})).keys()) | {"message", "asctime"}


class JsonFormatter(logging.Formatter):
    """Formats a record as a JSON line: timestamp, level, service, event, logger, message and extra fields."""

    def __init__(self, service: str) -> None:
        super().__init__()
        self.service = service

    def format(self, record: logging.LogRecord) -> str:
        return json.dumps(self.to_dict(record), default=str, ensure_ascii=False)

    def to_dict(self, record: logging.LogRecord) -> dict[str, Any]:
        """The record's fields as a dict (what `format` writes as JSON and Fluentd receives), secrets masked."""
        payload: dict[str, Any] = {
            "timestamp": datetime.fromtimestamp(record.created, tz=timezone.utc).isoformat(timespec="milliseconds"),
            "level": record.levelname.lower(),
            "service": self.service,
            "event": getattr(record, "event", None) or record.getMessage(),
            "logger": record.name,
        }
        message = record.getMessage()
        if message != payload["event"]:
            payload["message"] = message
        for key, value in vars(record).items():  # extra fields never replace the fixed ones (level, service, ...)
            if key not in _RESERVED and key not in payload and not key.startswith("_"):
                payload[key] = "***" if key.lower() in SECRET_FIELDS else value
        if record.exc_info:
            payload["exception"] = self.formatException(record.exc_info)
        return payload


def quiet_pynetdicom(quiet: bool = True) -> None:
    """Stop pynetdicom formatting what nobody reads: its standard per-message event handlers and its pretty-printing
    of every C-FIND request and response identifier run whatever the logger's level (about a tenth of a busy
    spanning SCP's CPU). Read by pynetdicom when an association starts."""
    from pynetdicom import _config

    _config.LOG_HANDLER_LEVEL = "none" if quiet else "standard"
    _config.LOG_REQUEST_IDENTIFIERS = _config.LOG_RESPONSE_IDENTIFIERS = not quiet


def configure_logging(service: str, level: str = "INFO", stream: Any = None,
                      shipping: LoggingSettings | None = None) -> None:
    """Route the root logger to JSON lines on `stream` (stdout) for `service`, and to Fluentd (tag
    `axiom.<service>`) when `shipping` (default: read from the environment) names a FLUENTD_HOST; idempotent."""
    root = logging.getLogger()
    for handler in list(root.handlers):
        if getattr(handler, "_axiom", False):
            root.removeHandler(handler)
            handler.close()
    formatter = JsonFormatter(service)
    handler = logging.StreamHandler(stream or sys.stdout)
    handler.setFormatter(formatter)
    handlers: list[logging.Handler] = [handler]
    shipping = shipping if shipping is not None else LoggingSettings()
    if shipping.fluentd_host:
        handlers.append(FluentForwardHandler(shipping.fluentd_host, shipping.fluentd_port, f"axiom.{service}",
                                             formatter.to_dict, queue_size=shipping.fluentd_queue_size))
    for handler in handlers:
        handler._axiom = True  # type: ignore[attr-defined]
        root.addHandler(handler)
    root.setLevel(level.upper())
    # Library diagnostics only at DEBUG: Axiom reports what they would say as its own events (source_query_failed).
    debug = level.upper() == "DEBUG"
    logging.getLogger("pynetdicom").setLevel(logging.DEBUG if debug else logging.CRITICAL)
    quiet_pynetdicom(not debug)
    logging.getLogger("httpx").setLevel(logging.DEBUG if debug else logging.WARNING)


def log_event(logger: logging.Logger, event: str, severity: int = logging.INFO, **fields: Any) -> None:
    """Log a structured event named `event` with correlation `fields`."""
    logger.log(severity, event, extra={"event": event, **fields})
