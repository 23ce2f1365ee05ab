"""The operations endpoint as an ASGI app (what ``brokerscan serve`` mounts) and the JSON
log format; no network: the checks are plain coroutines."""

from __future__ import annotations

import asyncio
import json
import logging
import subprocess
import sys
from typing import Any

from brokerscan.health import Health, asgi_app
from brokerscan.logs import JsonFormatter


async def call(app: Any, path: str) -> tuple[int, bytes]:
    sent: list[dict[str, Any]] = []

    async def receive() -> dict[str, Any]:
        return {"type": "http.request"}

    async def send(message: dict[str, Any]) -> None:
        sent.append(message)

    await app({"type": "http", "path": path, "root_path": ""}, receive, send)
    return sent[0]["status"], sent[1]["body"]


async def test_asgi_routes_answer_health_readiness_and_metrics() -> None:
    async def ok() -> None:
        return None

    async def down() -> None:
        raise ConnectionRefusedError("connection refused")

    app = asgi_app(Health("serve", checks={"postgresql": ok, "redis": down}, ready_ttl=0))
    code, body = await call(app, "/healthz")
    assert code == 200 and json.loads(body) == {"status": "ok", "role": "serve"}
    code, body = await call(app, "/readyz")
    assert code == 503
    assert json.loads(body)["checks"] == {
        "postgresql": "ok", "redis": "ConnectionRefusedError: connection refused"}
    code, body = await call(app, "/metrics")
    assert code == 200 and b"python_info" in body
    assert (await call(app, "/nope"))[0] == 404
    stuck = asgi_app(Health("serve", alive=lambda: "loop stalled"))
    assert (await call(stuck, "/healthz"))[0] == 503
    await asyncio.sleep(0)


def test_json_log_lines_are_objects() -> None:
    record = logging.LogRecord("brokerscan", logging.INFO, __file__, 1, "sent %d", (3,), None)
    record.sweep = "sw-1"
    data = json.loads(JsonFormatter("scheduler").format(record))
    assert (data["msg"], data["level"], data["role"], data["sweep"]) == (
        "sent 3", "info", "scheduler", "sw-1")


def test_no_command_imports_prometheus_client_before_it_starts() -> None:
    # prometheus_client decides at its import whether values go to PROMETHEUS_MULTIPROC_DIR,
    # which a prefork worker sets only once it starts (brokerscan/cli/fleet.py): a module
    # that defines metrics at import (the API's did) left the worker's /metrics at zero.
    code = ("import sys, brokerscan.cli.main\n"
            "sys.exit('prometheus_client' in sys.modules)")
    assert subprocess.run([sys.executable, "-c", code], check=False).returncode == 0
