"""The target permutation: a walk of the cyclic group (Z/pZ)* from a seed, as in ZMap.

A sweep has ``n`` targets, numbered ``0 .. n-1`` (see :mod:`scheduler.shards` for how a
number becomes an (address, port) pair). To visit them in a random order without keeping
any state per target, we walk the multiplicative group modulo ``p``, the smallest prime
greater than ``n``:

* ``g`` is a generator (primitive root) of the group, so ``g**0, g**1, ..., g**(p-2)``
  are the ``p - 1`` elements ``1 .. p-1``, each exactly once;
* ``start`` is a random element, so element number ``e`` of the walk is
  ``start * g**e mod p`` (:meth:`Permutation.element_at`) and the next one is one
  multiplication away;
* element ``x`` stands for target ``x - 1``; the few elements past ``n`` (``n + 1 .. p - 1``,
  fewer than the gap to the next prime: a few hundred at most for ``n`` near ``2**34``) are
  skipped.

``g`` and ``start`` come from :class:`random.Random` seeded with the sweep's seed, so the
same ``(n, seed)`` gives the same order in every process and Python version (the seed is
hashed with SHA-512 by :mod:`random`, not with ``hash()``). Workers never re-derive them:
the three numbers travel in each shard's message (:mod:`scheduler.shards`).

Unlike ZMap we need no table of pre-factored primes: ``p - 1`` is below ``2**35`` for a
4-port IPv4 sweep, so trial division plus Pollard's rho factors it in well under a
millisecond, and Python ints never overflow, so ``g`` need not be small. Primality uses
Miller-Rabin with the first twelve primes as bases, which is deterministic (no false
positives) below 3.18 * 10**23, about 2**78: comfortably past 64 bits.
"""

from __future__ import annotations

import random
from collections.abc import Iterator
from dataclasses import dataclass
from functools import lru_cache
from itertools import count
from math import gcd, isqrt

__all__ = [
    "MAX_TARGETS",
    "Permutation",
    "is_generator",
    "is_prime",
    "next_prime",
    "prime_factors",
]

_MR_BASES = (2, 3, 5, 7, 11, 13, 17, 19, 23, 29, 31, 37)
_MR_LIMIT = 318_665_857_834_031_151_167_461
"""The smallest strong pseudoprime to all of :data:`_MR_BASES` (Sorenson and Webster, 2015):
below it, Miller-Rabin with these bases has no false positives."""

MAX_TARGETS = 2**64
"""Largest target count a :class:`Permutation` accepts (far beyond IPv4 x 65,535 ports)."""

_TRIAL_PRIMES = tuple(q for q in range(2, 1000) if all(q % d for d in range(2, isqrt(q) + 1)))


def is_prime(n: int) -> bool:
    """Deterministic primality test for ``n`` below 3.18 * 10**23 (Miller-Rabin).

    :param n: any int; values below 2 are not prime.
    :raises ValueError: ``n`` is too large for the test to be deterministic.
    """
    if n < 2:
        return False
    for q in _MR_BASES:
        if n % q == 0:
            return n == q
    if n >= _MR_LIMIT:
        raise ValueError(f"{n} is too large for a deterministic primality test")
    d, s = n - 1, 0
    while not d & 1:
        d >>= 1
        s += 1
    for a in _MR_BASES:
        x = pow(a, d, n)
        if x == 1 or x == n - 1:
            continue
        for _ in range(s - 1):
            x = x * x % n
            if x == n - 1:
                break
        else:
            return False
    return True


def next_prime(n: int) -> int:
    """:returns: the smallest prime strictly greater than ``n`` (2 for any ``n < 2``)."""
    candidate = max(n + 1, 2)
    while not is_prime(candidate):
        candidate += 1
    return candidate


def _rho(n: int) -> int:
    """A non-trivial factor of the odd composite ``n`` (Pollard's rho, Floyd cycles)."""
    for c in count(1):
        x = y = 2
        d = 1
        while d == 1:
            x = (x * x + c) % n
            y = (y * y + c) % n
            y = (y * y + c) % n
            d = gcd(x - y, n)
        if d != n:
            return d
    raise AssertionError("unreachable")  # pragma: no cover


