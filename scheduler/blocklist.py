"""IPv4 address sets and ZMap-format blocklists.

:class:`IPSet` is an immutable set of IPv4 addresses stored as sorted, disjoint, inclusive
ranges of ints. Besides the set algebra it can name its *n*-th address (:meth:`IPSet.nth`)
and the position of an address (:meth:`IPSet.index_of`) in O(log ranges), so that a
permutation over ``range(ipset.size)`` visits only allowed addresses: blocked space costs
nothing, as in ZMap's constraint tree.

Blocklist files use ZMap's format: one CIDR network or single address per line, ``#``
starts a comment (whole-line or trailing), blank lines are ignored. Errors name
``file:line``. ``blocklist.conf`` next to this module is the IANA special-purpose list
that every sweep excludes unless a run explicitly allows reserved space.

The address parser (:func:`parse_ipv4`, :func:`parse_network`) lives here because both
blocklist lines and target specs need it. It accepts what :mod:`ipaddress` accepts for
dotted quads, but its messages name the bad octet and say why hostnames, IPv6 and hex
octets are refused.
"""

from __future__ import annotations

import ipaddress
import re
from bisect import bisect_right
from collections.abc import Iterable, Iterator
from functools import cache
from importlib import resources
from itertools import accumulate

__all__ = [
    "MAX_IP",
    "BlocklistError",
    "IPSet",
    "TargetError",
    "default_blocklist",
    "format_ip",
    "load_blocklist",
    "parse_blocklist",
    "parse_ipv4",
    "parse_network",
]

MAX_IP = 2**32 - 1
"""The highest IPv4 address, 255.255.255.255, as an int."""

_HOSTNAME = re.compile(r"[A-Za-z0-9-]+(\.[A-Za-z0-9-]+)*\.?")
_DIGITS = re.compile(r"[0-9]+")


class TargetError(ValueError):
    """A target spec, target file or blocklist that cannot be used; the message is one line."""


class BlocklistError(TargetError):
    """A blocklist file that cannot be read or parsed (message: ``file:line: reason``)."""


def _short(text: str, limit: int = 60) -> str:
    """Quote user text for a one-line message: repr escapes newlines, long text is cut."""
    if len(text) > limit:
        text = text[:limit] + "..."
    return repr(text)


def format_ip(ip: int) -> str:
    """Dotted-quad text of an address.

    :param ip: the address as an int in ``0..2**32-1``.
    :returns: e.g. ``"127.0.0.1"``.
    """
    return f"{ip >> 24 & 255}.{ip >> 16 & 255}.{ip >> 8 & 255}.{ip & 255}"


def parse_ipv4(text: str) -> int:
    """Parse a dotted-quad IPv4 address (exactly four decimal octets, no leading zeros).

    :param text: e.g. ``"127.0.0.1"``.
    :returns: the address as an int.
    :raises ValueError: with a short reason (no spec quoted; callers add context).
    """
    if ":" in text:
        raise ValueError("IPv6 is not supported")
    parts = text.split(".")
    if any(p[:2] in ("0x", "0X") for p in parts):
        raise ValueError("hex octets are not supported")
    if _HOSTNAME.fullmatch(text) and any(c.isalpha() for c in text):
        raise ValueError("hostnames are not supported")
    if len(parts) != 4:
        raise ValueError(f"not an IPv4 address: {_short(text)} (need four octets a.b.c.d)")
    value = 0
    for part in parts:
        if not part:
            raise ValueError(f"empty octet in {_short(text)}")
        if not _DIGITS.fullmatch(part):
            raise ValueError(f"bad octet {_short(part)}")
        if len(part) > 1 and part[0] == "0":
            shown = _short(part, 12)[1:-1]
            raise ValueError(f"octet {shown} has a leading zero (ambiguous: octal?)")
        if len(part) > 3 or int(part) > 255:
            raise ValueError(f"octet {_short(part, 12)[1:-1]} out of range")
        octet = int(part)
        value = value << 8 | octet
    return value


def parse_network(text: str) -> tuple[int, int]:
    """Parse ``ADDRESS`` or ``ADDRESS/PREFIX`` into an inclusive range.

    Host bits below the prefix may be set (``10.1.2.3/8`` means ``10.0.0.0/8``), as in nmap.

    :param text: e.g. ``"127.10.0.0/24"``.
    :returns: ``(first, last)`` addresses as ints.
    :raises ValueError: with a short reason.
    """
    address, slash, prefix_text = text.partition("/")
    first = parse_ipv4(address)
    if not slash:
        return first, first
    if not _DIGITS.fullmatch(prefix_text) or len(prefix_text) > 2:
        raise ValueError(f"bad prefix length {_short(prefix_text)} (expected 0-32)")
    prefix = int(prefix_text)
    if prefix > 32:
        raise ValueError(f"prefix length {prefix} out of range (0-32)")
    host_mask = (1 << (32 - prefix)) - 1
    first &= ~host_mask & MAX_IP
    return first, first | host_mask


