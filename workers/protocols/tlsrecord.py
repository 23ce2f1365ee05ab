"""Recognise a TLS record in bytes a plaintext probe got back (RFC 8446 section 5.1).

A TLS server that receives an MQTT CONNECT or an AMQP header in the clear may answer with
an alert (content type 21) or, rarely, a handshake record (22), both starting with the
record version ``03 0x``. The engine then tries the port again inside TLS, once.
"""

from __future__ import annotations

__all__ = ["is_tls_record"]

_ALERT, _HANDSHAKE = 21, 22


def is_tls_record(data: bytes) -> bool:
    """Whether ``data`` starts with a TLS alert or handshake record header.

    :param data: the first bytes a server sent.
    :returns: True for ``15|16 03 00-04 <length>`` with a plausible length (at most
        2^14 + 2048, RFC 8446 section 5.2), an alert being exactly 2 bytes long.
    """
    if len(data) < 5 or data[0] not in (_ALERT, _HANDSHAKE) or data[1] != 3 or data[2] > 4:
        return False
    length = int.from_bytes(data[3:5], "big")
    if data[0] == _ALERT:
        return length == 2
    return 0 < length <= (1 << 14) + 2048
