"""Shards of a sweep: contiguous slices of the target permutation, one per Celery task.

A sweep's targets are the pairs (eligible address, port): ``ips`` is an
:class:`~scheduler.blocklist.IPSet` after the blocklists, ``ports`` a list of
:class:`~scheduler.ports.PortSpec`, and there are ``n = ips.size * len(ports)`` of them.
Target ``t`` in ``range(n)`` is, **port-major**::

    port  = ports[t // ips.size]
    ip    = ips.nth(t % ips.size)

Blocked space has no index at all, so it costs nothing, and since the walk
(:class:`~scheduler.cyclic.Permutation`) visits indices in random order, consecutive
targets are unrelated addresses on unrelated ports whatever the layout. Port-major lets
one bisect over a small table (ports x ranges, :func:`shard_targets`) find both halves of
a target, which is what makes full generation fast.

As in ZMap, a shard is a contiguous range ``[first_exponent, end_exponent)`` of the walk's
``prime - 1`` exponents; :func:`plan_shards` cuts them as evenly as possible (sizes differ
by at most one), in O(shards) time and memory. Shards are disjoint and together cover
every target exactly once, for any shard count (more shards than targets just leaves some
empty). A shard carries its permutation's parameters, so :meth:`Shard.to_dict` is a
complete, small, int-only message and a worker needs nothing else but ``ips`` and
``ports``, which it rebuilds from the sweep's settings.

How many targets a shard really yields is only known by walking it: the elements past
``n`` land wherever they land. :func:`expected_targets` is the proportional estimate; it
is off by less than ``prime - 1 - n`` (the gap to the next prime, a few hundred at most
for a full IPv4 sweep).
"""

from __future__ import annotations

from bisect import bisect_right
from collections.abc import Iterator, Mapping, Sequence
from dataclasses import dataclass

from scheduler.blocklist import IPSet
from scheduler.cyclic import Permutation
from scheduler.ports import PortSpec

__all__ = [
    "SHARD_FORMAT",
    "Shard",
    "expected_targets",
    "iter_shard",
    "plan_shards",
    "shard_targets",
]

SHARD_FORMAT = "brokerscan.shard/1"
"""The ``format`` value of :meth:`Shard.to_dict`; bumped if the layout or walk changes."""

_INT_KEYS = ("index", "count", "first_exponent", "end_exponent", "n", "prime", "generator",
             "start")
_MAX_SEGMENTS = 4096
"""Above this many (port, range) segments :func:`shard_targets` uses a table of ranges only.
Measured: past a few thousand entries a lookup in the big table costs as much as
``divmod`` plus a lookup in the small one (random access to a big table of int objects
is cache-bound), so the bigger table stops paying for its memory."""


