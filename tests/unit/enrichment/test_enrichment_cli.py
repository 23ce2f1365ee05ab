"""``lookup`` sub-command in-process: argument wiring and output formats."""

from __future__ import annotations

import argparse
import io
import json

import pytest

from brokerscan.cli.errors import CliError
from brokerscan.cli.lookup import add_commands, format_text
from brokerscan.cli.lookup import run as run_lookup
from brokerscan.model import AsnInfo, GeoInfo
from brokerscan.settings import Settings


def parse(*argv: str) -> argparse.Namespace:
    parser = argparse.ArgumentParser(prog="brokerscan")
    add_commands(parser.add_subparsers(dest="command", required=True))
    return parser.parse_args(["lookup", *argv])


def run(*argv: str, settings: Settings | None = None) -> tuple[int, str, str]:
    """Run ``lookup`` in-process as ``brokerscan.cli.main`` does: a CliError is its one line
    on stderr and its exit code."""
    out = io.StringIO()
    try:
        code, err = run_lookup(parse(*argv), settings or Settings(), out=out), ""
    except CliError as exc:
        code, err = exc.code, f"brokerscan: error: {exc}\n"
    return code, out.getvalue(), err


def test_text() -> None:
    code, out, err = run("8.8.8.8", "10.0.0.1")
    assert code == 0 and err == ""
    google, private = out.splitlines()
    assert google.startswith("8.8.8.8  AS15169 Google LLC (8.8.8.0/24)  US  [")
    assert "2026-06-17" in google
    assert private.startswith("10.0.0.1  reserved (10.0.0.0/8)")


def test_json_lines() -> None:
    code, out, _ = run("1.1.1.1", "127.0.0.1", "--format", "json")
    assert code == 0
    first, second = (json.loads(line) for line in out.splitlines())
    assert first["ip"] == "1.1.1.1" and first["asn"]["number"] == 13335
    assert first["geo"]["country"] == "AU" and first["asn"]["source_date"] == "2026-06-17"
    assert AsnInfo.model_validate(first["asn"]) and GeoInfo.model_validate(first["geo"])
    assert second["asn"]["reserved"] is True and second["geo"]["reserved"] is True


@pytest.mark.parametrize("bad", ["1.2.3", "8.8.8.8.8", "example.org", "::1"])
def test_bad_address_is_one_line_and_exit_2(bad: str) -> None:
    code, out, err = run("8.8.8.8", bad)
    assert code == 2 and out == ""
    assert err.count("\n") == 1 and repr(bad) in err


def test_bad_source_is_one_line_and_exit_2() -> None:
    code, out, err = run("8.8.8.8", "--source", "mmdb:///nonexistent/City.mmdb")
    assert code == 2 and out == "" and err.count("\n") == 1 and "no such file" in err


def test_settings_choose_the_sources(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("BROKERSCAN_ENRICHMENT_SOURCES", "csv:///nonexistent.csv")
    code, _, err = run("8.8.8.8", settings=Settings())
    assert code == 2
    assert "nonexistent.csv" in err


def test_format_text_with_city() -> None:
    asn = AsnInfo(source="a", source_date="d")
    geo = GeoInfo(country="US", city="Springfield", latitude=1.5, longitude=-2.25,
                  source="b", source_date="e")
    line = format_text("192.0.2.1", asn, geo)
    assert line == "192.0.2.1  AS unknown  US, Springfield (1.5000, -2.2500)  [a, d]; [b, e]"