@lru_cache(maxsize=64)
def prime_factors(n: int) -> tuple[int, ...]:
    """The distinct prime factors of ``n``, ascending (trial division, then Pollard's rho).

    Cached (a few entries): every shard of one sweep checks the same ``p - 1``.

    :param n: an int ``>= 1`` (1 has no prime factors).
    :raises ValueError: ``n < 1``.
    """
    if n < 1:
        raise ValueError(f"cannot factor {n}")
    found: set[int] = set()
    for q in _TRIAL_PRIMES:
        if q * q > n:
            break
        if n % q == 0:
            found.add(q)
            while n % q == 0:
                n //= q
    stack = [n] if n > 1 else []
    while stack:
        m = stack.pop()
        if is_prime(m):
            found.add(m)
        else:
            d = _rho(m)
            stack += [d, m // d]
    return tuple(sorted(found))


def is_generator(g: int, p: int) -> bool:
    """Whether ``g`` generates (Z/pZ)*, i.e. has order ``p - 1``.

    :param g: candidate, ``1 <= g < p``.
    :param p: a prime.
    """
    if not 0 < g < p:
        return False
    return all(pow(g, (p - 1) // q, p) != 1 for q in prime_factors(p - 1))


def _check_int(name: str, value: object) -> None:
    if type(value) is not int:
        raise ValueError(f"{name} must be an int, not {type(value).__name__}")


@dataclass(frozen=True, slots=True)
class Permutation:
    """A random order of ``range(n)``: the walk ``start * generator**e mod prime``.

    Build one with :meth:`from_seed`; the constructor is for parameters that were
    serialised (it re-checks them, so a corrupted message cannot silently drop or repeat
    targets).

    :param n: number of targets.
    :param prime: a prime greater than ``n`` (normally the smallest).
    :param generator: a generator of (Z/primeZ)*.
    :param start: the element at exponent 0, ``1 <= start < prime``.
    :raises ValueError: any parameter out of range, ``prime`` not prime, ``generator`` not
        a generator.
    """

    n: int
    prime: int
    generator: int
    start: int

    def __post_init__(self) -> None:
        for name in ("n", "prime", "generator", "start"):
            _check_int(name, getattr(self, name))
        if not 0 <= self.n <= MAX_TARGETS:
            raise ValueError(f"target count {self.n} out of range (0 to 2**64)")
        if self.prime <= self.n or not is_prime(self.prime):
            raise ValueError(f"{self.prime} is not a prime greater than {self.n}")
        if not is_generator(self.generator, self.prime):
            raise ValueError(f"{self.generator} does not generate the group modulo {self.prime}")
        if not 0 < self.start < self.prime:
            raise ValueError(f"start {self.start} out of range (1 to {self.prime - 1})")

    @classmethod
    def from_seed(cls, n: int, seed: int) -> Permutation:
        """The permutation of ``range(n)`` for a seed: same ``(n, seed)``, same order.

        ``prime`` is the smallest prime above ``n``; ``start`` and then ``generator`` are
        drawn from ``random.Random`` seeded with a string made from ``seed`` (so negative
        seeds do not alias positive ones, as plain ``Random(-s)`` would). Generator
        candidates are drawn uniformly from ``2 .. prime-1`` until one passes
        :func:`is_generator`; typically a fifth to a half of them do.

        :param n: number of targets, ``0 <= n <= 2**64``.
        :param seed: the sweep's seed, any int.
        :raises ValueError: ``n`` out of range or ``seed`` not an int.
        """
        _check_int("n", n)
        _check_int("seed", seed)
        if not 0 <= n <= MAX_TARGETS:
            raise ValueError(f"target count {n} out of range (0 to 2**64)")
        prime = next_prime(n)
        rng = random.Random(f"brokerscan.cyclic:{seed}")
        start = rng.randrange(1, prime)
        generator = 1
        if prime > 2:
            generator = rng.randrange(2, prime)
            while not is_generator(generator, prime):
                generator = rng.randrange(2, prime)
        return cls(n=n, prime=prime, generator=generator, start=start)

    @property
    def order(self) -> int:
        """Number of exponents (and of group elements) in the walk: ``prime - 1``."""
        return self.prime - 1

    def element_at(self, exponent: int) -> int:
        """The group element at an exponent: ``start * generator**exponent mod prime``.

        :param exponent: any int; the walk repeats with period :attr:`order`.
        :returns: an element in ``1 .. prime-1``; it stands for target ``element - 1`` if
            ``element <= n``, and for nothing otherwise.
        """
        return self.start * pow(self.generator, exponent, self.prime) % self.prime

    def index_at(self, exponent: int) -> int | None:
        """The target at an exponent, or ``None`` if that element is past ``n``."""
        element = self.element_at(exponent)
        return element - 1 if element <= self.n else None

    def walk(self, first_exponent: int, end_exponent: int) -> Iterator[int]:
        """Target indices for exponents ``first_exponent .. end_exponent-1``, in walk order.

        Elements past ``n`` are skipped, so this yields at most
        ``end_exponent - first_exponent`` indices. One multiplication and one comparison per
        exponent; nothing is precomputed.

        :param first_exponent: first exponent of the range (inclusive).
        :param end_exponent: end of the range (exclusive); nothing if not above the first.
        """
        x = self.element_at(first_exponent)
        g, p, n = self.generator, self.prime, self.n
        for _ in range(end_exponent - first_exponent):
            if x <= n:
                yield x - 1
            x = x * g % p

    def __iter__(self) -> Iterator[int]:
        """The whole permutation: every index of ``range(n)`` exactly once."""
        return self.walk(0, self.order)
