"""shared/logs.py: one JSON object per line with the context fields and nothing else
of the record; the text format names the same context."""

from __future__ import annotations

import io
import json
import logging
import logging.config

import pytest

from shared import logs


@pytest.fixture
def capture() -> tuple[logging.Logger, io.StringIO]:
    stream = io.StringIO()
    logger = logging.getLogger(f"tussis.test.{id(stream)}")
    logger.propagate = False
    logger.setLevel(logging.DEBUG)
    return logger, stream


def attach(logger: logging.Logger, stream: io.StringIO, log_format: logs.LogFormat) -> None:
    config = logs.dict_config(log_format, "DEBUG")
    handler = logging.StreamHandler(stream)
    handler.setFormatter(config["formatters"]["tussis"]["()"]())
    handler.addFilter(logs.ContextFilter())
    logger.addHandler(handler)


def test_json_lines_carry_the_context_and_never_extra_fields(capture) -> None:
    logger, stream = capture
    attach(logger, stream, "json")
    logger.info("before")
    with logs.bound(job_id="job-1", owner="clinic"):
        logger.warning("about %s", "the job", extra={"api_key": "tus_secret", "audio": b"RIFF"})
        try:
            raise ValueError("broken\nacross lines")
        except ValueError:
            logger.exception("failed")
    logger.info("after")
    lines = [json.loads(line) for line in stream.getvalue().splitlines()]
    assert len(lines) == 4  # a traceback stays inside its line
    before, about, failed, after = lines
    assert set(before) == {"timestamp", "level", "logger", "message", "process"}
    assert before["timestamp"].endswith("Z") and before["level"] == "INFO"
    assert about["message"] == "about the job" and about["level"] == "WARNING"
    assert (about["job_id"], about["owner"]) == ("job-1", "clinic")
    assert "tus_secret" not in stream.getvalue() and "RIFF" not in stream.getvalue()
    assert "ValueError: broken" in failed["exc_info"] and failed["job_id"] == "job-1"
    assert "job_id" not in after  # the context ended with its block


def test_text_lines_name_the_context_after_the_message(capture) -> None:
    logger, stream = capture
    attach(logger, stream, "text")
    with logs.bound(batch_id="b-7", worker_id="host:1:2"):
        logger.info("chunk done")
    line = stream.getvalue().strip()
    assert line.endswith("chunk done [batch_id=b-7 worker_id=host:1:2]")
    assert " INFO [" in line and logger.name in line


def test_the_configuration_routes_gunicorn_through_the_one_handler() -> None:
    config = logs.dict_config("json", "WARNING")
    assert config["root"] == {"level": "WARNING", "handlers": ["tussis"]}
    for name in ("gunicorn.error", "gunicorn.access"):
        assert config["loggers"][name]["handlers"] == []
        assert config["loggers"][name]["propagate"] is True
