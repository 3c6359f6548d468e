"""Logging: text for people or JSON lines for machines (GATEWAY_LOG_FORMAT), an access log,
and the request id on every line logged while a request is served."""

import logging
import time
from contextvars import ContextVar
from typing import Any, Final

import orjson

from broker_gateway.settings import Settings

# The id of the request being served (X-Request-Id), for every line logged meanwhile.
request_id: ContextVar[str | None] = ContextVar("request_id", default=None)

ACCESS: Final = logging.getLogger("broker_gateway.access")
# What an access line carries besides its message; the JSON format gives each its key.
ACCESS_FIELDS: Final = ("method", "route", "status", "duration_ms", "tenant")
_RECORD_DEFAULTS: Final = frozenset(logging.makeLogRecord({}).__dict__) | {"message"}


class _WithRequestId(logging.Filter):
    def filter(self, record: logging.LogRecord) -> bool:
        record.request_id = request_id.get()
        return True


class JsonFormatter(logging.Formatter):
    """One JSON object a line: time (UTC, RFC 3339), level, logger, message, request_id,
    the access fields where present, and an exception's type and message, never its
    traceback."""

    def format(self, record: logging.LogRecord) -> str:
        line: dict[str, Any] = {
            "time": time.strftime("%Y-%m-%dT%H:%M:%S", time.gmtime(record.created))
            + f".{int(record.msecs):03d}Z",
            "level": record.levelname.lower(),
            "logger": record.name,
            "message": record.getMessage(),
        }
        for key, value in record.__dict__.items():
            if key not in _RECORD_DEFAULTS and value is not None:
                line[key] = value
        if record.exc_info and record.exc_info[1] is not None:
            error = record.exc_info[1]
            line["error"] = f"{type(error).__name__}: {error}"
        return orjson.dumps(line, default=str).decode()


class TextFormatter(logging.Formatter):
    def __init__(self) -> None:
        super().__init__("%(asctime)s %(levelname)s %(name)s: %(message)s")

    def format(self, record: logging.LogRecord) -> str:
        line = super().format(record)
        rid = getattr(record, "request_id", None)
        return line if rid is None else f"{line} request_id={rid}"


def configure(settings: Settings, *, quiet: bool) -> None:
    """The root logger in the configured format; `quiet` (commands other than `serve`)
    keeps the gateway's own lines to warnings."""
    # No line shows where it was logged from, or the thread and process: a line a request
    # (the access log) need not look them up (the logging HOWTO's "Optimization").
    logging._srcfile = None
    logging.logThreads = logging.logProcesses = logging.logMultiprocessing = False
    handler = logging.StreamHandler()
    handler.setFormatter(JsonFormatter() if settings.log_format == "json" else TextFormatter())
    handler.addFilter(_WithRequestId())
    logging.basicConfig(level=settings.log_level.upper(), handlers=[handler], force=True)
    logging.getLogger("httpx").setLevel(logging.WARNING)
    if quiet:
        logging.getLogger("broker_gateway").setLevel(logging.WARNING)
