"""JSON logs for every process: structlog for our lines, the same renderer for FastStream, nats and uvicorn.

Every line a service writes is one JSON object, so a log shipper reads it whole: FastStream's own logger
(which ships with a coloured handler of its own and does not propagate) is sent through the root handler,
an uncaught exception is one line, and FastStream's supervisor restarting a pull loop whose fetch timed
out at start-up — known and harmless upstream — is one calm line instead of an ERROR with a traceback.

Victim data is confidential by law, so two guards stand between any log call and the output:
keys that could carry identity or narrative are dropped, and exceptions are rendered as their type
and innermost frame only — a pydantic error message can quote the input it rejected.
"""

from __future__ import annotations

import asyncio
import json
import logging
import sys
import traceback
from datetime import UTC, datetime
from types import TracebackType
from typing import Any

import structlog

FORBIDDEN_KEYS = frozenset(
    {"name", "nik", "phone", "narrative", "identity", "victim", "case", "data", "body", "birth_date", "pseudonym"}
)


def _drop_confidential(_: Any, __: str, event: dict[str, Any]) -> dict[str, Any]:
    for key in FORBIDDEN_KEYS.intersection(event):
        event[key] = "[withheld]"
    return event


def _safe_exception(_: Any, __: str, event: dict[str, Any]) -> dict[str, Any]:
    exc_info = event.pop("exc_info", None)
    if exc_info is True:
        exc_info = sys.exc_info()
    elif isinstance(exc_info, BaseException):
        exc_info = (type(exc_info), exc_info, exc_info.__traceback__)
    if exc_info and exc_info[0] is not None:
        frames = traceback.extract_tb(exc_info[2])
        event["error_type"] = exc_info[0].__name__
        if frames:
            last = frames[-1]
            event["error_at"] = f"{last.filename.rsplit('/', 1)[-1]}:{last.lineno}"
    return event


def _stdlib_message(_: Any, __: str, event: dict[str, Any]) -> dict[str, Any]:
    """Foreign (stdlib) records may format exception text into the message: keep its first line only."""
    message = event.get("event")
    if isinstance(message, str) and "\n" in message:
        event["event"] = message.split("\n", 1)[0]
    return event


UPSTREAM_LOGGERS = ("faststream", "uvicorn", "uvicorn.error", "nats")
"""Loggers of the libraries under us: no handler of their own, propagating to the root's JSON handler."""
SUPERVISOR_RETRY = "raised an exception, retrying"
SUPERVISOR_CALLBACK = "is being executed..."
TIMEOUT_RESTART = "pull fetch timed out; FastStream restarts the consumer loop (known upstream, harmless)"


class CalmUpstream(logging.Filter):
    """FastStream's supervisor lines, tamed: a pull loop restarted after a fetch `TimeoutError` becomes one
    INFO line with no traceback, and its "callback for Task-N is being executed" chatter shows at DEBUG only."""

    def filter(self, record: logging.LogRecord) -> bool:
        if not record.name.startswith("faststream"):
            return True
        message = record.getMessage()
        if SUPERVISOR_CALLBACK in message:
            return logging.getLogger().isEnabledFor(logging.DEBUG)
        error = record.exc_info[1] if record.exc_info else None
        if SUPERVISOR_RETRY in message and isinstance(error, (TimeoutError, asyncio.TimeoutError)):
            record.msg, record.args = TIMEOUT_RESTART, ()
            record.exc_info, record.exc_text = None, None
            record.levelno, record.levelname = logging.INFO, "INFO"
        return True


def _uncaught(service: str, stream: Any) -> Any:
    """A `sys.excepthook` that writes an uncaught exception as one JSON line (type and innermost frame)."""

    def hook(kind: type[BaseException], exc: BaseException, tb: TracebackType | None) -> None:
        frames = traceback.extract_tb(tb)
        line = {"event": "uncaught exception", "level": "critical", "service": service, "error_type": kind.__name__,
                "timestamp": datetime.now(UTC).isoformat().replace("+00:00", "Z")}
        if frames:
            line["error_at"] = f"{frames[-1].filename.rsplit('/', 1)[-1]}:{frames[-1].lineno}"
        stream.write(json.dumps(line) + "\n")
        stream.flush()

    return hook


def json_line(service: str, event: str, level: str = "error", **fields: Any) -> str:
    """One log line in the shape `configure` gives every line, for the few written before it runs."""
    return json.dumps({"event": event, "level": level, "service": service, **fields,
                       "timestamp": datetime.now(UTC).isoformat().replace("+00:00", "Z")})


SHARED_PROCESSORS: list[Any] = [
    structlog.contextvars.merge_contextvars,
    structlog.stdlib.add_log_level,
    structlog.stdlib.add_logger_name,
    structlog.processors.TimeStamper(fmt="iso", utc=True),
    _drop_confidential,
    _safe_exception,
]


def configure(service: str, level: str = "INFO", stream: Any = None) -> structlog.stdlib.BoundLogger:
    """Send every log line of this process to `stream` (stderr) as one JSON object, tagged with `service`."""
    handler = logging.StreamHandler(stream or sys.stderr)
    handler.setFormatter(
        structlog.stdlib.ProcessorFormatter(
            foreign_pre_chain=[*SHARED_PROCESSORS, _stdlib_message],
            processors=[
                structlog.stdlib.ProcessorFormatter.remove_processors_meta,
                structlog.processors.JSONRenderer(),
            ],
        )
    )
    handler.addFilter(CalmUpstream())
    root = logging.getLogger()
    root.handlers[:] = [handler]
    root.setLevel(level)
    for name in UPSTREAM_LOGGERS:
        upstream = logging.getLogger(name)
        upstream.handlers.clear()
        upstream.propagate = True
    logging.captureWarnings(True)
    sys.excepthook = _uncaught(service, stream or sys.stderr)
    for noisy in ("uvicorn.access", "asyncio"):
        logging.getLogger(noisy).setLevel(logging.WARNING)
    structlog.configure(
        # a line below the level is dropped before any processor runs: a DEBUG line on a hot path costs a check
        processors=[structlog.stdlib.filter_by_level, *SHARED_PROCESSORS,
                    structlog.stdlib.ProcessorFormatter.wrap_for_formatter],
        logger_factory=structlog.stdlib.LoggerFactory(),
        wrapper_class=structlog.stdlib.BoundLogger,
        cache_logger_on_first_use=True,
    )
    structlog.contextvars.bind_contextvars(service=service)
    return structlog.get_logger(service)


def get_logger(name: str) -> structlog.stdlib.BoundLogger:
    return structlog.get_logger(name)
