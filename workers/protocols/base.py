"""What every codec raises: NeedData for a frame that is not complete yet, ProtocolError for
bytes that can never become a valid frame. Nothing else may escape a codec."""

from __future__ import annotations

__all__ = ["NeedData", "ProtocolError"]


class NeedData(Exception):
    """The buffer holds a valid prefix of a frame: read more bytes and parse again."""


class ProtocolError(Exception):
    """The bytes are not (or no longer can be) a valid frame of this protocol."""
