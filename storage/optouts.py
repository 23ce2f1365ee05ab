"""Opt-out requests, kept in either store (table ``optouts``; PostgreSQL migration 0012,
SQLite step 6): networks someone asked us to leave alone, with a contact and a reason.

A request arrives through the scanner's public page (:mod:`brokerscan.web.identity`) as
*pending*; an operator approves or rejects it (``brokerscan optout``, ``/api/v1/optouts``).
Deciding is idempotent (approving an approved request changes nothing) and keeps the row:
a rejected request stays listed as such, and may still be approved later. The approved
networks (:func:`approved_networks`) join every sweep's opt-out list: sweeps planned from
then on leave them out (``sweep start``, scheduled runs), and the dispatcher reads them at
the start of every round and sends them with every shard it dispatches
(:mod:`scheduler.optoutfeed`), so running sweeps stop dialling them from their next
dispatch round on.

Every function takes a store (:class:`~storage.searcher.Searcher`); its ``fetch`` runs one
statement in a transaction of its own.
"""

from __future__ import annotations

import ipaddress
import re
import secrets
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any, Final, Literal

from storage.dialect import Params
from storage.reader import Row
from storage.searcher import Searcher

__all__ = ["MAX_CONTACT", "MAX_NETWORKS", "MAX_REASON", "STATES", "OptOut", "OptOutError",
           "approved_networks", "decide", "get_optout", "list_optouts", "parse_networks",
           "split_networks", "submit_optout"]

State = Literal["pending", "approved", "rejected"]
STATES: Final = ("pending", "approved", "rejected")

#: Limits of one request (the public form is hostile input).
MAX_NETWORKS: Final = 64
MAX_CONTACT: Final = 320
MAX_REASON: Final = 2000
#: The widest network one request may name: a /8 (wider is surely a mistake, or abuse).
MIN_PREFIX: Final = 8

_COLUMNS: Final = ("id, networks, contact, reason, client, state, created_at, decided_at, "
                   "decided_by")
_ID: Final = re.compile(r"oo-[0-9a-f]{12}")


class OptOutError(ValueError):
    """A request cannot be made or found (one line: what is wrong)."""


@dataclass(frozen=True, slots=True)
class OptOut:
    """One request as stored."""

    id: str
    networks: tuple[str, ...]
    contact: str
    reason: str
    client: str
    state: State
    created_at: datetime
    decided_at: datetime | None
    decided_by: str | None

    def public(self) -> dict[str, Any]:
        """The request as operators see it (CLI and API)."""
        return {"id": self.id, "networks": list(self.networks), "contact": self.contact,
                "reason": self.reason, "client": self.client, "state": self.state,
                "created_at": self.created_at.isoformat(),
                "decided_at": None if self.decided_at is None
                else self.decided_at.isoformat(),
                "decided_by": self.decided_by}


def split_networks(text: str) -> list[str]:
    """The entries of a comma-, space- or newline-separated list (empty ones dropped)."""
    return [part for part in re.split(r"[\s,]+", text) if part]


def parse_networks(text: str) -> list[str]:
    """The IPv4 networks of a request, checked and in canonical form (host bits cleared,
    duplicates dropped, in order).

    :raises OptOutError: none given, too many, not an IPv4 network, or wider than a /8
    """
    entries = split_networks(text)
    if not entries:
        raise OptOutError("name at least one IPv4 network (CIDR), such as 192.0.2.0/24")
    if len(entries) > MAX_NETWORKS:
        raise OptOutError(f"{len(entries)} networks: at most {MAX_NETWORKS} per request")
    found: list[str] = []
    for entry in entries:
        if len(entry) > 18 or not re.fullmatch(r"[0-9./]+", entry):
            raise OptOutError(f"{entry[:40]!r} is not an IPv4 network (CIDR)")
        try:
            net = ipaddress.IPv4Network(entry, strict=False)
        except ValueError:
            raise OptOutError(f"{entry!r} is not an IPv4 network (CIDR)") from None
        if net.prefixlen < MIN_PREFIX:
            raise OptOutError(f"{entry} is wider than a /{MIN_PREFIX}: name smaller "
                              "networks")
        if str(net) not in found:
            found.append(str(net))
    return found


