"""uvicorn's HTTP/1.1 protocol with the read deadlines it lacks: a request's head must
arrive whole within *head_timeout* of the connection opening (or of the previous answer),
and a body that is being sent must not stall for more than *body_timeout*; a connection
that misses either is closed.

Why a subclass: uvicorn 0.55 arms its only timer (``timeout_keep_alive``) after an answer,
so a connection that never sends a byte, or sends half a header a byte at a time, stays
open for ever (issue 18, finding 4). Hypercorn's ``read_timeout`` is per read (a byte
every few seconds resets it) and Granian's ``http1 header_read_timeout`` would bring a
second server and its own process model; the protocol class is uvicorn's documented
``Config(http=...)`` extension point, and the deadline is two timers over h11's own state.
"""

from __future__ import annotations

import asyncio
from typing import Any

import h11
from uvicorn.protocols.http.h11_impl import H11Protocol

__all__ = ["DeadlineH11Protocol", "protocol_with"]


class DeadlineH11Protocol(H11Protocol):
    """:class:`H11Protocol` with a deadline for a request's head and a stall limit for its
    body (set by :func:`protocol_with`)."""

    head_timeout: float = 10.0
    body_timeout: float = 10.0

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self._deadline: asyncio.TimerHandle | None = None

    def _arm(self, seconds: float) -> None:
        self._disarm()
        self._deadline = self.loop.call_later(seconds, self._expired)

    def _disarm(self) -> None:
        if self._deadline is not None:
            self._deadline.cancel()
            self._deadline = None

    def _expired(self) -> None:
        self._deadline = None
        if self.transport.is_closing():
            return
        if self.conn.their_state is h11.SEND_BODY and self.flow.read_paused:
            # the app has not read what came yet: the client is not the one stalling
            self._arm(self.body_timeout)
            return
        self.transport.close()

    def _watch(self) -> None:
        """Arm the right timer for the state h11 is in after some bytes (or an answer)."""
        state = self.conn.their_state
        if state is h11.IDLE and (self.cycle is None or self.cycle.response_complete):
            if self._deadline is None:  # the head's deadline runs from its first chance
                self._arm(self.head_timeout)
        elif state is h11.SEND_BODY:
            self._arm(self.body_timeout)  # a stall limit: reset by every piece of body
        else:
            self._disarm()

    def connection_made(self, transport: asyncio.Transport) -> None:  # type: ignore[override]
        super().connection_made(transport)
        self._arm(self.head_timeout)

    def data_received(self, data: bytes) -> None:
        was_body = self.conn.their_state is h11.SEND_BODY
        super().data_received(data)
        if was_body and self.conn.their_state is h11.SEND_BODY:
            self._arm(self.body_timeout)
        else:
            self._watch()

    def on_response_complete(self) -> None:
        super().on_response_complete()
        self._disarm()
        self._watch()

    def connection_lost(self, exc: Exception | None) -> None:
        self._disarm()
        super().connection_lost(exc)


def protocol_with(head_timeout: float, body_timeout: float) -> type[DeadlineH11Protocol]:
    """The protocol class for ``uvicorn.Config(http=...)`` with these deadlines."""
    return type("DeadlineH11", (DeadlineH11Protocol,),
                {"head_timeout": head_timeout, "body_timeout": body_timeout})
