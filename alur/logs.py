"""JSON logs for every process: structlog for our lines, the same renderer for FastStream, nats and uvicorn.

Victim data is confidential by law, so two guards stand between any log call and the output:
keys that could carry identity or narrative are dropped, and exceptions are rendered as their type
and innermost frame only — a pydantic error message can quote the input it rejected.
"""

from __future__ import annotations

import logging
import sys
import traceback
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
    root = logging.getLogger()
    root.handlers[:] = [handler]
    root.setLevel(level)
    for noisy in ("uvicorn.access", "asyncio"):
        logging.getLogger(noisy).setLevel(logging.WARNING)
    structlog.configure(
        processors=[*SHARED_PROCESSORS, structlog.stdlib.ProcessorFormatter.wrap_for_formatter],
        logger_factory=structlog.stdlib.LoggerFactory(),
        wrapper_class=structlog.stdlib.BoundLogger,
        cache_logger_on_first_use=True,
    )
    structlog.contextvars.bind_contextvars(service=service)
    return structlog.get_logger(service)


def get_logger(name: str) -> structlog.stdlib.BoundLogger:
    return structlog.get_logger(name)
