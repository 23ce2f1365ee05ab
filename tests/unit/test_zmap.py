"""The ZMap adapter's pure parts: its CSV lines and its CIDR files (no network, no ZMap)."""

from __future__ import annotations

import ipaddress

import pytest

from workers.zmap import Answer, cidr_lines, parse_line

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
