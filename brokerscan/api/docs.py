"""The API's documentation page, served offline: Swagger UI from the package's own copy
(``static/swagger-ui/``, vendored from npm by ``scripts/vendor-swagger-ui.sh``, with its
licence), reading ``/openapi.json``. No CDN: FastAPI's own docs page is turned off
(``docs_url=None``) because it loads Swagger UI from one."""

from __future__ import annotations

from importlib import resources
from typing import Final

from fastapi import APIRouter, FastAPI
from fastapi.responses import HTMLResponse
from fastapi.staticfiles import StaticFiles

__all__ = ["mount_docs"]

_PAGE: Final = """<!doctype html>
<html lang="en">
<head>
<meta charset="utf-8">
<title>brokerscan API</title>
<link rel="stylesheet" href="/static/swagger-ui/swagger-ui.css">
</head>
<body>
<div id="swagger-ui"></div>
<script src="/static/swagger-ui/swagger-ui-bundle.js"></script>
<script src="/static/docs.js"></script>
</body>
</html>
"""

#: Only the page's own files: no inline script, nothing from elsewhere.
_CSP: Final = ("default-src 'self'; img-src 'self' data:; style-src 'self' 'unsafe-inline'; "
               "frame-ancestors 'none'")


def mount_docs(app: FastAPI) -> None:
    """``GET /docs`` and ``/static/`` (Swagger UI and the page's script)."""
    router = APIRouter(include_in_schema=False)

    @router.get("/docs")
    async def docs() -> HTMLResponse:
        return HTMLResponse(_PAGE, headers={"Content-Security-Policy": _CSP})

    app.include_router(router)
    static = resources.files("brokerscan.api").joinpath("static")
    app.mount("/static", StaticFiles(directory=str(static)), name="static")
