"""What every client of the results broker shares: the errors a lost or refused connection
raises, :class:`StreamError` for a stream that cannot run at all, and the retry backoff."""

from __future__ import annotations

import random

import aio_pika.exceptions
import aiormq.exceptions

__all__ = ["CONNECTION_ERRORS", "START_ERRORS", "StreamError", "backoff"]

#: What a lost or refused broker connection raises (caught by the reconnect loops).
CONNECTION_ERRORS: tuple[type[BaseException], ...] = (
    aiormq.exceptions.AMQPError,
    aio_pika.exceptions.ChannelInvalidStateError,
    ConnectionError,
    OSError,
    TimeoutError,
)
#: What connecting and declaring at start-up can raise.
START_ERRORS: tuple[type[BaseException], ...] = (*CONNECTION_ERRORS,
                                                 aio_pika.exceptions.AMQPException)


class StreamError(RuntimeError):
    """The stream cannot run: broker unreachable at start-up, or a setting is wrong."""


def backoff(attempt: int, *, first: float = 0.2, cap: float = 5.0) -> float:
    """Seconds before retry *attempt* (0, 1, ...): *first*, doubling up to *cap*, jittered
    down by up to half so that many clients do not retry in step."""
    delay: float = min(cap, first * 2**attempt)
    return delay * random.uniform(0.5, 1.0)