def _check_text(contact: str, reason: str) -> tuple[str, str]:
    contact, reason = contact.strip(), reason.strip()
    if not contact:
        raise OptOutError("give a contact (an email address or a URL) so we can answer")
    if len(contact) > MAX_CONTACT:
        raise OptOutError(f"the contact is {len(contact)} characters: at most {MAX_CONTACT}")
    if len(reason) > MAX_REASON:
        raise OptOutError(f"the reason is {len(reason)} characters: at most {MAX_REASON}")
    if any(ord(c) < 32 for c in contact) or any(ord(c) < 32 and c not in "\r\n\t"
                                                for c in reason):
        raise OptOutError("control characters are not accepted")
    return contact, reason


def _optout(store: Searcher, row: Row) -> OptOut:
    decided = row["decided_at"]
    return OptOut(id=str(row["id"]), networks=tuple(split_networks(str(row["networks"]))),
                  contact=str(row["contact"]), reason=str(row["reason"]),
                  client=str(row["client"]), state=row["state"],
                  created_at=store.dialect.decode_time(row["created_at"]),
                  decided_at=None if decided is None else store.dialect.decode_time(decided),
                  decided_by=row["decided_by"])


async def submit_optout(store: Searcher, networks: str, contact: str, reason: str = "", *,
                        client: str = "") -> OptOut:
    """Record a pending request.

    :raises OptOutError: bad networks, no contact, a field too long
    """
    nets = parse_networks(networks)
    contact, reason = _check_text(contact, reason)
    params = Params(store.dialect)
    values = ", ".join(params.add(v) for v in (
        f"oo-{secrets.token_hex(6)}", ",".join(nets), contact, reason, client[:64],
        "pending", datetime.now(UTC)))
    rows = await store.fetch(
        "INSERT INTO optouts (id, networks, contact, reason, client, state, created_at) "
        f"VALUES ({values}) RETURNING {_COLUMNS}", params.values)
    return _optout(store, rows[0])


async def get_optout(store: Searcher, optout_id: str) -> OptOut | None:
    params = Params(store.dialect)
    rows = await store.fetch(f"SELECT {_COLUMNS} FROM optouts WHERE id = "
                             f"{params.add(optout_id)}", params.values)
    return _optout(store, rows[0]) if rows else None


async def list_optouts(store: Searcher, state: str | None = None, *,
                       limit: int = 1000) -> list[OptOut]:
    """Requests, oldest first (of one *state*, or all).

    :raises OptOutError: an unknown state
    """
    params = Params(store.dialect)
    where = ""
    if state is not None:
        if state not in STATES:
            raise OptOutError(f"unknown state {state!r}: use one of {', '.join(STATES)}")
        where = f"WHERE state = {params.add(state)} "
    rows = await store.fetch(f"SELECT {_COLUMNS} FROM optouts {where}ORDER BY created_at, id "
                             f"LIMIT {params.add(int(limit))}", params.values)
    return [_optout(store, r) for r in rows]


async def decide(store: Searcher, optout_id: str, state: Literal["approved", "rejected"], *,
                 by: str) -> tuple[OptOut, bool]:
    """Approve or reject a request; the request, and whether this call changed it (a
    request in *state* already is left as it was: deciding twice is harmless).

    :raises OptOutError: no such request
    """
    if not _ID.fullmatch(optout_id):
        raise OptOutError(f"{optout_id[:40]!r} is not a request id (oo- and 12 hex digits)")
    params = Params(store.dialect)
    changed = await store.fetch(
        f"UPDATE optouts SET state = {params.add(state)}, "
        f"decided_at = {params.add(datetime.now(UTC))}, decided_by = {params.add(by[:200])} "
        f"WHERE id = {params.add(optout_id)} AND state <> {params.add(state)} RETURNING id",
        params.values)
    found = await get_optout(store, optout_id)
    if found is None:
        raise OptOutError(f"no opt-out request {optout_id} (see brokerscan optout list)")
    return found, bool(changed)


async def approved_networks(store: Searcher) -> list[str]:
    """Every approved network, as CIDRs (each once)."""
    rows = await store.fetch("SELECT networks FROM optouts WHERE state = 'approved' "
                             "ORDER BY id", [])
    return list(dict.fromkeys(net for r in rows for net in split_networks(str(r["networks"]))))
