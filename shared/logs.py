"""The one logging configuration of gunicorn, the API and the Celery worker.

``TUSSIS_LOG_FORMAT=text`` (the default) writes
``2025-01-31 12:00:00,123 INFO [1234] tussis.worker: message job_id=...``;
``TUSSIS_LOG_FORMAT=json`` writes one JSON object per line with ``timestamp``,
``level``, ``logger``, ``message`` and, where they apply, ``job_id``, ``batch_id``,
``owner`` and ``worker_id``.

Those four come from context variables that the API sets for a request and the
worker for a task (:func:`bind`), so every line logged while handling a job names
it without each call passing it. Nothing else of a record reaches the output: no
``extra=`` field can carry a key or audio into the logs by accident.
"""

from __future__ import annotations

import logging
import logging.config
from collections.abc import Iterator
from contextlib import contextmanager
from contextvars import ContextVar
from datetime import UTC, datetime
from typing import Any, Literal

from pythonjsonlogger.json import JsonFormatter

LogFormat = Literal["text", "json"]

CONTEXT_FIELDS = ("job_id", "batch_id", "owner", "worker_id")
_context: dict[str, ContextVar[str | None]] = {
    name: ContextVar(f"tussis_log_{name}", default=None) for name in CONTEXT_FIELDS
}


def bind(**fields: str | None) -> list[Any]:
    """Set context fields for what follows; returns tokens for :func:`unbind`."""
    return [_context[name].set(value) for name, value in fields.items()]


def unbind(tokens: list[Any]) -> None:
    for token in reversed(tokens):
        token.var.reset(token)


@contextmanager
def bound(**fields: str | None) -> Iterator[None]:
    """Context fields for the duration of a block (a task, say)."""
    tokens = bind(**fields)
    try:
        yield
    finally:
        unbind(tokens)


def current() -> dict[str, str]:
    """The context fields that are set now."""
    return {name: value for name, var in _context.items() if (value := var.get()) is not None}


class ContextFilter(logging.Filter):
    """Copies the context fields onto each record (as attributes, for the formatters)."""

    def filter(self, record: logging.LogRecord) -> bool:
        for name, var in _context.items():
            setattr(record, f"tussis_{name}", var.get())
        return True


class TextFormatter(logging.Formatter):
    def __init__(self) -> None:
        super().__init__("%(asctime)s %(levelname)s [%(process)d] %(name)s: %(message)s")

    def format(self, record: logging.LogRecord) -> str:
        line = super().format(record)
        fields = [
            f"{name}={value}"
            for name in CONTEXT_FIELDS
            if (value := getattr(record, f"tussis_{name}", None)) is not None
        ]
        if not fields:
            return line
        first, newline, rest = line.partition("\n")  # after the message, before a traceback
        return f"{first} [{' '.join(fields)}]{newline}{rest}"


class JsonLineFormatter(JsonFormatter):
    """One JSON object per line: the fixed fields, the context, and a traceback if any."""

    def __init__(self) -> None:
        super().__init__(timestamp=False)

    def add_fields(
        self, log_data: dict[str, Any], record: logging.LogRecord, message_dict: dict[str, Any]
    ) -> None:
        # Built from scratch: never the record's other attributes (``extra=``).
        log_data.clear()
        log_data["timestamp"] = self.formatTime(record)
        log_data["level"] = record.levelname
        log_data["logger"] = record.name
        log_data["message"] = record.getMessage()
        log_data["process"] = record.process
        for name in CONTEXT_FIELDS:
            value = getattr(record, f"tussis_{name}", None)
            if value is not None:
                log_data[name] = value
        if record.exc_info:
            log_data["exc_info"] = self.formatException(record.exc_info)

    def formatTime(self, record: logging.LogRecord, datefmt: str | None = None) -> str:
        stamp = datetime.fromtimestamp(record.created, tz=UTC)
        return stamp.isoformat(timespec="milliseconds").replace("+00:00", "Z")


def dict_config(log_format: LogFormat, level: str) -> dict[str, Any]:
    """The :func:`logging.config.dictConfig` of every process: one handler on the root
    logger, and gunicorn's loggers passing their lines to it (gunicorn takes this as
    ``logconfig_dict`` in gunicorn.conf.py)."""
    formatter = JsonLineFormatter if log_format == "json" else TextFormatter
    return {
        "version": 1,
        "disable_existing_loggers": False,
        "filters": {"context": {"()": ContextFilter}},
        "formatters": {"tussis": {"()": formatter}},
        "handlers": {
            "tussis": {
                "class": "logging.StreamHandler",
                "stream": "ext://sys.stderr",
                "formatter": "tussis",
                "filters": ["context"],
            }
        },
        "root": {"level": level, "handlers": ["tussis"]},
        "loggers": {
            # gunicorn attaches its own handlers to these; none here, so their lines
            # reach the root handler above, in the same format as the app's.
            "gunicorn.error": {"level": level, "handlers": [], "propagate": True},
            "gunicorn.access": {"level": "INFO", "handlers": [], "propagate": True},
        },
    }


def configure(log_format: LogFormat, level: str) -> None:
    logging.config.dictConfig(dict_config(log_format, level))
