"""The ZMap adapter: the one module that runs the external stateless SYN scanner.

ZMap (Debian's ``zmap``, 2.1.1) sends one SYN per target from a raw socket and reports the
answers; it keeps no per-target state (the probe's fields validate the reply). What we
give it and take back, per run (one port per run in 2.1.1):

* targets: ``-w ALLOWLIST`` -- a file of CIDRs generated from *our* walk (addresses that
  already passed the blocklist, the opt-out lists and the scope), so ZMap never sends to
  an address the connect engine would not dial; ``-b BLOCKLIST`` -- the same exclusions
  again, in ZMap's format; ``-C /dev/null`` so that no system config adds or lifts any;
* ``-p PORT``, ``-r RATE`` (packets/s, 0 unlimited), ``-e SEED``, ``-c COOLDOWN`` (seconds
  of listening after the last SYN), ``-i IFACE -G GATEWAY_MAC`` (from the route to the
  targets and the neighbour table: a scanner namespace has no default route);
* output: ``-O csv -f saddr,sport,classification,repeat -o -`` on standard output,
  read line by line as it comes (:func:`parse_line`: a header, junk or a truncated last
  line is skipped, never fatal); ``synack`` is an open port, ``rst`` a refusing one,
  repeats are dropped.

:func:`preflight` checks, before anything is sent, what would make ZMap fail: the binary on
PATH, CAP_NET_RAW, a route and a gateway MAC toward the targets. Each failure is one
line (:class:`ZmapError`). :func:`run_zmap` runs ZMap as a subprocess with its own
timeout, and terminates it when the caller stops early.
"""

from __future__ import annotations

import asyncio
import contextlib
import ipaddress
import json
import os
import shutil
import signal
import subprocess
import tempfile
from collections.abc import AsyncIterator, Callable, Iterable
from dataclasses import dataclass
from pathlib import Path
from typing import Literal

__all__ = ["Answer", "Route", "ZmapError", "ZmapFailed", "cidr_lines", "parse_line", "preflight",
           "run_zmap"]

#: CAP_NET_RAW's bit in /proc/PID/status CapEff (linux/capability.h).
_CAP_NET_RAW = 13
#: Output fields asked of ZMap, in order.
FIELDS = ("saddr", "sport", "classification", "repeat")
#: Seconds to wait for ZMap to exit after SIGTERM before SIGKILL.
_TERM_GRACE = 3.0


class ZmapError(Exception):
    """ZMap cannot run here (missing, no capability, no route): one line; retrying will
    not help until the deployment changes."""


class ZmapFailed(ZmapError):
    """A ZMap run failed or ran out of time: one line; another run may succeed."""


@dataclass(frozen=True, slots=True)
class Answer:
    """One reply ZMap reported: an address and port that answered the SYN."""

    ip: int
    port: int
    kind: Literal["synack", "rst"]


@dataclass(frozen=True, slots=True)
class Route:
    """Where ZMap sends: the interface toward the targets and the next hop's MAC."""

    interface: str
    gateway_mac: str


def parse_line(line: str) -> Answer | None:
    """One CSV line of ZMap's output (``saddr,sport,classification,repeat``).

    :returns: the answer, or None for the header, a repeat, anything else ZMap may
        print (a blank, a truncated or garbled line): the stream goes on.
    """
    parts = line.strip().split(",")
    if len(parts) != len(FIELDS):
        return None
    saddr, sport, kind, repeat = parts
    if kind not in ("synack", "rst") or repeat != "0" or not sport.isdigit():
        return None
    try:
        ip = int(ipaddress.IPv4Address(saddr))
    except ValueError:
        return None
    port = int(sport)
    if port > 65535:
        return None
    return Answer(ip, port, "synack" if kind == "synack" else "rst")


def cidr_lines(ranges: Iterable[tuple[int, int]]) -> Iterable[str]:
    """Inclusive address ranges as CIDR lines, the format of ZMap's -w and -b files."""
    for first, last in ranges:
        for net in ipaddress.summarize_address_range(ipaddress.IPv4Address(first),
                                                     ipaddress.IPv4Address(last)):
            yield f"{net}\n"


