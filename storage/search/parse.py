"""Parse a search query into a checked tree: lark reads the grammar (``grammar.lark``),
this module turns its tree into :data:`Node` values whose fields are known and whose values
are typed, and refuses anything else with a :class:`QueryError` that says where.

Bounded cost, whatever a user sends: at most :data:`MAX_LENGTH` characters, nesting at
most :data:`MAX_DEPTH` deep, at most :data:`MAX_TERMS` terms of which at most
:data:`MAX_WILDCARDS` are wildcards or bare terms (those cannot use an index).
"""

from __future__ import annotations

import ipaddress
from dataclasses import dataclass
from datetime import UTC, date, datetime, timedelta
from functools import cache
from importlib import resources
from typing import Final

import lark
from lark import Token, Transformer, Tree, v_args

from storage.search.fields import Field, Kind, lookup
from storage.search.tree import (
    All,
    And,
    Bare,
    Exists,
    Match,
    Node,
    Not,
    Or,
    Prefix,
    QueryError,
    Range,
)

__all__ = [
    "MAX_DEPTH",
    "MAX_LENGTH",
    "MAX_TERMS",
    "MAX_WILDCARDS",
    "All",
    "And",
    "Bare",
    "Exists",
    "Match",
    "Node",
    "Not",
    "Or",
    "Prefix",
    "QueryError",
    "Range",
    "parse",
]

MAX_LENGTH: Final = 2000
MAX_DEPTH: Final = 32
MAX_TERMS: Final = 100
MAX_WILDCARDS: Final = 10


# --------------------------------------------------------------------------- values


def _unquote(token: Token) -> str:
    text = str(token)[1:-1]
    out: list[str] = []
    escaped = False
    for char in text:
        if escaped:
            out.append(char)
            escaped = False
        elif char == "\\":
            escaped = True
        else:
            out.append(char)
    return "".join(out)


@dataclass(frozen=True, slots=True)
class _Value:
    text: str
    quoted: bool
    position: int


def _int(field: Field, value: _Value) -> int:
    try:
        number = int(value.text, 10)
    except ValueError:
        raise QueryError(f"{field.name}: expected a whole number, not {value.text!r}",
                         value.position) from None
    low, high = field.bounds
    if not low <= number <= high:
        what = "is not a port" if field.name == "port" else "is out of range"
        raise QueryError(f"{field.name}: {number} {what} ({low} to {high})", value.position)
    return number


def _bool(field: Field, value: _Value) -> bool:
    lowered = value.text.lower()
    if lowered in ("true", "yes", "1"):
        return True
    if lowered in ("false", "no", "0"):
        return False
    raise QueryError(f"{field.name}: expected true or false, not {value.text!r}",
                     value.position)


def _ip(field: Field, value: _Value) -> int:
    try:
        return int(ipaddress.IPv4Address(value.text))
    except ValueError:
        raise QueryError(f"{field.name}: expected an IPv4 address, a CIDR block or a range, "
                         f"not {value.text!r}", value.position) from None


def _is_day(text: str) -> bool:
    return len(text) == 10  # 2026-12-01; every ISO time is longer


#: The years a time may fall in: the day after 9999-12-31, or an instant of year 1 moved
#: to UTC, cannot be represented (an OverflowError, not a bad query).
YEARS: Final = (1, 9998)


def _time(field: Field, value: _Value, *, end: bool) -> datetime:
    """A time given as a day or a time; a day means its first instant, or with *end* the
    first instant after it (the next midnight)."""
    text = value.text
    try:
        if _is_day(text):
            day = date.fromisoformat(text)
            moment = datetime(day.year, day.month, day.day, tzinfo=UTC)
        else:
            moment = datetime.fromisoformat(text)
    except ValueError:
        raise QueryError(f"{field.name}: expected a day (2026-12-01) or a time "
                         f"(2026-12-01T10:00:00Z), not {text!r}", value.position) from None
    if not YEARS[0] <= moment.year <= YEARS[1]:
        raise QueryError(f"{field.name}: {text!r} is outside the years {YEARS[0]:04d} to "
                         f"{YEARS[1]}", value.position)
    try:
        if _is_day(text):
            return moment + timedelta(days=1) if end else moment
        return moment.replace(tzinfo=UTC) if moment.tzinfo is None else moment.astimezone(UTC)
    except OverflowError:  # year 1 (or 9998) moved past its end by a UTC offset
        raise QueryError(f"{field.name}: {text!r} is outside the years {YEARS[0]:04d} to "
                         f"{YEARS[1]}", value.position) from None


def _canonical(field: Field, value: _Value) -> str:
    if field.canonical is None:
        return value.text
    try:
        canonical = field.canonical(value.text)
    except ValueError as exc:
        raise QueryError(f"{field.name}: expected {exc}, not {value.text!r}",
                         value.position) from None
    if field.choices and field.kind is Kind.KEYWORD and canonical not in field.choices:
        raise QueryError(f"{field.name}: expected one of {', '.join(field.choices)}, "
                         f"not {value.text!r}", value.position)
    return canonical


