"""Placeholder: being written (TLS handshake and certificate description)."""

from __future__ import annotations

import ssl
from datetime import datetime

from brokerscan.model import TlsInfo


def describe_tls(ssl_object: ssl.SSLObject | None, ip: str, now: datetime) -> TlsInfo:
    return TlsInfo(handshake_completed=True)