def _has_net_raw() -> bool:
    try:
        status = Path("/proc/self/status").read_text()
    except OSError:
        return os.geteuid() == 0
    for line in status.splitlines():
        if line.startswith("CapEff:"):
            return bool(int(line.split()[1], 16) >> _CAP_NET_RAW & 1)
    return False


def _file_has_caps(path: str) -> bool:
    """Whether the binary carries file capabilities (``setcap cap_net_raw+ep``)."""
    try:
        return bool(os.getxattr(path, "security.capability"))
    except OSError:
        return False


def _ip_json(*args: str) -> list[dict[str, object]]:
    proc = subprocess.run(["ip", "-j", *args], capture_output=True, text=True, timeout=10)
    if proc.returncode != 0:
        raise ZmapError(proc.stderr.strip().removeprefix("RTNETLINK answers: ").lower()
                        or f"ip {' '.join(args)} failed")
    data = json.loads(proc.stdout or "[]")
    return data if isinstance(data, list) else []


def preflight(first: int, last: int) -> tuple[str, Route]:
    """Check that ZMap can scan ``first..last`` from here, before any packet.

    :returns: the binary's path and the route (interface, gateway MAC)
    :raises ZmapError: ``zmap is not installed ...``, ``... needs CAP_NET_RAW ...``, ``no
        route to ...``, ``no gateway MAC ...``
    """
    binary = shutil.which("zmap")
    if binary is None:
        raise ZmapError("--discovery zmap: zmap is not installed or not on PATH "
                        "(apt-get install zmap)")
    if not _has_net_raw() and not _file_has_caps(os.path.realpath(binary)):
        raise ZmapError("--discovery zmap needs CAP_NET_RAW (run as root, or "
                        "setcap cap_net_raw+ep on zmap); nothing was sent")
    if shutil.which("ip") is None and not os.access("/usr/sbin/ip", os.X_OK):
        raise ZmapError("--discovery zmap needs ip (iproute2) to find the route")
    routes = []
    for ip in {first, last}:
        text = str(ipaddress.IPv4Address(ip))
        try:
            found = _ip_json("route", "get", text)
        except ZmapError as exc:
            raise ZmapError(f"--discovery zmap: no route to {text} ({exc}); "
                            "nothing was sent") from None
        if not found:
            raise ZmapError(f"--discovery zmap: no route to {text}; nothing was sent")
        routes.append(found[0])
    devs = {str(r.get("dev", "")) for r in routes}
    gateways = {str(r.get("gateway", "")) for r in routes}
    if len(devs) != 1 or len(gateways) != 1 or "lo" in devs or "" in devs:
        raise ZmapError("--discovery zmap: the targets are not all behind one interface "
                        f"and gateway ({', '.join(sorted(devs))}); nothing was sent")
    dev, gateway = devs.pop(), gateways.pop()
    if not gateway:
        raise ZmapError(f"--discovery zmap: the targets are on-link on {dev}, with no "
                        "gateway for ZMap to send through; nothing was sent")
    neighbours = _ip_json("neigh", "show", gateway, "dev", dev)
    mac = next((str(n["lladdr"]) for n in neighbours if n.get("lladdr")), None)
    if mac is None:
        raise ZmapError(f"--discovery zmap: the gateway {gateway}'s MAC is not known on "
                        f"{dev} (no neighbour entry); nothing was sent")
    return binary, Route(dev, mac)


def _write_lists(allow_file: Path, allow: Iterable[tuple[int, int]], block_file: Path,
                 block: Iterable[tuple[int, int]]) -> None:
    allow_file.write_text("".join(cidr_lines(allow)))
    block_file.write_text("".join(cidr_lines(block)))


