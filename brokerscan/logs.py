"""Log set-up for every long-running role: text for people, JSON lines for log pipelines.

``--log-format json`` (or ``BROKERSCAN_LOG_FORMAT=json``) makes every line one JSON object:
``ts`` (RFC 3339, UTC), ``level``, ``logger``, ``msg``, ``role``, ``pid``, the exception
as ``exc`` (one string) when there is one, and any ``extra={...}`` fields a call passed.
Celery's own loggers go through the same handler (the worker does not hijack the root
logger), so a worker's lines are all of one format.
"""

from __future__ import annotations

import json
import logging
import sys
from datetime import UTC, datetime
from typing import Any, Literal

__all__ = ["JsonFormatter", "setup_logging"]

_TEXT = "%(asctime)s %(levelname)s %(name)s: %(message)s"
# Attributes every LogRecord has: anything else on a record came from ``extra=``.
_STANDARD = frozenset(vars(logging.LogRecord("", 0, "", 0, "", None, None))) | {"message",
                                                                                 "asctime"}


class JsonFormatter(logging.Formatter):
    """One JSON object a line."""

    def __init__(self, role: str) -> None:
        super().__init__()
        self.role = role

    def format(self, record: logging.LogRecord) -> str:
        data: dict[str, Any] = {
            "ts": datetime.fromtimestamp(record.created, UTC).isoformat(timespec="milliseconds"),
            "level": record.levelname.lower(), "logger": record.name,
            "msg": record.getMessage(), "role": self.role, "pid": record.process,
        }
        for key, value in vars(record).items():
            if key not in _STANDARD and not key.startswith("_"):
                data[key] = value
        if record.exc_info:
            data["exc"] = self.formatException(record.exc_info)
        return json.dumps(data, default=str)


def setup_logging(role: str, fmt: Literal["text", "json"] = "text",
                  level: int = logging.INFO) -> None:
    """Send every logger's records at *level* and above to stderr in *fmt*.

    Replaces the root logger's handlers (so calling it twice is harmless) and quiets the
    libraries that log each retry themselves (our own lines say it once).
    """
    handler = logging.StreamHandler(sys.stderr)
    handler.setFormatter(JsonFormatter(role) if fmt == "json" else logging.Formatter(_TEXT))
    root = logging.getLogger()
    for old in list(root.handlers):
        root.removeHandler(old)
    root.addHandler(handler)
    root.setLevel(level)
    for noisy in ("aiormq", "aio_pika"):
        logging.getLogger(noisy).setLevel(logging.CRITICAL)
    logging.getLogger("asyncpg.pool").setLevel(logging.ERROR)
