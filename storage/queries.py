"""What the SQL of the two backends differs in (:class:`Dialect`), the parameters of one
statement (:class:`Params`), and the opaque cursors of paged answers."""

from __future__ import annotations

import base64
import json
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from datetime import date, datetime
from typing import Any, Final

from storage.rows import as_utc

__all__ = [
    "MAX_CURSOR",
    "Dialect",
    "Params",
    "decode_cursor",
    "encode_cursor",
]


@dataclass(frozen=True, slots=True)
class Dialect:
    """What differs between the backends' SQL.

    :ivar positional: parameters are ``$1, $2, ...`` (PostgreSQL) rather than ``?``
    :ivar encode_date: a :class:`~datetime.date` as a parameter
    :ivar encode_time: a :class:`~datetime.datetime` as a parameter
    :ivar decode_date: a stored day back as a :class:`~datetime.date`
    :ivar decode_time: a stored timestamp back as an aware :class:`~datetime.datetime`
    """

    positional: bool
    encode_date: Callable[[date], object]
    encode_time: Callable[[datetime], object]
    decode_date: Callable[[Any], date]
    decode_time: Callable[[Any], datetime]


class Params:
    """The parameters of one statement, in order; :meth:`add` returns the placeholder."""

    def __init__(self, dialect: Dialect) -> None:
        self.dialect = dialect
        self.values: list[object] = []

    def add(self, value: object) -> str:
        if isinstance(value, datetime):
            value = self.dialect.encode_time(as_utc(value))
        elif isinstance(value, date):
            value = self.dialect.encode_date(value)
        self.values.append(value)
        return f"${len(self.values)}" if self.dialect.positional else "?"


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
