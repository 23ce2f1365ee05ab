"""Opaque cursors of paged answers: the sort key of a page's last row, as text."""

from __future__ import annotations

import base64
import json
from collections.abc import Sequence
from datetime import datetime
from typing import Final

__all__ = ["MAX_CURSOR", "decode_cursor", "encode_cursor"]


#: The longest cursor there is (a sort key of a few short values) is far shorter.
MAX_CURSOR: Final = 1024


def encode_cursor(values: Sequence[object]) -> str:
    """An opaque cursor for the row whose sort key is *values*."""
    plain = [v.isoformat() if isinstance(v, datetime) else v for v in values]
    return base64.urlsafe_b64encode(json.dumps(plain).encode()).decode("ascii")


def decode_cursor(cursor: str, size: int) -> list[object]:
    """The sort key inside *cursor*.

    :raises ValueError: the cursor was not made by :func:`encode_cursor` for this query
    """
    if len(cursor) > MAX_CURSOR:
        raise ValueError(f"invalid cursor: longer than {MAX_CURSOR} characters")
    try:
        values = json.loads(base64.urlsafe_b64decode(cursor.encode("ascii")))
    except (ValueError, UnicodeError) as exc:
        raise ValueError(f"invalid cursor: {exc}") from None
    except RecursionError:  # nested deeper than json can read: never a cursor of ours
        raise ValueError("invalid cursor: nested too deeply") from None
    if not isinstance(values, list) or len(values) != size:
        raise ValueError("invalid cursor: not a cursor of this listing")
    return values
