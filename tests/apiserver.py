"""``brokerscan serve`` as a real process for the API tests: started on an address of the
``api`` pool (127.64.128.0/17), ready when ``/healthz`` answers, stopped with SIGTERM; and
tokens made with the real ``brokerscan token create``."""

from __future__ import annotations

import os
import subprocess
import sys
import time
from collections.abc import Mapping
from pathlib import Path

import httpx

from tests import servers

__all__ = ["ApiServer", "cli", "make_token"]

START_TIMEOUT = 30.0


def cli(*args: str, env: Mapping[str, str] | None = None, check: bool = True,
        ) -> subprocess.CompletedProcess[str]:
    """Run ``brokerscan ARGS`` (a real process) and return what it printed."""
    proc = subprocess.run([sys.executable, "-m", "brokerscan.cli", *args],
                          env=dict(env or os.environ), capture_output=True, text=True,
                          timeout=120)
    if check and proc.returncode != 0:
        raise AssertionError(f"brokerscan {' '.join(args)}: exit {proc.returncode}\n"
                             f"{proc.stdout}\n{proc.stderr}")
    return proc


def make_token(store_url: str, name: str, role: str = "reader",
               env: Mapping[str, str] | None = None) -> str:
    """A new token from ``brokerscan token create`` (its last line)."""
    out = cli("token", "create", "--name", name, "--role", role, "--store", store_url,
              env=env).stdout
    return out.strip().splitlines()[-1]


class ApiServer:
    """One ``brokerscan serve`` process; *args* are extra options (``--rate-limit 0``...)."""

    def __init__(self, workdir: Path, store_url: str, *args: str,
                 env: Mapping[str, str] | None = None) -> None:
        self.host, self.port = servers.allocate("api", 8080)
        self.url = f"http://{self.host}:{self.port}"
        self.log_path = workdir / f"serve-{self.host}.log"
        command = [sys.executable, "-m", "brokerscan.cli", "serve", "--store", store_url,
                   "--host", self.host, "--port", str(self.port), "--log-level", "warning",
                   *args]
        with open(self.log_path, "wb") as log:
            self.process = subprocess.Popen(command, env=dict(env or os.environ),
                                            stdout=log, stderr=subprocess.STDOUT)
        self._wait_ready()

    def _wait_ready(self) -> None:
        deadline = time.monotonic() + START_TIMEOUT
        while True:
            if self.process.poll() is not None:
                raise AssertionError(f"serve exited with {self.process.returncode}:\n"
                                     f"{self.log()}")
            try:
                if httpx.get(f"{self.url}/healthz", timeout=1.0).status_code == 200:
                    return
            except httpx.TransportError:
                pass
            if time.monotonic() > deadline:
                self.stop()
                raise AssertionError(f"serve did not answer within {START_TIMEOUT} s:\n"
                                     f"{self.log()}")
            time.sleep(0.05)

    def client(self, token: str | None = None, **kwargs: object) -> httpx.Client:
        headers = {"Authorization": f"Bearer {token}"} if token else {}
        return httpx.Client(base_url=self.url, headers=headers, timeout=60.0,
                            **kwargs)  # type: ignore[arg-type]

    def log(self) -> str:
        return self.log_path.read_text(errors="replace")[-4000:]

    def stop(self) -> None:
        if self.process.poll() is None:
            self.process.terminate()
            try:
                self.process.wait(timeout=15)
            except subprocess.TimeoutExpired:
                self.process.kill()
                self.process.wait()
