"""``GET /api/v1/export``: every result of a query, streamed as CSV or JSON lines, in
constant memory and with no cap (the store is read a chunk at a time by cursor, each chunk
written out before the next is read).

CSV has the columns of :data:`storage.searcher.EXPORT_COLUMNS` (empty for unknown, ``true``
and ``false`` for booleans, ISO 8601 times); a text value that a spreadsheet would take for
a formula (it starts with ``=``, ``+``, ``-``, ``@``, a tab or a carriage return: product
names and certificate subjects come from the Internet) gets a leading ``'``. JSON lines
are the stored records, one per line, as ``brokerscan scan -o`` writes them.
"""

from __future__ import annotations

import csv
import io
from collections.abc import AsyncIterator
from typing import Annotated, Final, Literal

from fastapi import APIRouter, Depends, Query
from fastapi.responses import StreamingResponse

from brokerscan.api.deps import Q, store, view_of
from brokerscan.api.models import ErrorBody
from storage.search.compile import View
from storage.search.parse import parse
from storage.search.tree import Node
from storage.searcher import EXPORT_COLUMNS, Searcher

__all__ = ["router"]

router = APIRouter(tags=["search"])

_MEDIA: Final = {"csv": "text/csv; charset=utf-8", "jsonl": "application/x-ndjson"}


def _header() -> str:
    out = io.StringIO()
    csv.writer(out, lineterminator="\n").writerow(EXPORT_COLUMNS)
    return out.getvalue()


async def _stream(searcher: Searcher, node: Node, view: View, kind: str,
                  ) -> AsyncIterator[str]:
    if kind == "jsonl":
        async for rows in searcher.export_rows(node, view=view, records=True):
            yield "\n".join([str(r[3]) for r in rows]) + "\n"  # records as stored
        return
    yield _header()
    async for text in searcher.export_csv(node, view=view):
        yield text


@router.get("/export", response_class=StreamingResponse, responses={
    200: {"description": "the whole result set, streamed",
          "content": {"text/csv": {"schema": {"type": "string"}},
                      "application/x-ndjson": {"schema": {"type": "string"}}}},
    404: {"model": ErrorBody, "description": "unknown sweep"}})
async def export(
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
    return StreamingResponse(_stream(searcher, node, view, format), media_type=_MEDIA[format],
                             headers={"Content-Disposition": f'attachment; filename="{name}"'})
