import json
import logging

from broker_gateway import logs


def _record(msg: str, **extra: object) -> logging.LogRecord:
    record = logging.makeLogRecord({"name": "broker_gateway.access", "levelno": 20})
    record.levelname = "INFO"
    record.msg = msg
    record.__dict__.update(extra)
    return record


def test_json_lines_carry_the_request_and_its_fields() -> None:
    record = _record("GET /x 200", request_id="abc", status=200, route="/x", tenant=None)
    line = json.loads(logs.JsonFormatter().format(record))
    assert line["message"] == "GET /x 200"
    assert line["level"] == "info"
    assert line["logger"] == "broker_gateway.access"
    assert line["request_id"] == "abc"
    assert line["status"] == 200
    assert "tenant" not in line  # None is left out
    assert line["time"].endswith("Z")


def test_json_lines_name_an_error_without_its_traceback() -> None:
    try:
        raise ValueError("boom")
    except ValueError:
        record = logging.makeLogRecord({"msg": "failed", "exc_info": True})
        import sys

        record.exc_info = sys.exc_info()
    line = logs.JsonFormatter().format(record)
    assert json.loads(line)["error"] == "ValueError: boom"
    assert "Traceback" not in line


def test_text_lines_end_with_the_request_id() -> None:
    record = _record("GET /x 200", request_id="abc")
    assert logs.TextFormatter().format(record).endswith("GET /x 200 request_id=abc")