@dataclass(frozen=True, slots=True)
class Shard:
    """One slice of a sweep: exponents ``first_exponent .. end_exponent-1`` of the walk.

    :param index: position of this shard in its plan, ``0 <= index < count``.
    :param count: number of shards in the plan.
    :param first_exponent: first exponent (inclusive).
    :param end_exponent: end exponent (exclusive), ``<= permutation.order``.
    :param permutation: the sweep's permutation (shared by every shard of a plan).
    :raises ValueError: a field out of range.
    """

    index: int
    count: int
    first_exponent: int
    end_exponent: int
    permutation: Permutation

    def __post_init__(self) -> None:
        for name in ("index", "count", "first_exponent", "end_exponent"):
            if type(getattr(self, name)) is not int:
                raise ValueError(f"shard {name} must be an int")
        if not 0 <= self.index < self.count:
            raise ValueError(f"shard index {self.index} out of range (0 to {self.count - 1})")
        if not 0 <= self.first_exponent <= self.end_exponent <= self.permutation.order:
            raise ValueError(f"shard exponents [{self.first_exponent}, {self.end_exponent}) "
                             f"out of range (0 to {self.permutation.order})")

    @property
    def span(self) -> int:
        """Number of exponents in the shard (an upper bound on its targets)."""
        return self.end_exponent - self.first_exponent

    def to_dict(self) -> dict[str, int | str]:
        """A small JSON-safe dict (ints and one string) for a task message.

        :returns: ``{"format": SHARD_FORMAT, "index", "count", "first_exponent",
            "end_exponent", "n", "prime", "generator", "start"}``.
        """
        perm = self.permutation
        return {"format": SHARD_FORMAT, "index": self.index, "count": self.count,
                "first_exponent": self.first_exponent, "end_exponent": self.end_exponent,
                "n": perm.n, "prime": perm.prime, "generator": perm.generator,
                "start": perm.start}

    @classmethod
    def from_dict(cls, data: Mapping[str, object]) -> Shard:
        """Rebuild a shard from :meth:`to_dict` output, checking everything.

        :raises ValueError: wrong ``format``, missing or unknown keys, non-int values,
            values out of range, a prime that is not prime or a generator that is not one.
        """
        if data.get("format") != SHARD_FORMAT:
            raise ValueError(f"not a shard: format {data.get('format')!r}, expected "
                             f"{SHARD_FORMAT!r}")
        keys = set(data) - {"format"}
        if keys != set(_INT_KEYS):
            missing = sorted(set(_INT_KEYS) - keys)
            unknown = sorted(keys - set(_INT_KEYS))
            raise ValueError(f"bad shard dict: missing {missing}, unknown {unknown}")
        values: dict[str, int] = {}
        for key in _INT_KEYS:
            value = data[key]
            if type(value) is not int:
                raise ValueError(f"bad shard dict: {key} must be an int, not "
                                 f"{type(value).__name__}")
            values[key] = value
        perm = Permutation(n=values["n"], prime=values["prime"],
                           generator=values["generator"], start=values["start"])
        return cls(index=values["index"], count=values["count"],
                   first_exponent=values["first_exponent"],
                   end_exponent=values["end_exponent"], permutation=perm)