def _match(field: Field, value: _Value) -> Node:
    text = value.text
    if not value.quoted and text == "*":
        return Exists(field)
    if not value.quoted and text.endswith("*"):
        if field.kind not in (Kind.TEXT, Kind.KEYWORD, Kind.SET):
            hint = " (use a CIDR block such as 141.211.0.0/16)" if field.kind is Kind.IP else ""
            raise QueryError(f"{field.name}: a wildcard works on text fields only{hint}",
                             value.position + len(text) - 1)
        stem = text.rstrip("*")
        if "*" in stem or not stem:
            raise QueryError(f"{field.name}: only one trailing * is allowed",
                             value.position + text.index("*"))
        if field.kind is Kind.TEXT or field.canonical is None:
            return Prefix(field, stem)
        try:  # the canonical form of the stem (its case), without the vocabulary check
            return Prefix(field, field.canonical(stem))
        except ValueError as exc:
            raise QueryError(f"{field.name}: expected {exc}, not a wildcard",
                             value.position) from None
    if field.kind is Kind.INT:
        return Match(field, _int(field, value))
    if field.kind is Kind.BOOL:
        return Match(field, _bool(field, value))
    if field.kind is Kind.IP:
        if "/" in text:
            try:
                net = ipaddress.IPv4Network(text, strict=False)
            except ValueError:
                raise QueryError(f"{field.name}: {text!r} is not an IPv4 CIDR block",
                                 value.position) from None
            return Range(field, int(net.network_address), int(net.broadcast_address))
        return Match(field, _ip(field, value))
    if field.kind is Kind.TIME:
        # a day is the whole day; a time is that instant
        return Range(field, _time(field, value, end=False), _time(field, value, end=True),
                     True, not _is_day(text))
    if field.kind in (Kind.KEYWORD, Kind.SET):
        return Match(field, _canonical(field, value))
    return Match(field, text)


def _bound(field: Field, value: _Value, *, end: bool) -> int | datetime | None:
    """A range bound; *end* says where a day bound falls (see :func:`_time`)."""
    if value.text == "*" and not value.quoted:
        return None
    if field.kind is Kind.INT:
        return _int(field, value)
    if field.kind is Kind.IP:
        return _ip(field, value)
    return _time(field, value, end=end)


# --------------------------------------------------------------------------- lark


@cache
def _parser() -> lark.Lark:
    grammar = resources.files("storage.search").joinpath("grammar.lark").read_text()
    return lark.Lark(grammar, parser="lalr", propagate_positions=True, maybe_placeholders=False)


_TOKEN_NAMES: Final = {
    "_RPAR": "')'", "_LPAR": "'('", "WORD": "a value", "QUOTED": "a quoted value",
    "FIELD": "a field", "RANGE_OPEN": "'[' or '{'", "RANGE_CLOSE": "']' or '}'",
    "_TO": "TO", "_AND": "AND", "_OR": "OR", "_NOT": "NOT", "$END": "the end of the query",
}


def _expected(names: set[str]) -> str:
    wanted = sorted({_TOKEN_NAMES.get(n, n.lower()) for n in names})
    return " or ".join(wanted) if wanted else "something else"


def _syntax_error(exc: lark.exceptions.LarkError, query: str) -> QueryError:
    if isinstance(exc, lark.exceptions.UnexpectedCharacters):
        where = exc.pos_in_stream or 0
        char = query[where] if where < len(query) else ""
        return QueryError(f"unexpected character {char!r}", where)
    if isinstance(exc, lark.exceptions.UnexpectedToken):
        token = exc.token
        if token.type == "$END":
            return QueryError(f"the query ends too early: expected {_expected(exc.expected)}",
                              len(query))
        what = {"_RPAR": "')' without its '('", "RANGE_CLOSE": f"{str(token)!r}"}.get(
            token.type, repr(str(token)))
        return QueryError(f"unexpected {what}: expected {_expected(exc.expected)}",
                          token.start_pos or 0)
    if isinstance(exc, lark.exceptions.UnexpectedEOF):
        return QueryError(f"the query ends too early: expected {_expected(set(exc.expected))}",
                          len(query))
    return QueryError(f"cannot read the query: {exc}", 0)  # pragma: no cover


def _depth_and_terms(tree: Tree[Token]) -> tuple[int, int, int, int]:
    """(depth, terms, wildcards, position of the deepest node), without recursion."""
    deepest, position, terms, wildcards = 0, 0, 0, 0
    stack: list[tuple[Tree[Token] | Token, int]] = [(tree, 1)]
    while stack:
        node, depth = stack.pop()
        if isinstance(node, Token):
            if node.type == "WORD" and node.endswith("*") and node != "*":
                wildcards += 1
            continue
        if node.data in ("field_term", "bare_term"):
            terms += 1
            if node.data == "bare_term":
                wildcards += 1
        if depth > deepest:
            deepest = depth
            position = node.meta.start_pos if not node.meta.empty else 0
        stack.extend((child, depth + 1) for child in node.children)
    return deepest, terms, wildcards, position


