"""The tree a query becomes (:func:`storage.search.parse.parse` makes it, the compiler and
the reference evaluator read it), and :class:`QueryError`, which says what was wrong and
where."""

from __future__ import annotations

from dataclasses import dataclass
from datetime import datetime

from storage.search.fields import Field

__all__ = ["All", "And", "Bare", "Exists", "Match", "Node", "Not", "Or", "Prefix",
           "QueryError", "Range"]


class QueryError(ValueError):
    """A query that cannot be run: *message* says what was expected, *position* where
    (0-based offset into the query)."""

    def __init__(self, message: str, position: int) -> None:
        super().__init__(message)
        self.message = message
        self.position = max(0, position)

    @property
    def column(self) -> int:
        """1-based column of the mistake."""
        return self.position + 1

    def __str__(self) -> str:
        return f"column {self.column}: {self.message}"

    def caret(self, query: str) -> str:
        """The query on one line and a caret under the mistake, on the next."""
        shown = " ".join(query.split("\n"))
        return f"{shown}\n{' ' * min(self.position, len(shown))}^"


@dataclass(frozen=True, slots=True)
class All:
    """The empty query: everything."""


@dataclass(frozen=True, slots=True)
class Match:
    """``field:value``: equality (for ``set`` fields: membership)."""

    field: Field
    value: str | int | bool


@dataclass(frozen=True, slots=True)
class Prefix:
    """``field:value*``: a prefix, on ``text``, ``keyword`` and ``set`` fields."""

    field: Field
    prefix: str


@dataclass(frozen=True, slots=True)
class Exists:
    """``field:*``: the field has a value."""

    field: Field


@dataclass(frozen=True, slots=True)
class Range:
    """A range of numbers, addresses (IPv4 as integers) or times; ``None`` is open.
    Also what a day (``last_seen:2026-12-01``) and a CIDR block become."""

    field: Field
    low: int | datetime | None
    high: int | datetime | None
    low_inclusive: bool = True
    high_inclusive: bool = True


@dataclass(frozen=True, slots=True)
class Bare:
    """A bare term: a case-insensitive substring of product, organisation or certificate
    names."""

    text: str


@dataclass(frozen=True, slots=True)
class Not:
    item: Node


@dataclass(frozen=True, slots=True)
class And:
    items: tuple[Node, ...]


@dataclass(frozen=True, slots=True)
class Or:
    items: tuple[Node, ...]


Node = All | Match | Prefix | Exists | Range | Bare | Not | And | Or
