"""Opt-outs without a network: the checks of a request's networks, the scope that refuses
approved networks before any packet (and records why), what the public page says a probe
does, and a scheduled run's spec (its opt-out lists read again, approved networks added)."""

from __future__ import annotations

import ipaddress
from datetime import UTC, datetime
from pathlib import Path

import pytest

from brokerscan.model import Status
from brokerscan.settings import Settings
from brokerscan.web.identity import probe_facts, render_page
from scheduler.launch import opt_out
from scheduler.schedules import prepare, run_spec
from scheduler.sweeps import SweepSpec
from scheduler.targets import TargetError
from storage.optouts import OptOutError, parse_networks
from workers.transport import ProbeError, Scope


def ip(text: str) -> int:
    return int(ipaddress.IPv4Address(text))


@pytest.mark.parametrize(("text", "found"), [
    ("192.0.2.0/24", ["192.0.2.0/24"]),
    ("192.0.2.7/24,192.0.2.0/24\n198.51.100.1", ["192.0.2.0/24", "198.51.100.1/32"]),
    ("  10.0.0.0/8  ", ["10.0.0.0/8"]),
])
def test_networks_are_canonical_and_once(text: str, found: list[str]) -> None:
    assert parse_networks(text) == found


@pytest.mark.parametrize(("text", "message"), [
    ("", "at least one"),
    ("192.0.2.0/33", "is not an IPv4 network"),
    ("2001:db8::/32", "is not an IPv4 network"),
    ("192.0.2.0/24;DROP TABLE", "is not an IPv4 network"),
    ("1" * 5000, "is not an IPv4 network"),
    ("8.0.0.0/7", "wider than a /8"),
    (" ".join(f"10.0.{i}.0/24" for i in range(65)), "at most 64"),
])
def test_bad_networks_are_one_line(text: str, message: str) -> None:
    with pytest.raises(OptOutError, match=message) as caught:
        parse_networks(text)
    assert "\n" not in str(caught.value) and len(str(caught.value)) < 120


def test_the_scope_refuses_approved_networks_with_their_own_record() -> None:
    scope = Scope(["127.0.0.0/8"])
    assert scope.without([]) is scope
    narrowed = scope.without(["127.59.1.0/24"])
    narrowed.check(ip("127.59.0.9"))  # still dialled
    with pytest.raises(ProbeError) as opted:
        narrowed.check(ip("127.59.1.9"))
    assert (opted.value.status, opted.value.message) == (Status.BLOCKLISTED_TARGET,
                                                         "opted out")
    with pytest.raises(ProbeError) as outside:
        narrowed.check(ip("192.0.2.1"))
    assert outside.value.status is Status.OUT_OF_SCOPE
    scope.check(ip("127.59.1.9"))  # the deployment's scope itself is unchanged


def test_the_page_says_what_the_product_does() -> None:
    settings = Settings(client_id_prefix="acme-scan-")
    does, does_not = probe_facts(settings)
    text = " ".join(does + does_not)
    spec = SweepSpec(targets=[])
    for port in spec.ports.split(","):
        assert port in text
    assert "<code>acme-scan-</code>" in text and "$SYS/broker/version" in text
    page = render_page(settings)
    assert page.count("not configured") == 4  # operator, contact, purpose, addresses
    shown = render_page(Settings(identity_operator="<b>Lab</b>",
                                 identity_contact="https://lab.example/scan",
                                 identity_purpose="research",
                                 identity_sources=["192.0.2.0/28"]))
    assert "not configured" not in shown and "&lt;b&gt;Lab&lt;/b&gt;" in shown
    assert 'href="https://lab.example/scan"' in shown


def test_a_bad_source_address_setting_is_refused() -> None:
    with pytest.raises(ValueError, match="is not an IPv4 network"):
        Settings(identity_sources=["scanner.example"])


def test_a_scheduled_run_reads_its_opt_out_lists_again(tmp_path: Path) -> None:
    listed = tmp_path / "optout.conf"
    listed.write_text("198.51.100.0/24  # asked by mail\n")
    spec = SweepSpec(targets=["192.0.2.0/24"], allow_reserved=True,  # planned only
                     optout=opt_out([str(listed)]))
    stored, _, _ = prepare("nightly", spec, every="1d", cron=None, jitter=None,
                           fixed_seed=False, now=datetime.now(UTC),
                           optout_files=[str(listed)])
    assert stored["optout_files"] == [str(listed)]
    listed.write_text("198.51.100.0/24\n203.0.113.0/24\n")  # the list grew since
    run = run_spec(stored, ["192.0.2.128/25"])
    assert run["optout"] == ["192.0.2.128/25", "198.51.100.0/24", "203.0.113.0/24"]
    assert "optout_files" not in run
    SweepSpec.model_validate({**run, "seed": 1})  # a spec this version reads
    legacy = {k: v for k, v in stored.items() if k != "optout_files"}  # stored before
    assert run_spec(legacy, [])["optout"] == ["198.51.100.0/24"]
    listed.unlink()
    with pytest.raises(TargetError, match="optout.conf"):
        run_spec(stored, [])
