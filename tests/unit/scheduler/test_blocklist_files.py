"""ZMap-format blocklist files and the built-in IANA list."""

from __future__ import annotations

import ipaddress
from pathlib import Path

import pytest
from hypothesis import given
from hypothesis import strategies as st

from scheduler.blocklist import (
    BlocklistError,
    IPSet,
    TargetError,
    default_blocklist,
    load_blocklist,
    parse_blocklist,
)

# The IANA special-purpose list as SAFETY.md names it (and ZMap ships it).
IANA = ["0.0.0.0/8", "10.0.0.0/8", "100.64.0.0/10", "127.0.0.0/8", "169.254.0.0/16",
        "172.16.0.0/12", "192.0.0.0/24", "192.0.2.0/24", "192.88.99.0/24", "192.168.0.0/16",
        "198.18.0.0/15", "198.51.100.0/24", "203.0.113.0/24", "224.0.0.0/4", "240.0.0.0/4",
        "255.255.255.255/32"]


def test_default_blocklist_is_the_iana_list() -> None:
    nets = [ipaddress.IPv4Network(n) for n in IANA]
    blocked = sum(n.num_addresses for n in ipaddress.collapse_addresses(nets))
    allowed = 2**32 - blocked
    assert allowed == 3_702_258_432  # about 3.70e9
    bl = default_blocklist()
    assert bl.size == blocked
    assert bl == IPSet.from_networks(IANA)
    assert default_blocklist() is bl  # loaded once


def test_default_blocklist_names_its_source() -> None:
    from importlib import resources

    text = resources.files("scheduler").joinpath("blocklist.conf").read_text(encoding="utf-8")
    assert "IANA" in text and "Special-Purpose" in text


@given(st.integers(0, 2**32 - 1 - 592_708_864))
def test_nth_of_allowed_space_is_never_blocklisted(index: int) -> None:
    allowed = default_blocklist().complement()
    ip = allowed.nth(index)
    assert ip not in default_blocklist()
    assert not any(ipaddress.IPv4Address(ip) in ipaddress.IPv4Network(n) for n in IANA)
    assert allowed.index_of(ip) == index


def test_parse_format() -> None:
    text = """
# a comment
10.0.0.0/8      # trailing comment
  192.0.2.7
\t198.51.100.0/24\t
# 1.2.3.4/32
"""
    got = parse_blocklist(text)
    assert got == IPSet.from_networks(["10.0.0.0/8", "192.0.2.7/32", "198.51.100.0/24"])


def test_host_bits_allowed_and_cover_the_network() -> None:
    # Conservative for a blocklist: 10.1.2.3/8 blocks all of 10/8.
    assert parse_blocklist("10.1.2.3/8") == IPSet.from_networks(["10.0.0.0/8"])


@pytest.mark.parametrize(("line", "reason"), [
    ("10.0.0.0/33", "prefix length 33 out of range"),
    ("300.0.0.0/8", "octet 300 out of range"),
    ("example.org", "hostnames are not supported"),
    ("10.0.0.1-10.0.0.5", "ranges are not part of the ZMap format"),
    ("2001:db8::/32", "IPv6 is not supported"),
])
def test_errors_name_file_and_line(line: str, reason: str) -> None:
    with pytest.raises(BlocklistError) as info:
        parse_blocklist(f"# header\n10.0.0.0/8\n{line}  # why\n", "optout.conf")
    message = str(info.value)
    assert message.startswith("optout.conf:3: bad entry ")
    assert reason in message
    assert "\n" not in message
    assert isinstance(info.value, TargetError)


def test_load_blocklist(tmp_path: Path) -> None:
    path = tmp_path / "optout.conf"
    path.write_text("203.0.113.0/24\n", encoding="utf-8")
    assert load_blocklist(str(path)) == IPSet.from_networks(["203.0.113.0/24"])
    path.write_text("ok\n", encoding="utf-8")
    with pytest.raises(BlocklistError, match=r"optout\.conf:1: bad entry 'ok'"):
        load_blocklist(str(path))


def test_load_blocklist_unreadable(tmp_path: Path) -> None:
    missing = tmp_path / "nope.conf"
    with pytest.raises(BlocklistError, match=r"cannot read .*nope\.conf: No such file"):
        load_blocklist(str(missing))
    binary = tmp_path / "bin.conf"
    binary.write_bytes(b"\xff\xfe\x00")
    with pytest.raises(BlocklistError, match="not UTF-8"):
        load_blocklist(str(binary))
    with pytest.raises(BlocklistError, match="cannot read"):
        load_blocklist(str(tmp_path))  # a directory