def _deadline(targets: int, rate: float, cooldown: float) -> float:
    """ZMap's own time limit: twice the sending time at ``rate``, the cooldown, and slack."""
    sending = targets / rate if rate > 0 else targets / 100_000
    return 2 * sending + cooldown + 30.0


async def run_zmap(binary: str, route: Route, port: int, allow: Iterable[tuple[int, int]],
                   block: Iterable[tuple[int, int]], *, targets: int, rate: float,
                   seed: int, cooldown: float,
                   stopped: Callable[[], bool] = lambda: False,
                   time_limit: float | None = None) -> AsyncIterator[Answer]:
    """Run ZMap once on ``port`` over ``allow`` minus ``block``; yield its answers as read.

    :param allow: inclusive address ranges to send to (ours, already checked).
    :param block: inclusive ranges ZMap must exclude (the blocklists again).
    :param targets: how many addresses ``allow`` holds (for the time limit).
    :param stopped: polled while ZMap runs; when true, ZMap is terminated and the
        iteration ends (its answers so far were yielded).
    :param time_limit: seconds ZMap may run (default: twice its sending time at ``rate``,
        plus the cooldown, plus 30 s).
    :raises ZmapError: ZMap failed (its last log line), or ran past its time limit.
    """
    with tempfile.TemporaryDirectory(prefix="brokerscan-zmap-") as tmp:
        allow_file, block_file = Path(tmp, "allow.conf"), Path(tmp, "block.conf")
        await asyncio.to_thread(_write_lists, allow_file, allow, block_file, block)
        argv = [binary, "-C", "/dev/null", "-p", str(port), "-w", str(allow_file),
                "-b", str(block_file), "-r", str(max(0, round(rate))),
                "-e", str(seed & 0xFFFFFFFF), "-c", str(max(0, round(cooldown))),
                "-i", route.interface, "-G", route.gateway_mac,
                "-O", "csv", "-f", ",".join(FIELDS), "-o", "-", "-q", "-v", "1",
                "--disable-syslog"]
        proc = await asyncio.create_subprocess_exec(
            *argv, stdin=asyncio.subprocess.DEVNULL, stdout=asyncio.subprocess.PIPE,
            stderr=asyncio.subprocess.PIPE, start_new_session=True)
        assert proc.stdout is not None and proc.stderr is not None
        errors = asyncio.ensure_future(proc.stderr.read())
        loop = asyncio.get_running_loop()
        if time_limit is None:
            time_limit = _deadline(targets, rate, cooldown)
        limit = loop.time() + time_limit
        reader = proc.stdout
        pending: asyncio.Task[bytes] | None = None
        try:
            while True:
                if stopped():
                    return
                if pending is None:
                    pending = asyncio.ensure_future(reader.readline())
                done, _ = await asyncio.wait([pending], timeout=0.2)
                if loop.time() > limit:
                    raise ZmapFailed(f"zmap ran past its time limit ({time_limit:.0f} s)")
                if not done:
                    continue
                line, pending = pending.result(), None
                if not line:
                    break
                if not line.endswith(b"\n"):
                    break  # truncated at EOF: ZMap died mid-line; its exit code says why
                answer = parse_line(line.decode("ascii", "replace"))
                if answer is not None:
                    yield answer
            code = await proc.wait()
            if code != 0:
                log = (await errors).decode("utf-8", "replace").strip().splitlines()
                last = log[-1] if log else f"exit status {code}"
                raise ZmapFailed(f"zmap failed: {last.split('] ', 1)[-1]}")
        finally:
            if pending is not None:
                pending.cancel()
            await _stop(proc)
            errors.cancel()


async def _stop(proc: asyncio.subprocess.Process) -> None:
    if proc.returncode is not None:
        return
    with contextlib.suppress(ProcessLookupError):
        os.killpg(proc.pid, signal.SIGTERM)
    try:
        await asyncio.wait_for(proc.wait(), _TERM_GRACE)
    except TimeoutError:
        with contextlib.suppress(ProcessLookupError):
            os.killpg(proc.pid, signal.SIGKILL)
        await proc.wait()