@v_args(inline=True)
class _ToNodes(Transformer[Token, Node]):
    def word(self, token: Token) -> _Value:
        return _Value(str(token), False, token.start_pos or 0)

    def quoted(self, token: Token) -> _Value:
        return _Value(_unquote(token), True, token.start_pos or 0)

    def range(self, opening: Token, low: _Value, high: _Value, closing: Token,
              ) -> tuple[str, _Value, _Value, str]:
        return (str(opening), low, high, str(closing))

    def field_term(self, token: Token, value: _Value | tuple[str, _Value, _Value, str]) -> Node:
        name = str(token)[:-1]
        try:
            field = lookup(name)
        except KeyError as exc:
            raise QueryError(exc.args[0], token.start_pos or 0) from None
        if isinstance(value, _Value):
            return _match(field, value)
        opening, low, high, closing = value
        if field.kind not in (Kind.INT, Kind.IP, Kind.TIME):
            raise QueryError(f"{field.name}: ranges work on numbers, addresses and times, "
                             f"not on {field.kind} fields", token.start_pos or 0)
        low_inclusive, high_inclusive = opening == "[", closing == "]"
        # Days as bounds: [day starts at its midnight, {day after it; day] ends before the
        # next midnight, day} before its own. Either way the bound becomes a midnight, the
        # low one included and the high one not.
        lo = _bound(field, low, end=not low_inclusive)
        hi = _bound(field, high, end=high_inclusive)
        if field.kind is Kind.TIME:
            if _is_day(low.text):
                low_inclusive = True
            if _is_day(high.text):
                high_inclusive = False
        if lo is not None and hi is not None and lo > hi:  # type: ignore[operator]
            raise QueryError(f"{field.name}: the range starts after it ends", low.position)
        return Range(field, lo, hi, low_inclusive, high_inclusive)

    def bare_term(self, value: _Value | tuple[str, _Value, _Value, str]) -> Node:
        if not isinstance(value, _Value):
            raise QueryError("a range needs a field (port:[1 TO 1024])", value[1].position - 1)
        text = value.text.rstrip("*") if not value.quoted else value.text
        if not text.strip():
            if value.text == "*":
                return All()
            raise QueryError("an empty value", value.position)
        return Bare(text)

    def negation(self, item: Node) -> Node:
        return item.item if isinstance(item, Not) else Not(item)

    def and_expr(self, *items: Node) -> Node:
        return And(tuple(items))

    def or_expr(self, *items: Node) -> Node:
        return Or(tuple(items))


def _check_parentheses(query: str) -> None:
    """Refuse nesting past :data:`MAX_DEPTH` (parentheses leave no node of their own in the
    tree, so they are counted here, outside quoted values)."""
    depth, quoted, escaped = 0, False, False
    for position, char in enumerate(query):
        if quoted:
            if escaped:
                escaped = False
            elif char == "\\":
                escaped = True
            elif char == '"':
                quoted = False
        elif char == '"':
            quoted = True
        elif char == "(":
            depth += 1
            if depth > MAX_DEPTH:
                raise QueryError(f"the query nests deeper than {MAX_DEPTH} levels", position)
        elif char == ")":
            depth -= 1


def parse(query: str) -> Node:
    """The checked tree of *query* (empty or blank: :class:`All`).

    :raises QueryError: the query is malformed, names an unknown field, has a value its
        field cannot take, or is too long, too deep or has too many terms or wildcards.
    """
    if len(query) > MAX_LENGTH:
        raise QueryError(f"the query is longer than {MAX_LENGTH} characters", MAX_LENGTH)
    for position, char in enumerate(query):
        if char == "\x00" or "\ud800" <= char <= "\udfff":
            raise QueryError(f"the query holds a character no text can hold ({char!r})",
                             position)
    if not query.strip():
        return All()
    _check_parentheses(query)
    try:
        tree = _parser().parse(query)
    except lark.exceptions.LarkError as exc:
        raise _syntax_error(exc, query) from None
    if isinstance(tree, Token):  # a lone value reduces to its token  # pragma: no cover
        tree = Tree("bare_term", [tree])
    depth, terms, wildcards, where = _depth_and_terms(tree)
    if depth > MAX_DEPTH:
        raise QueryError(f"the query nests deeper than {MAX_DEPTH} levels", where)
    if terms > MAX_TERMS:
        raise QueryError(f"the query has more than {MAX_TERMS} terms", len(query))
    if wildcards > MAX_WILDCARDS:
        raise QueryError(f"the query has more than {MAX_WILDCARDS} wildcards and bare terms "
                         "(they cannot use an index)", len(query))
    try:
        node: Node = _ToNodes().transform(tree)
    except lark.exceptions.VisitError as exc:
        if isinstance(exc.orig_exc, QueryError):
            raise exc.orig_exc from None
        raise
    return node
