"""Target specs: what to scan, what must not be scanned, and the order of the pairs.

Target specs (command-line arguments, lines of ``-iL FILE``, lines of stdin for ``-``):

* ``127.10.0.0/24`` -- a CIDR network; host bits may be set (``127.10.0.9/24``), as in nmap;
* ``127.0.0.1`` -- one address;
* ``127.0.0.1-127.0.1.5`` -- an inclusive range;
* ``127.0.0.1-20`` -- a short range over the last octet.

Hostnames are refused (no DNS from a scanner's target parser), and so is IPv6. A target
list is a set: overlaps and repeats count once.

:func:`eligible` then applies, in this order, the IANA special-purpose blocklist (unless
reserved space is explicitly allowed), the operator's opt-out lists (always), and the
deployment's scope (always), and counts what each step removed.
"""

from __future__ import annotations

import random
import sys
from collections.abc import Iterable, Iterator, Sequence
from dataclasses import dataclass
from math import gcd
from typing import TextIO

from scheduler.blocklist import IPSet, TargetError, format_ip, parse_ipv4, parse_network
from scheduler.ports import PortSpec

__all__ = [
    "Exclusions",
    "TargetError",
    "eligible",
    "iter_targets",
    "parse_target",
    "read_targets",
]

_MAX_EXAMPLES = 3


def _quote(text: str, limit: int = 60) -> str:
    return repr(text if len(text) <= limit else text[:limit] + "...")


def _parse_range(spec: str) -> tuple[int, int]:
    """:returns: the inclusive range of one spec; :raises ValueError: a short reason."""
    if "/" in spec:
        return parse_network(spec)
    if "-" not in spec:
        ip = parse_ipv4(spec)
        return ip, ip
    left, _, right = spec.partition("-")
    first = parse_ipv4(left)
    if right.isascii() and right.isdigit():
        if len(right) > 1 and right[0] == "0":
            raise ValueError(f"octet {right} has a leading zero (ambiguous: octal?)")
        if len(right) > 3 or int(right) > 255:
            raise ValueError(f"octet {_quote(right, 12)[1:-1]} out of range")
        last = first & ~255 | int(right)
    else:
        last = parse_ipv4(right)
    if first > last:
        raise ValueError(f"range start {format_ip(first)} is after its end {format_ip(last)}")
    return first, last


def _spec_range(spec: str) -> tuple[int, int]:
    """Parse one spec; :raises TargetError: ``bad target 'SPEC': reason``."""
    text = spec.strip()
    if not text:
        raise TargetError("bad target '': empty")
    try:
        return _parse_range(text)
    except ValueError as exc:
        raise TargetError(f"bad target {_quote(text)}: {exc}") from None


def parse_target(spec: str) -> IPSet:
    """Parse one target spec (CIDR, address, range, short range; see the module docstring).

    :param spec: e.g. ``"127.10.0.0/24"`` or ``"127.0.0.1-20"``; surrounding space ignored.
    :returns: the addresses it names.
    :raises TargetError: e.g. ``bad target '300.1.1.1/24': octet 300 out of range``,
        ``bad target 'localhost': hostnames are not supported``.
    """
    return IPSet([_spec_range(spec)])


def _read_lines(lines: Iterable[str], source: str, out: list[tuple[int, int]]) -> None:
    """Parse target-file lines into ``out``: ``#`` comments, several specs per line allowed."""
    for number, line in enumerate(lines, 1):
        for spec in line.split("#", 1)[0].split():
            try:
                out.append(_spec_range(spec))
            except TargetError as exc:
                raise TargetError(f"{source}:{number}: {exc}") from None


def read_targets(specs: Iterable[str], files: Sequence[str] = (),
                 stdin: TextIO | None = None) -> IPSet:
    """Collect every target from arguments, ``-iL`` files and stdin into one set.

    Files and stdin hold one or more specs per line (whitespace-separated, as nmap's
    ``-iL``), ``#`` comments and blank lines. A ``-`` among ``specs`` reads stdin.

    :param specs: command-line target specs; ``"-"`` means "read specs from stdin".
    :param files: ``-iL`` file paths.
    :param stdin: where ``-`` reads from; ``None`` means :data:`sys.stdin`.
    :returns: the union of all targets (repeats count once).
    :raises TargetError: ``bad target ...``, ``FILE:LINE: bad target ...``,
        ``<stdin>:LINE: ...``, ``cannot read FILE: reason``, or ``no targets``.
    """
    ranges: list[tuple[int, int]] = []
    for spec in specs:
        if spec.strip() == "-":
            _read_lines(stdin if stdin is not None else sys.stdin, "<stdin>", ranges)
        else:
            ranges.append(_spec_range(spec))
    for path in files:
        try:
            with open(path, encoding="utf-8") as handle:
                _read_lines(handle, path, ranges)
        except OSError as exc:
            raise TargetError(f"cannot read {path}: {exc.strerror or exc}") from None
        except UnicodeDecodeError as exc:
            raise TargetError(f"cannot read {path}: not UTF-8 text ({exc.reason})") from None
    targets = IPSet(ranges)
    if not targets:
        raise TargetError("no targets")
    return targets