class IPSet:
    """An immutable set of IPv4 addresses: sorted, disjoint, non-adjacent inclusive ranges.

    Construct with ``IPSet([(first, last), ...])`` (any order, overlaps merged),
    :meth:`from_networks`, :meth:`empty` or :meth:`all`. Operators ``|``, ``&``, ``-`` are
    the same as :meth:`union`, :meth:`intersection`, :meth:`difference`.
    """

    __slots__ = ("_ends", "_offsets", "_size", "_starts")

    _starts: tuple[int, ...]
    _ends: tuple[int, ...]
    _offsets: tuple[int, ...]  # _offsets[k] = number of addresses in ranges before k
    _size: int

    def __init__(self, ranges: Iterable[tuple[int, int]] = ()) -> None:
        """:param ranges: inclusive ``(first, last)`` pairs of ints in ``0..MAX_IP``.

        :raises ValueError: a range out of bounds or with ``first > last``.
        """
        items = sorted(ranges)
        merged: list[tuple[int, int]] = []
        for first, last in items:
            if not 0 <= first <= last <= MAX_IP:
                raise ValueError(f"bad IPv4 range ({first}, {last})")
            if merged and first <= merged[-1][1] + 1:
                if last > merged[-1][1]:
                    merged[-1] = (merged[-1][0], last)
            else:
                merged.append((first, last))
        self._init(merged)

    def _init(self, merged: list[tuple[int, int]]) -> None:
        self._starts = tuple(r[0] for r in merged)
        self._ends = tuple(r[1] for r in merged)
        sizes = [last - first + 1 for first, last in merged]
        self._offsets = (0, *accumulate(sizes))[:-1] if sizes else ()
        self._size = sum(sizes)

    @classmethod
    def _normalised(cls, merged: list[tuple[int, int]]) -> IPSet:
        """Build from ranges already sorted, disjoint and non-adjacent (no checks)."""
        new = cls.__new__(cls)
        new._init(merged)
        return new

    @classmethod
    def empty(cls) -> IPSet:
        """:returns: the set with no addresses."""
        return cls._normalised([])

    @classmethod
    def all(cls) -> IPSet:
        """:returns: all of IPv4, ``0.0.0.0/0``."""
        return cls._normalised([(0, MAX_IP)])

    @classmethod
    def from_networks(cls, networks: Iterable[ipaddress.IPv4Network | str]) -> IPSet:
        """Build from networks.

        :param networks: :class:`ipaddress.IPv4Network` objects or CIDR / address strings
            (host bits allowed, ``strict=False``).
        :raises ValueError: a string that is not an IPv4 network.
        """
        ranges = []
        for net in networks:
            if isinstance(net, str):
                net = ipaddress.IPv4Network(net, strict=False)
            ranges.append((int(net.network_address), int(net.broadcast_address)))
        return cls(ranges)

    # -- queries ---------------------------------------------------------------------------

    @property
    def size(self) -> int:
        """Number of addresses in the set."""
        return self._size

    @property
    def ranges(self) -> tuple[tuple[int, int], ...]:
        """The inclusive ``(first, last)`` ranges, ascending."""
        return tuple(zip(self._starts, self._ends, strict=True))

    def __len__(self) -> int:
        return self._size

    def __bool__(self) -> bool:
        return self._size > 0

    def __contains__(self, ip: object) -> bool:
        if not isinstance(ip, int):
            return False
        k = bisect_right(self._starts, ip) - 1
        return k >= 0 and ip <= self._ends[k]

    def nth(self, index: int) -> int:
        """The ``index``-th address of the set in ascending order, in O(log ranges).

        :param index: ``0 <= index < size``.
        :raises IndexError: index out of range.
        """
        if not 0 <= index < self._size:
            raise IndexError(f"IPSet index {index} out of range (size {self._size})")
        k = bisect_right(self._offsets, index) - 1
        return self._starts[k] + index - self._offsets[k]

    def index_of(self, ip: int) -> int:
        """Position of ``ip`` in ascending order; the inverse of :meth:`nth`.

        :raises KeyError: ``ip`` is not in the set.
        """
        k = bisect_right(self._starts, ip) - 1
        if k < 0 or ip > self._ends[k]:
            raise KeyError(ip)
        return self._offsets[k] + ip - self._starts[k]

    def __iter__(self) -> Iterator[int]:
        """Addresses ascending, lazily (a /8 is not materialised)."""
        for first, last in zip(self._starts, self._ends, strict=True):
            yield from range(first, last + 1)

    def __eq__(self, other: object) -> bool:
        if not isinstance(other, IPSet):
            return NotImplemented
        return self._starts == other._starts and self._ends == other._ends

    def __hash__(self) -> int:
        return hash((self._starts, self._ends))

    def __repr__(self) -> str:
        shown = self.describe_ranges(limit=4)
        return f"IPSet([{', '.join(shown)}], size={self._size})"

    # -- algebra -----------------------------------------------------------------------------

    def union(self, other: IPSet) -> IPSet:
        """:returns: addresses in either set."""
        if not other._size:
            return self
        if not self._size:
            return other
        return IPSet([*self.ranges, *other.ranges])

    def intersection(self, other: IPSet) -> IPSet:
        """:returns: addresses in both sets (linear merge of the two range lists)."""
        out: list[tuple[int, int]] = []
        a_s, a_e, b_s, b_e = self._starts, self._ends, other._starts, other._ends
        i = j = 0
        while i < len(a_s) and j < len(b_s):
            first = max(a_s[i], b_s[j])
            last = min(a_e[i], b_e[j])
            if first <= last:
                out.append((first, last))
            if a_e[i] < b_e[j]:
                i += 1
            else:
                j += 1
        return IPSet._normalised(out)

    def difference(self, other: IPSet) -> IPSet:
        """:returns: addresses in this set but not in ``other``."""
        if not other._size or not self._size:
            return self
        out: list[tuple[int, int]] = []
        b_s, b_e = other._starts, other._ends
        j = 0
        for first, last in zip(self._starts, self._ends, strict=True):
            while j < len(b_s) and b_e[j] < first:
                j += 1
            k = j
            while first <= last and k < len(b_s) and b_s[k] <= last:
                if b_s[k] > first:
                    out.append((first, b_s[k] - 1))
                first = max(first, b_e[k] + 1)
                k += 1
            if first <= last:
                out.append((first, last))
        return IPSet._normalised(out)

    def complement(self) -> IPSet:
        """:returns: every IPv4 address not in this set."""
        return IPSet.all().difference(self)

    __or__ = union
    __and__ = intersection
    __sub__ = difference

    # -- display -----------------------------------------------------------------------------

    def describe_ranges(self, limit: int | None = None) -> list[str]:
        """Short text for each range: ``"10.0.0.0/8"``, ``"127.0.0.1"`` or ``"a-b"``.

        :param limit: show at most this many ranges, then one ``"+N more"`` entry.
        """
        out: list[str] = []
        for k, (first, last) in enumerate(zip(self._starts, self._ends, strict=True)):
            if limit is not None and k >= limit:
                out.append(f"+{len(self._starts) - limit} more")
                break
            out.append(_describe_range(first, last))
        return out


