"""Headless Chromium for the dashboard's tests: Debian's ``/usr/bin/chromium`` driven by
Playwright (``playwright install`` cannot fetch a browser here, and none is needed).

Every page opened through :class:`Browser` is watched: a request to any origin but the
server under test is aborted and recorded, and console errors and uncaught exceptions are
recorded; :meth:`Watched.check` fails the test on either (an HTTP error the test provoked,
such as the 400 of a bad query, is named in *allow*). A missing Chromium fails the test,
never skips it (``scripts/bootstrap.sh`` installs it as root).
"""

from __future__ import annotations

import asyncio
import os
import re
import shutil
import tempfile
from collections.abc import Coroutine, Iterator
from concurrent.futures import ThreadPoolExecutor
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Final, TypeVar
from urllib.parse import urlsplit

from playwright.sync_api import (
    BrowserContext,
    ConsoleMessage,
    Page,
    Playwright,
    Route,
    sync_playwright,
)

__all__ = ["ARTIFACTS", "CHROMIUM", "Browser", "Watched", "browser", "chromium", "off_loop",
           "screenshot"]

CHROMIUM: Final = "/usr/bin/chromium"
#: What the tests write: screenshots (``tests/../test-artifacts/web``).
ARTIFACTS: Final = Path(__file__).resolve().parents[1] / "test-artifacts" / "web"
#: With BROKERSCAN_UPDATE_SCREENSHOTS=1 the README's screenshots are written too.
DOC_SHOTS: Final = Path(__file__).resolve().parents[1] / "docs" / "screenshots"

ARGS: Final = ["--headless", "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
               "--disable-background-networking", "--disable-component-update",
               "--disable-sync"]

_HTTP_ERROR: Final = re.compile(r"status of (\d{3})")


T = TypeVar("T")


def off_loop(coroutine: Coroutine[Any, Any, T]) -> T:
    """Run *coroutine* to its end in a thread of its own: Playwright's sync API keeps an
    event loop running in the test's thread, where ``asyncio.run`` is refused."""
    with ThreadPoolExecutor(1) as pool:
        return pool.submit(asyncio.run, coroutine).result()


def chromium() -> str:
    """The browser binary; an AssertionError (a failure, not a skip) when it is missing."""
    path = shutil.which("chromium") or (CHROMIUM if os.path.exists(CHROMIUM) else None)
    if path is None:
        raise AssertionError("Chromium is not installed: run scripts/bootstrap.sh as root "
                             "(apt-get install chromium)")
    return path


@dataclass
class Watched:
    """A page and what it did wrong: requests to other hosts, console errors, exceptions."""

    page: Page
    origin: str
    outside: list[str] = field(default_factory=list)
    errors: list[str] = field(default_factory=list)

    def check(self, *, allow: frozenset[int] = frozenset()) -> None:
        """Fail on any request that left the server under test, any uncaught exception and
        any console error, but for failed requests with a status in *allow*."""
        assert not self.outside, f"requests to other hosts: {self.outside}"
        wrong = []
        for text in self.errors:
            status = _HTTP_ERROR.search(text)
            if status and int(status.group(1)) in allow:
                continue
            wrong.append(text)
        assert not wrong, f"console errors: {wrong}"

    def ready(self, timeout: float = 20_000) -> None:
        """Wait until the page's module says it is done (``data-ready`` on ``<body>``)."""
        self.page.wait_for_selector("body[data-ready]", state="attached", timeout=timeout)

    def goto(self, path: str) -> None:
        self.page.goto(self.origin + path)
        self.ready()

    def follow(self, selector: str) -> None:
        """Click *selector* (a link, or a key press's button) and wait until the page it
        leads to is ready (not the one it leaves, whose ``data-ready`` is set too)."""
        before = self.page.url
        self.page.click(selector)
        self.page.wait_for_url(lambda url: url != before)
        self.ready()

    def submit(self, selector: str) -> None:
        """Press Enter in *selector* (a form's field) and wait for the page it loads."""
        before = self.page.url
        self.page.press(selector, "Enter")
        self.page.wait_for_url(lambda url: url != before)
        self.ready()


class Browser:
    """One Chromium with a fresh profile; pages opened with :meth:`open`."""

    def __init__(self, context: BrowserContext, origin: str, playwright: Playwright) -> None:
        self.context = context
        self.playwright = playwright
        self.origin = origin.rstrip("/")
        self.pages: list[Watched] = []

    def open(self, path: str | None = None, *, width: int = 1280, height: int = 900,
             ) -> Watched:
        page = self.context.new_page()
        page.set_viewport_size({"width": width, "height": height})
        watched = Watched(page, self.origin)
        ours = urlsplit(self.origin).netloc

        def route(r: Route) -> None:
            parts = urlsplit(r.request.url)
            if parts.scheme in ("data", "blob") or parts.netloc == ours:
                r.continue_()
            else:
                watched.outside.append(r.request.url)
                r.abort()

        def console(message: ConsoleMessage) -> None:
            if message.type == "error":
                watched.errors.append(message.text)

        page.route("**/*", route)
        page.on("console", console)
        page.on("pageerror", lambda exc: watched.errors.append(f"uncaught: {exc}"))
        self.pages.append(watched)
        if path is not None:
            watched.goto(path)
        return watched


@contextmanager
def browser(origin: str, playwright: Playwright | None = None) -> Iterator[Browser]:
    """A Chromium (headless, fresh user-data dir, no background networking) for pages of
    *origin*. While it is open the test's thread has Playwright's event loop: a second
    browser at the same time must be given the first's *playwright*."""
    if playwright is None:
        with sync_playwright() as started:
            with browser(origin, started) as opened:
                yield opened
        return
    binary = chromium()
    with tempfile.TemporaryDirectory(prefix="brokerscan-chromium-") as profile:
        context = playwright.chromium.launch_persistent_context(
            profile, executable_path=binary, headless=True, args=ARGS,
            accept_downloads=True, viewport={"width": 1280, "height": 900})
        try:
            yield Browser(context, origin, playwright)
        finally:
            context.close()


def screenshot(watched: Watched, name: str, *, full_page: bool = True, doc: bool = False,
               ) -> Path:
    """Save the page as ``test-artifacts/web/<name>.png``; with *doc*, and
    BROKERSCAN_UPDATE_SCREENSHOTS=1, also as the README's ``docs/screenshots/<name>.png``
    (the overview and search there come from a larger store: bench/web_paint.py
    --screenshots)."""
    ARTIFACTS.mkdir(parents=True, exist_ok=True)
    path = ARTIFACTS / f"{name}.png"
    watched.page.screenshot(path=str(path), full_page=full_page)
    if doc and os.environ.get("BROKERSCAN_UPDATE_SCREENSHOTS") == "1":
        DOC_SHOTS.mkdir(parents=True, exist_ok=True)
        shutil.copyfile(path, DOC_SHOTS / f"{name}.png")
    return path