@dataclass(frozen=True, slots=True)
class Exclusions:
    """What :func:`eligible` removed from a target set, step by step.

    Each address is counted once, by the first step that removed it (order: reserved,
    opted out, out of scope).

    :param blocklisted: addresses in the IANA special-purpose blocklist (0 when reserved
        space is allowed).
    :param opted_out: addresses on an operator opt-out list.
    :param out_of_scope: addresses outside the deployment's dialable networks.
    :param examples: up to three removed ranges with the reason, e.g.
        ``("10.0.0.0/8 (reserved)", "8.8.8.8 (out of scope)")``.
    """

    blocklisted: int = 0
    opted_out: int = 0
    out_of_scope: int = 0
    examples: tuple[str, ...] = ()

    @property
    def total(self) -> int:
        """Addresses removed by all steps together."""
        return self.blocklisted + self.opted_out + self.out_of_scope

    def describe(self) -> str:
        """One line, e.g. ``"256 reserved, 1 out of scope (e.g. 10.0.0.0/24 (reserved))"``."""
        parts = [f"{count:,} {label}" for count, label in (
            (self.blocklisted, "reserved (IANA blocklist)"),
            (self.opted_out, "opted out"),
            (self.out_of_scope, "out of scope"),
        ) if count]
        if not parts:
            return "nothing excluded"
        text = ", ".join(parts)
        if self.examples:
            text += f" (e.g. {', '.join(self.examples)})"
        return text


def eligible(targets: IPSet, *, blocklist: IPSet, optout: IPSet, scope: IPSet,
             allow_reserved: bool) -> tuple[IPSet, Exclusions]:
    """Remove what must not be scanned, and say how much each rule removed.

    :param targets: what the operator asked for.
    :param blocklist: the built-in IANA special-purpose list
        (:func:`scheduler.blocklist.default_blocklist`); lifted by ``allow_reserved``.
    :param optout: operator opt-out lists (settings and ``--blocklist`` files); **always**
        applied, ``allow_reserved`` does not lift them.
    :param scope: the deployment's dialable networks; always applied.
    :param allow_reserved: skip ``blocklist`` (needed to scan 127/8 locally).
    :returns: ``(addresses to scan, what was excluded)``.
    """
    remaining = targets
    counts: list[int] = []
    examples: list[str] = []
    steps = ((IPSet.empty() if allow_reserved else blocklist, "reserved"),
             (optout, "opted out"))
    for removed_by, label in steps:
        removed = remaining.intersection(removed_by)
        counts.append(removed.size)
        _add_examples(examples, removed, label)
        remaining = remaining.difference(removed)
    outside = remaining.difference(scope)
    counts.append(outside.size)
    _add_examples(examples, outside, "out of scope")
    remaining = remaining.difference(outside)
    return remaining, Exclusions(blocklisted=counts[0], opted_out=counts[1],
                                 out_of_scope=counts[2], examples=tuple(examples))


def _add_examples(examples: list[str], removed: IPSet, label: str) -> None:
    room = _MAX_EXAMPLES - len(examples)
    if room > 0 and removed:
        examples.extend(f"{text} ({label})" for text in removed.describe_ranges(limit=room)
                        if not text.startswith("+"))


def _scatter(size: int, seed: int) -> tuple[int, int]:
    """A stride coprime to ``size`` near size/phi, and a start offset, from ``seed``."""
    rng = random.Random(seed)
    stride = max(1, int(size * 0.6180339887)) + rng.randrange(max(1, size // 64 + 1))
    while gcd(stride, size) != 1:
        stride += 1
    return stride % size or 1, rng.randrange(size)


def iter_targets(ips: IPSet, ports: Sequence[PortSpec], *,
                 seed: int | None = None) -> Iterator[tuple[int, PortSpec]]:
    """Yield every ``(ip, port spec)`` pair lazily; nothing proportional to ``ips`` is built.

    Ports are the **outer** loop: every address is visited on the first port before any
    address on the second, so one host never gets all its ports back to back (unless there
    is only one host).

    :param ips: addresses to visit.
    :param ports: port specs, visited in this order.
    :param seed: ``None`` visits addresses in ascending order (predictable, for tests and
        small local scans). An int visits them in a scattered order
        ``index = (stride * i + offset) mod size`` with ``stride`` coprime to ``size`` and
        near ``size / phi``, drawn from the seed: consecutive probes land far apart. It is a
        cheap scatter, not a random permutation; Internet sweeps use the sharder's cyclic
        group instead.
    """
    size = ips.size
    if seed is None or size < 2:
        for spec in ports:
            for ip in ips:
                yield ip, spec
        return
    stride, offset = _scatter(size, seed)
    nth = ips.nth
    for spec in ports:
        index = offset
        for _ in range(size):
            yield nth(index), spec
            index += stride
            if index >= size:
                index -= size
