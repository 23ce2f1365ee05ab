"""One-line messages for operators: an exception as ``Type: message``, a URL without its
password. Every stage and face says what went wrong through these, so that a log line or a
CLI error never spans lines and never leaks a credential."""

from __future__ import annotations

from typing import Final

import yarl

__all__ = ["describe", "one_line", "redact"]

#: Characters of a reason kept where space is bounded (a message header, a status column).
REASON_MAX: Final = 300


def describe(exc: BaseException) -> str:
    """``Type: message`` on one line (just the type when the message is empty)."""
    text = " ".join(str(exc).split())
    return f"{type(exc).__name__}: {text}" if text else type(exc).__name__


def one_line(text: str, limit: int = REASON_MAX) -> str:
    """*text* with its whitespace collapsed, cut to *limit* characters (``...`` marks a cut)."""
    text = " ".join(text.split())
    return text if len(text) <= limit else text[: limit - 3] + "..."


def redact(url: str) -> str:
    """The URL without its password, for messages."""
    parsed = yarl.URL(url)
    return str(parsed.with_password("***")) if parsed.password else url