def plan_shards(n_targets: int, n_shards: int, seed: int) -> list[Shard]:
    """Cut the permutation of ``range(n_targets)`` into ``n_shards`` shards.

    Shard ``i`` gets exponents ``[i * Q // S, (i + 1) * Q // S)`` with ``Q = prime - 1``
    and ``S = n_shards``: contiguous, disjoint, covering, spans differing by at most one.
    O(n_shards); the permutation object is shared.

    :param n_targets: ``ips.size * len(ports)`` of the sweep.
    :param n_shards: at least 1; may exceed the number of targets.
    :param seed: the sweep's seed (:meth:`Permutation.from_seed`).
    :raises ValueError: ``n_shards < 1``, or bad ``n_targets`` / ``seed``.
    """
    if type(n_shards) is not int or n_shards < 1:
        raise ValueError(f"shard count must be a positive int, not {n_shards!r}")
    perm = Permutation.from_seed(n_targets, seed)
    order = perm.order
    return [Shard(index=i, count=n_shards, first_exponent=i * order // n_shards,
                  end_exponent=(i + 1) * order // n_shards, permutation=perm)
            for i in range(n_shards)]


def expected_targets(shard: Shard) -> float:
    """Estimated number of targets in a shard: ``span * n / (prime - 1)``.

    The exact count (only known by walking) lies in
    ``[span - (prime - 1 - n), span]``: each exponent gives at most one target and only
    ``prime - 1 - n`` elements of the whole walk are skipped.
    """
    perm = shard.permutation
    return shard.span * perm.n / perm.order


def _permutation(shard: Shard, perm: Permutation | None) -> Permutation:
    if perm is not None and perm != shard.permutation:
        raise ValueError("shard belongs to another permutation (different plan or seed)")
    return shard.permutation


def iter_shard(shard: Shard, perm: Permutation | None = None) -> Iterator[int]:
    """Target indices of a shard, in walk order, skipping elements past ``n``.

    :param shard: the shard.
    :param perm: the plan's permutation; optional, as the shard carries it.
    :raises ValueError: ``perm`` is not the shard's permutation.
    """
    return _permutation(shard, perm).walk(shard.first_exponent, shard.end_exponent)


def shard_targets(shard: Shard, perm: Permutation | None, ips: IPSet,
                  ports: Sequence[PortSpec]) -> Iterator[tuple[int, PortSpec]]:
    """The (address, port) targets of a shard, in walk order.

    Targets are laid out port-major (module docstring). Yields only addresses of ``ips``.

    :param shard: the shard.
    :param perm: the plan's permutation, or ``None`` for ``shard.permutation``.
    :param ips: the eligible addresses the plan was made for.
    :param ports: the ports the plan was made for, in the same order.
    :returns: ``(ip as int, PortSpec)`` pairs.
    :raises ValueError: ``perm`` is not the shard's, or ``ips.size * len(ports)`` is not
        the permutation's ``n`` (a plan made for other targets).
    """
    perm = _permutation(shard, perm)
    if ips.size * len(ports) != perm.n:
        raise ValueError(f"shard was planned for {perm.n} targets, not "
                         f"{ips.size} addresses x {len(ports)} ports")
    ranges = ips.ranges
    if len(ranges) * len(ports) <= _MAX_SEGMENTS:
        return _targets_by_segment(shard, perm, ranges, ips.size, ports)
    return _targets_by_port(shard, perm, ranges, ips.size, ports)


def _offsets(ranges: Sequence[tuple[int, int]]) -> list[int]:
    """``offsets[j]`` = number of addresses in the ranges before range ``j``."""
    offsets, total = [], 0
    for first, last in ranges:
        offsets.append(total)
        total += last - first + 1
    return offsets


def _targets_by_segment(shard: Shard, perm: Permutation, ranges: Sequence[tuple[int, int]],
                        size: int, ports: Sequence[PortSpec],
                        ) -> Iterator[tuple[int, PortSpec]]:
    """One bisect per target over every (port, range) segment, keyed by group element.

    Segment ``(k, j)`` covers elements from ``k * size + offsets[j] + 1``; within it the
    address is ``element + delta``. ``bounds`` omits the first start so that
    ``bisect_right`` returns the segment number directly.
    """
    offsets = _offsets(ranges)
    starts: list[int] = []
    deltas: list[int] = []
    specs: list[PortSpec] = []
    for k, spec in enumerate(ports):
        for (first, _), offset in zip(ranges, offsets, strict=True):
            base = k * size + offset + 1
            starts.append(base)
            deltas.append(first - base)
            specs.append(spec)
    bounds = tuple(starts[1:])
    delta_t, spec_t = tuple(deltas), tuple(specs)
    x = perm.element_at(shard.first_exponent)
    g, p, n, bisect = perm.generator, perm.prime, perm.n, bisect_right
    for _ in range(shard.span):
        if x <= n:
            j = bisect(bounds, x)
            yield x + delta_t[j], spec_t[j]
        x = x * g % p


def _targets_by_port(shard: Shard, perm: Permutation, ranges: Sequence[tuple[int, int]],
                     size: int, ports: Sequence[PortSpec],
                     ) -> Iterator[tuple[int, PortSpec]]:
    """Same targets as :func:`_targets_by_segment`, with a table only ranges long.

    For sets of many ranges (long opt-out lists), where ports x ranges would be big:
    ``divmod`` splits the index, then one bisect over the ranges finds the address.
    """
    offsets = _offsets(ranges)
    bounds = tuple(offsets[1:])
    deltas = tuple(first - offset for (first, _), offset in zip(ranges, offsets, strict=True))
    spec_t = tuple(ports)
    x = perm.element_at(shard.first_exponent)
    g, p, n, bisect = perm.generator, perm.prime, perm.n, bisect_right
    for _ in range(shard.span):
        if x <= n:
            k, i = divmod(x - 1, size)
            yield i + deltas[bisect(bounds, i)], spec_t[k]
        x = x * g % p
