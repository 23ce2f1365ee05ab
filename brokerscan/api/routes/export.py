"""``GET /api/v1/export``: every result of a query, streamed as CSV or JSON lines, in
constant memory and with no cap (the store is read a chunk at a time by cursor, each chunk
written out before the next is read).

CSV and JSON lines are written by :mod:`storage.export`, as ``brokerscan search --all``
writes them: CSV has the columns of :data:`storage.searcher.EXPORT_COLUMNS` (empty for
unknown, ``true`` and ``false`` for booleans, ISO 8601 times, text that a spreadsheet would
take for a formula with a leading ``'``); JSON lines are the stored records, one per line,
as ``brokerscan scan -o`` writes them.
"""

from __future__ import annotations

from typing import Annotated, Final, Literal

from fastapi import APIRouter, Depends, Query
from fastapi.responses import StreamingResponse
from starlette.types import Message, Receive, Scope, Send

from brokerscan.api.auth import Principal, principal
from brokerscan.api.context import ApiContext
from brokerscan.api.deps import Q, context, store, view_of
from brokerscan.api.errors import ApiError
from brokerscan.api.models import ErrorBody
from storage.export import csv_chunks, jsonl_chunks
from storage.search.compile import View
from storage.search.parse import parse
from storage.searcher import Searcher

__all__ = ["router"]

router = APIRouter(tags=["search"])

_MEDIA: Final = {"csv": "text/csv; charset=utf-8", "jsonl": "application/x-ndjson"}


class _SlotResponse(StreamingResponse):
    """A streamed answer that gives its export slot back however it ends (done, the
    client gone, or stalled past the send timeout)."""

    def __init__(self, ctx: ApiContext, key: str, *args: object, **kwargs: object) -> None:
        super().__init__(*args, **kwargs)  # type: ignore[arg-type]
        self._slots = ctx.exports
        self._key = key

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        held = True

        def give() -> None:
            nonlocal held
            if held:
                held = False
                self._slots.give(self._key)

        async def sending(message: Message) -> None:
            await send(message)
            if message["type"] == "http.response.body" and not message.get("more_body"):
                give()  # the last byte is out: the client may ask again at once

        try:
            await super().__call__(scope, receive, sending)
        finally:
            give()


@router.get("/export", response_class=StreamingResponse, responses={
    200: {"description": "the whole result set, streamed",
          "content": {"text/csv": {"schema": {"type": "string"}},
                      "application/x-ndjson": {"schema": {"type": "string"}}}},
    404: {"model": ErrorBody, "description": "unknown sweep"}})
async def export(
    ctx: Annotated[ApiContext, Depends(context)],
    who: Annotated[Principal, Depends(principal)],
    searcher: Annotated[Searcher, Depends(store)],
    view: Annotated[View, Depends(view_of)],
    q: Q = "",
    format: Annotated[Literal["csv", "jsonl"], Query(description=(
        "csv: the searchable columns; jsonl: the stored records"))] = "csv",
) -> StreamingResponse:
    """Every service (or observation) matching *q*, however many: the count of rows equals
    ``/count``'s total."""
    node = parse(q)  # a bad query is a 400 before anything is streamed
    name = f"brokerscan-export.{format}"
    busy = ctx.exports.take(who.token_id)
    if busy is not None:
        raise ApiError(429, f"too many exports: {busy}; retry when one has finished",
                       headers={"Retry-After": "5"})
    try:
        # the first row, read now: what the store refuses (or a store that is down) is
        # its 4xx or 503 before the 200, never a stream that breaks after it
        await searcher.search(node, view=view, limit=1)
    except BaseException:
        ctx.exports.give(who.token_id)
        raise
    chunks = (jsonl_chunks if format == "jsonl" else csv_chunks)(searcher, node, view=view)
    return _SlotResponse(ctx, who.token_id, chunks, media_type=_MEDIA[format],
                         headers={"Content-Disposition": f'attachment; filename="{name}"'})
