"""The dashboard's routes: one HTML shell per page (``/``, ``/search``, ``/host/{ip}``,
``/sweeps``, ``/sweeps/{id}``, ``/changes``, ``/watches``, ``/optouts``, ``/signin``), each
loading its JavaScript module, and ``/assets/...`` for the modules, the stylesheet and the
vendored libraries.

The pages hold no data: the modules fetch it from ``/api/v1`` with the browser's session
cookie (or none, for ``serve --no-auth``), so the pages themselves need no token and a
page of the dashboard can never show more than the API would. A Content-Security-Policy
lets a page talk only to its own origin, so nothing leaves the machine even if a vendored
library tried.
"""

from __future__ import annotations

import re
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from html import escape
from importlib.resources import files
from typing import Final

from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import Response
from starlette.routing import Route

from brokerscan.web.assets import Asset, load_assets, make_asset

__all__ = ["CSP", "PAGES", "dashboard_routes", "mount_dashboard"]

#: Everything from this origin; inline styles only because ECharts positions its
#: tooltips with style attributes; no frames, no plugins, no other hosts.
CSP: Final = ("default-src 'self'; script-src 'self'; style-src 'self' 'unsafe-inline'; "
              "img-src 'self' data:; connect-src 'self'; font-src 'self'; "
              "object-src 'none'; base-uri 'none'; form-action 'self'; "
              "frame-ancestors 'none'")


@dataclass(frozen=True, slots=True)
class Page:
    """A page: its module (``static/js/<module>.js``), title, and the nav entry it is."""

    module: str
    title: str
    nav: str | None


#: Route -> page. ``{ip}`` and ``{sweep}`` are read by the page's module from its path.
PAGES: Final[dict[str, Page]] = {
    "/": Page("overview", "Overview", "overview"),
    "/search": Page("search", "Search", "search"),
    "/host/{ip}": Page("host", "Host", "search"),
    "/sweeps": Page("sweeps", "Sweeps", "sweeps"),
    "/sweeps/{sweep}": Page("sweep", "Sweep", "sweeps"),
    "/changes": Page("changes", "Changes", "changes"),
    "/watches": Page("watches", "Watches", "watches"),
    "/optouts": Page("optouts", "Opt-outs", "optouts"),
    "/signin": Page("signin", "Sign in", None),
}

_NAV: Final = (("overview", "/", "Overview"), ("search", "/search", "Search"),
               ("sweeps", "/sweeps", "Sweeps"), ("changes", "/changes", "Changes"),
               ("watches", "/watches", "Watches"), ("optouts", "/optouts", "Opt-outs"))

_IMPORT: Final = re.compile(r"""(?:from|import)\s*["'](\./[\w./-]+|/assets/[\w./-]+)["']""")


def _imports(assets: dict[str, Asset], name: str) -> list[str]:
    """The static files module *name* (``js/search.js``) imports, directly or not, in
    first-seen order: preloaded with the page, so the browser fetches them at once
    instead of one level of imports after another."""
    seen: list[str] = []
    todo = [name]
    while todo:
        current = todo.pop(0)
        asset = assets.get(current)
        if asset is None or not current.endswith(".js"):
            continue
        folder = current.rpartition("/")[0]
        for target in _IMPORT.findall(asset.body.decode("utf-8", "replace")):
            path = (target.removeprefix("/assets/") if target.startswith("/assets/")
                    else f"{folder}/{target[2:]}" if folder else target[2:])
            if path not in seen and path != name:
                seen.append(path)
                todo.append(path)
    return seen


def _render(shell: str, page: Page, assets: dict[str, Asset]) -> bytes:
    preloads = "".join(f'<link rel="modulepreload" href="/assets/{escape(p)}">\n'
                       for p in _imports(assets, f"js/{page.module}.js"))
    current = ' aria-current="page"'
    nav = "".join(f'<li><a href="{href}"{current if key == page.nav else ""}>{label}</a></li>'
                  for key, href, label in _NAV)
    return (shell.replace("{{title}}", escape(page.title))
            .replace("{{module}}", page.module)
            .replace("{{preloads}}", preloads)
            .replace("{{nav}}", nav)).encode("utf-8")


def _gzip_ok(request: Request) -> bool:
    return "gzip" in request.headers.get("accept-encoding", "").lower()


def _send(request: Request, asset: Asset, *, cache: str) -> Response:
    headers = {"ETag": asset.etag, "Cache-Control": cache, "Vary": "Accept-Encoding",
               "X-Content-Type-Options": "nosniff"}
    if asset.media_type.startswith("text/html"):
        headers["Content-Security-Policy"] = CSP
    if request.headers.get("if-none-match") == asset.etag:
        return Response(status_code=304, headers=headers)
    body = asset.body
    if asset.gzipped is not None and _gzip_ok(request):
        body = asset.gzipped
        headers["Content-Encoding"] = "gzip"
    if request.method == "HEAD":
        headers["Content-Length"] = str(len(body))
        return Response(status_code=200, headers=headers, media_type=asset.media_type)
    return Response(body, headers=headers, media_type=asset.media_type)


def _page_endpoint(asset: Asset) -> Callable[[Request], Awaitable[Response]]:
    async def endpoint(request: Request) -> Response:
        # revalidated every time (no-cache): a new release shows at once
        return _send(request, asset, cache="no-cache")

    return endpoint


def dashboard_routes() -> list[Route]:
    """The dashboard's routes: the pages and ``/assets/`` (the API keeps ``/static/`` for
    its docs page)."""
    assets = load_assets()
    shell = (files("brokerscan.web") / "page.html").read_text("utf-8")
    routes = [Route(path, _page_endpoint(make_asset(_render(shell, page, assets),
                                                    "text/html; charset=utf-8")),
                    methods=["GET", "HEAD"], include_in_schema=False)
              for path, page in PAGES.items()]

    async def static(request: Request) -> Response:
        name = str(request.path_params["path"])
        asset = assets.get(name)
        if asset is None:
            return Response(f"no such file: /assets/{name}\n", status_code=404,
                            media_type="text/plain; charset=utf-8")
        return _send(request, asset, cache="no-cache")

    routes.append(Route("/assets/{path:path}", static, methods=["GET", "HEAD"],
                        include_in_schema=False))
    return routes


def mount_dashboard(app: Starlette) -> None:
    """Add the dashboard's routes to *app* (the API's FastAPI app); the API's own routes,
    added before, keep precedence."""
    app.router.routes.extend(dashboard_routes())
