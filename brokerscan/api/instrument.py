"""The hook where operations (issue 11) instrument the API: ``GET /metrics`` and the
``brokerscan_http_request_seconds{route}`` middleware are mounted by :func:`instrument`,
which :func:`brokerscan.api.app.build_app` calls once every route is added (so a
middleware can label requests by their route template, never by an address)."""

from __future__ import annotations

from fastapi import FastAPI

__all__ = ["instrument"]


def instrument(app: FastAPI) -> None:
    """Mount metrics on *app* (nothing yet: issue 11 fills this in)."""
