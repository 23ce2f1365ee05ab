"""The sweep page in a real browser while a real sweep runs: ``brokerscan scheduler`` and a
``brokerscan worker`` (tests/integration/sweepfleet.py) sweep a loopback range slowly
(nothing listens there), ``brokerscan serve`` with tokens reads the fleet's PostgreSQL and
Redis, and the page's numbers move without a reload; the pause and resume buttons steer
the sweep for an operator and are not there for a reader."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.apiserver import ApiServer, make_token
from tests.browser import Watched, browser, screenshot
from tests.integration.sweepfleet import Fleet

pytestmark = pytest.mark.integration

#: 4,096 addresses at 40 probes a second: about 100 s, time enough to steer it on a loaded
#: machine (the test cancels it when done).
NET = "127.65.128.0/20"


@pytest.fixture
def fleet(tmp_path: Path) -> Iterator[Fleet]:
    fleet = Fleet(tmp_path)
    fleet.setup()
    try:
        yield fleet
    finally:
        fleet.teardown()


def sign_in(page: Watched, token: str) -> None:
    page.goto("/signin")
    page.page.fill("#token", token)
    page.page.press("#token", "Enter")
    page.page.wait_for_url("**/")


def progress(page: Watched) -> float:
    return float(page.page.evaluate("document.getElementById('progress').value"))


def test_the_sweep_page_updates_live_and_steers_for_operators_only(fleet: Fleet,
                                                                    tmp_path: Path) -> None:
    fleet.start_scheduler()
    fleet.start_worker("w1", "--queues", "probe")
    sweep = fleet.start_sweep(NET, "--ports", "1883", "--allow-reserved", "--rate", "40",
                              "--seed", "3", "--connect-timeout", "1", "--name", "web-live")
    fleet.wait_for(sweep, "probing", lambda s: s["probes"] > 0)
    operator = make_token(fleet.database_url, "web-operator", "operator", env=fleet.env)
    reader = make_token(fleet.database_url, "web-reader", "reader", env=fleet.env)
    serve = ApiServer(tmp_path, fleet.database_url, env=fleet.env)
    try:
        with browser(serve.url) as chrome:
            page = chrome.open()
            sign_in(page, operator)
            page.goto(f"/sweeps/{sweep}")
            page.page.evaluate("window.brokerscanSamePage = true")
            first = progress(page)
            page.page.wait_for_function(
                f"() => document.getElementById('progress').value > {first}", timeout=20_000)
            page.page.wait_for_function(
                "() => document.getElementById('workers-alive').textContent === '1'")
            assert page.page.evaluate("window.brokerscanSamePage") is True  # no reload
            assert page.page.locator("#rate").inner_text() != "0"
            screenshot(page, "sweep-running", doc=True)

            page.page.click("#pause")
            page.page.wait_for_function(
                "() => document.getElementById('state').textContent === 'paused'")
            assert fleet.status(sweep)["state"] == "paused"
            page.page.locator("#resume").wait_for()
            assert page.page.locator("#pause").count() == 0
            page.page.click("#resume")
            page.page.wait_for_function(
                "() => document.getElementById('state').textContent === 'running'")
            assert fleet.status(sweep)["state"] == "running"
            page.page.locator("#pause").wait_for()

            page.page.click("#who button")  # sign out, then in as a reader
            page.page.wait_for_url("**/signin")
            sign_in(page, reader)
            page.goto(f"/sweeps/{sweep}")
            assert page.page.locator("#state").inner_text() == "running"
            assert page.page.locator("#controls").count() == 0
            assert page.page.locator("#pause, #resume, #cancel").count() == 0
            page.check(allow=frozenset({401}))
    finally:
        serve.stop()
        fleet.cli("sweep", "cancel", sweep, check=False)
