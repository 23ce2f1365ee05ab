"""API tokens, kept in either store (table ``api_tokens``): made, listed, revoked, verified.

A token is ``bsk_<id>_<secret>``: *id* (12 hex digits) names the row and may be shown;
*secret* is 256 random bits (URL-safe base64). Only the SHA-256 of the secret is stored, so
the token itself exists once, in the output of ``brokerscan token create``; a stolen copy
of the table gives no token. A presented secret is hashed and compared in constant time.
Verifying only reads, so a server whose database role may only SELECT can check tokens.

Every function takes a store (:class:`~storage.searcher.Searcher`): its ``fetch`` runs one
statement in a transaction of its own, a write with ``RETURNING`` included.
"""

from __future__ import annotations

import hashlib
import hmac
import re
import secrets
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Final, Literal, cast, get_args

from storage.dialect import Params
from storage.reader import Row
from storage.searcher import Searcher

__all__ = ["ROLES", "Role", "TokenError", "TokenInfo", "create_token", "csrf_of",
           "list_tokens", "revoke_token", "split_token", "verify_token"]

Role = Literal["reader", "operator"]
#: What a token may do: ``reader`` reads everything; ``operator`` also steers sweeps.
ROLES: Final[tuple[str, ...]] = get_args(Role)

_PREFIX: Final = "bsk"
_TOKEN: Final = re.compile(r"bsk_([0-9a-f]{12})_([A-Za-z0-9_-]{43})")
_COLUMNS: Final = "id, name, role, created_at, revoked_at"
_MAX_NAME: Final = 200


class TokenError(ValueError):
    """A token cannot be made or revoked (one line: a bad name or role, no such token)."""


@dataclass(frozen=True, slots=True)
class TokenInfo:
    """A token as the store knows it (never the secret)."""

    id: str
    name: str
    role: Role
    created_at: datetime
    revoked_at: datetime | None


def split_token(text: str) -> tuple[str, str] | None:
    """``(id, secret)`` of a well-formed token, else None."""
    match = _TOKEN.fullmatch(text)
    return (match[1], match[2]) if match else None


def _hash(secret: str) -> str:
    return hashlib.sha256(secret.encode("ascii")).hexdigest()


def csrf_of(token: str) -> str:
    """The anti-CSRF value bound to a token (an HMAC keyed by it): a page that holds the
    token in an http-only cookie sends this in a header with every state-changing request;
    a forged request from another site cannot compute it."""
    return hmac.new(token.encode(), b"brokerscan-csrf", hashlib.sha256).hexdigest()


def _info(store: Searcher, row: Row) -> TokenInfo:
    revoked = row["revoked_at"]
    role = str(row["role"])
    assert role in ROLES
    return TokenInfo(id=str(row["id"]), name=str(row["name"]), role=cast(Role, role),
                     created_at=store.dialect.decode_time(row["created_at"]),
                     revoked_at=None if revoked is None else store.dialect.decode_time(revoked))


async def create_token(store: Searcher, name: str, role: str = "reader",
                       ) -> tuple[TokenInfo, str]:
    """Make a token.

    :returns: its record and the token text (shown once; only its hash is kept)
    :raises TokenError: an empty or overlong name, an unknown role
    """
    name = name.strip()
    if not name or len(name) > _MAX_NAME or not name.isprintable():
        raise TokenError(f"a token name is 1 to {_MAX_NAME} printable characters")
    if role not in ROLES:
        raise TokenError(f"unknown role {role!r}: use {' or '.join(ROLES)}")
    token_id = secrets.token_hex(6)
    secret = secrets.token_urlsafe(32)
    params = Params(store.dialect)
    values = ", ".join(params.add(v) for v in (token_id, name, role, _hash(secret),
                                                datetime.now(UTC)))
    rows = await store.fetch(f"INSERT INTO api_tokens (id, name, role, hash, created_at) "
                             f"VALUES ({values}) RETURNING {_COLUMNS}", params.values)
    return _info(store, rows[0]), f"{_PREFIX}_{token_id}_{secret}"


async def list_tokens(store: Searcher) -> list[TokenInfo]:
    """Every token, oldest first (revoked ones too)."""
    rows = await store.fetch(f"SELECT {_COLUMNS} FROM api_tokens ORDER BY created_at, id", [])
    return [_info(store, r) for r in rows]


async def revoke_token(store: Searcher, token_id: str) -> TokenInfo:
    """Revoke a token at once (a revoked token is refused from the next request on).

    :raises TokenError: no such token, or revoked already
    """
    params = Params(store.dialect)
    now, key = params.add(datetime.now(UTC)), params.add(token_id)
    rows = await store.fetch(
        f"UPDATE api_tokens SET revoked_at = {now} WHERE id = {key} AND revoked_at IS NULL "
        f"RETURNING {_COLUMNS}", params.values)
    if rows:
        return _info(store, rows[0])
    params = Params(store.dialect)
    found = await store.fetch(f"SELECT {_COLUMNS} FROM api_tokens WHERE id = "
                              f"{params.add(token_id)}", params.values)
    if found:
        raise TokenError(f"token {token_id} was revoked already")
    raise TokenError(f"no token {token_id!r} (see brokerscan token list)")


async def verify_token(store: Searcher, token: str) -> TokenInfo | None:
    """The token's record if *token* is one of the store's and not revoked, else None."""
    parts = split_token(token)
    if parts is None:
        return None
    token_id, secret = parts
    params = Params(store.dialect)
    rows = await store.fetch(f"SELECT {_COLUMNS}, hash FROM api_tokens WHERE id = "
                             f"{params.add(token_id)}", params.values)
    if not rows or not hmac.compare_digest(str(rows[0]["hash"]), _hash(secret)):
        return None
    info = _info(store, rows[0])
    return None if info.revoked_at is not None else info
