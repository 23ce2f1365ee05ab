"""The ZMap adapter without a network: its CSV lines, its CIDR files, and the output stream
of a stand-in program in ZMap's place (junk, a truncated line, failure, stop, time limit)."""

from __future__ import annotations

import asyncio
import ipaddress
import time
from pathlib import Path
from typing import Any

import pytest

from workers.zmap import Answer, Route, ZmapFailed, cidr_lines, parse_line, run_zmap

IP = int(ipaddress.IPv4Address("198.18.0.7"))


def test_answers_are_parsed() -> None:
    assert parse_line("198.18.0.7,1883,synack,0\n") == Answer(IP, 1883, "synack")
    assert parse_line("198.18.0.7,5672,rst,0") == Answer(IP, 5672, "rst")


@pytest.mark.parametrize("line", [
    "saddr,sport,classification,repeat",  # the header
    "198.18.0.7,1883,synack,1",  # a repeat
    "",
    "\n",
    "198.18.0.7,1883,syn",  # truncated
    "198.18.0.7,18",
    "198.18.",
    "198.18.0.7,1883,synack,0,extra",
    "198.18.0.300,1883,synack,0",  # not an address
    "198.18.0.7,65536,synack,0",  # not a port
    "198.18.0.7,-1,synack,0",
    "198.18.0.7,1883,other,0",  # an unknown classification
    "Dec 07 12:00:00.000 [INFO] zmap: started",  # a log line on the wrong stream
    "\x00\xff garbage,,,",
])
def test_junk_and_truncated_lines_are_skipped(line: str) -> None:
    assert parse_line(line) is None


def test_every_truncated_prefix_of_a_line_is_skipped_or_whole() -> None:
    line = "198.18.0.7,1883,synack,0"
    for end in range(len(line)):
        assert parse_line(line[:end]) is None
    assert parse_line(line) == Answer(IP, 1883, "synack")


def test_ranges_become_cidr_lines() -> None:
    first = int(ipaddress.IPv4Address("198.18.0.0"))
    assert list(cidr_lines([(first, first + 255)])) == ["198.18.0.0/24\n"]
    assert list(cidr_lines([(first + 1, first + 4), (first + 9, first + 9)])) == [
        "198.18.0.1/32\n", "198.18.0.2/31\n", "198.18.0.4/32\n", "198.18.0.9/32\n"]
    assert list(cidr_lines([])) == []


# -- the stream, from a stand-in program (a shell script in ZMap's place: no network) ------

ROUTE = Route("veth-test", "02:00:00:00:00:01")
ONE = [(IP, IP)]


def fake_zmap(tmp_path: Path, script: str) -> str:
    path = tmp_path / "zmap"
    path.write_text("#!/bin/sh\n" + script)
    path.chmod(0o755)
    return str(path)


async def answers(binary: str, **kwargs: Any) -> list[Answer]:
    options: dict[str, Any] = {"targets": 1, "rate": 100.0, "seed": 1, "cooldown": 0.0}
    options.update(kwargs)
    return [a async for a in run_zmap(binary, ROUTE, 1883, ONE, [], **options)]


def test_the_stream_skips_junk_and_a_truncated_last_line(tmp_path: Path) -> None:
    binary = fake_zmap(tmp_path, (
        "printf 'saddr,sport,classification,repeat\\n'\n"
        "printf '198.18.0.7,1883,synack,0\\n'\n"
        "printf 'garbage\\n198.18.0.7,1883,synack,1\\n198.18.0.8,1883,rst,0\\n'\n"
        "printf '198.18.0.9,1883,syn'\n"))  # cut off mid-line, no newline
    got = asyncio.run(answers(binary))
    assert got == [Answer(IP, 1883, "synack"), Answer(IP + 1, 1883, "rst")]


def test_what_zmap_was_asked(tmp_path: Path) -> None:
    binary = fake_zmap(tmp_path, 'printf "%s\\n" "$@" > "$0.args"\n'
                                 'for f in "$@"; do [ -f "$f" ] && cat "$f" >> "$0.files"; '
                                 'done; true\n')
    asyncio.run(run_zmap_all(binary))
    args = Path(binary + ".args").read_text().split("\n")
    for flag, value in (("-p", "1883"), ("-C", "/dev/null"), ("-i", "veth-test"),
                        ("-G", "02:00:00:00:00:01"), ("-r", "100"), ("-e", "1"),
                        ("-O", "csv"), ("-o", "-")):
        assert args[args.index(flag) + 1] == value
    files = Path(binary + ".files").read_text()
    assert "198.18.0.7/32\n" in files and "198.18.1.0/24\n" in files


async def run_zmap_all(binary: str) -> None:
    block = [(IP + 249, IP + 504)]  # 198.18.1.0/24
    async for _ in run_zmap(binary, ROUTE, 1883, ONE, block, targets=1, rate=100.0,
                            seed=1, cooldown=0.0):
        pass


def test_a_failed_run_is_one_line(tmp_path: Path) -> None:
    binary = fake_zmap(tmp_path, "echo 'Dec 07 [FATAL] send: could not open device' >&2\n"
                                 "exit 1\n")
    with pytest.raises(ZmapFailed, match="^zmap failed: send: could not open device$"):
        asyncio.run(answers(binary))


def test_stopping_ends_a_run_at_once(tmp_path: Path) -> None:
    binary = fake_zmap(tmp_path, "printf '198.18.0.7,1883,synack,0\\n'\nexec sleep 60\n")
    began = time.monotonic()
    got = asyncio.run(answers(binary, stopped=lambda: time.monotonic() - began > 0.5))
    assert got == [Answer(IP, 1883, "synack")]
    assert time.monotonic() - began < 10  # the sleeping "zmap" was terminated


def test_a_run_past_its_time_limit_fails(tmp_path: Path) -> None:
    binary = fake_zmap(tmp_path, "exec sleep 60\n")
    began = time.monotonic()
    with pytest.raises(ZmapFailed, match="time limit"):
        asyncio.run(answers(binary, time_limit=0.5))
    assert time.monotonic() - began < 10