def _describe_range(first: int, last: int) -> str:
    if first == last:
        return format_ip(first)
    count = last - first + 1
    if count & (count - 1) == 0 and first % count == 0:
        return f"{format_ip(first)}/{33 - count.bit_length()}"
    return f"{format_ip(first)}-{format_ip(last)}"


# -- blocklist files ---------------------------------------------------------------------------


def parse_blocklist(text: str, source: str = "<blocklist>") -> IPSet:
    """Parse ZMap-format blocklist text.

    :param text: file contents: one CIDR or address per line, ``#`` comments, blank lines.
    :param source: name used in error messages (``source:line: ...``).
    :raises BlocklistError: the first bad line, as ``source:line: bad entry 'x': reason``.
    """
    ranges = []
    for number, line in enumerate(text.splitlines(), 1):
        entry = line.split("#", 1)[0].strip()
        if not entry:
            continue
        try:
            if "-" in entry:
                raise ValueError("ranges are not part of the ZMap format (use CIDRs)")
            ranges.append(parse_network(entry))
        except ValueError as exc:
            raise BlocklistError(f"{source}:{number}: bad entry {_short(entry)}: {exc}") from None
    return IPSet(ranges)


def load_blocklist(path: str) -> IPSet:
    """Read and parse a ZMap-format blocklist file (an operator's opt-out list, say).

    :raises BlocklistError: ``cannot read PATH: reason`` or ``PATH:LINE: ...``.
    """
    try:
        with open(path, encoding="utf-8") as handle:
            text = handle.read()
    except OSError as exc:
        raise BlocklistError(f"cannot read {path}: {exc.strerror or exc}") from None
    except UnicodeDecodeError as exc:
        raise BlocklistError(f"cannot read {path}: not UTF-8 text ({exc.reason})") from None
    return parse_blocklist(text, path)


@cache
def default_blocklist() -> IPSet:
    """The built-in IANA special-purpose blocklist (``scheduler/blocklist.conf``), cached."""
    text = resources.files("scheduler").joinpath("blocklist.conf").read_text(encoding="utf-8")
    return parse_blocklist(text, "blocklist.conf")
