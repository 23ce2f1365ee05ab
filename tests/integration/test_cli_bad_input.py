"""Bad input to the `brokerscan` commands: one clear line on stderr, exit 2, nothing done.

Each case runs the real command in a child process inside a private network namespace
with only loopback (``unshare -n``), so even a bug could not send a packet anywhere else.
"""

from __future__ import annotations

import os
import shutil
import subprocess
import sys

import pytest

pytestmark = pytest.mark.integration


def run_isolated(*args: str, env: dict[str, str] | None = None,
                 stdin: str | None = None) -> subprocess.CompletedProcess[str]:
    if shutil.which("unshare") is None or os.geteuid() != 0:
        pytest.fail("these tests need root and unshare(1) to run in a private network namespace")
    command = [sys.executable, "-m", "brokerscan.cli", *args]
    wrapped = ["unshare", "-n", "sh", "-c", 'ip link set lo up 2>/dev/null; exec "$@"', "sh",
               *command]
    full_env = {**os.environ, "BROKERSCAN_SCOPE": "127.0.0.0/8", **(env or {})}
    return subprocess.run(wrapped, capture_output=True, text=True, env=full_env, input=stdin,
                          timeout=60)


def assert_one_line_error(proc: subprocess.CompletedProcess[str], *needles: str) -> None:
    assert proc.returncode == 2, (proc.returncode, proc.stdout, proc.stderr)
    lines = proc.stderr.strip().splitlines()
    assert len(lines) == 1, proc.stderr
    assert "Traceback" not in proc.stderr
    assert proc.stdout == ""
    for needle in needles:
        assert needle in lines[0], lines[0]


@pytest.mark.parametrize(("args", "needles"), [
    (["scan", "127.10.0.0/33", "--allow-reserved"], ["127.10.0.0/33"]),
    (["scan", "300.1.1.1", "--allow-reserved"], ["300.1.1.1"]),
    (["scan", "broker.example", "--allow-reserved"], ["hostname"]),
    (["scan", "127.10.0.9-127.10.0.1", "--allow-reserved"], ["127.10.0.9-127.10.0.1"]),
    (["scan", "127.10.0.1", "--allow-reserved", "-p", "mqttz"], ["mqttz", "mqtt"]),
    (["scan", "127.10.0.1", "--allow-reserved", "-p", "70000"], ["70000"]),
    (["scan", "127.10.0.1", "--allow-reserved", "-p", "1883/udp"], ["1883/udp"]),
    (["scan", "127.10.0.1", "--allow-reserved", "--rate", "fast"], ["fast"]),
    (["scan", "127.10.0.1", "--allow-reserved", "--mqtt-levels", "6"], ["6"]),
    (["scan", "-iL", "/nonexistent/targets.txt", "--allow-reserved"], ["/nonexistent/targets.txt"]),
    (["scan", "--allow-reserved"], ["no targets"]),
    (["scan", "127.10.0.1"], ["--allow-reserved"]),  # loopback is reserved space
    (["scan", "198.51.100.7", "--allow-reserved"], ["outside the scope"]),
    (["scan", "127.10.0.1", "--allow-reserved", "-o", "/dev/null/out.jsonl"],
     ["/dev/null/out.jsonl"]),
    (["frobnicate"], ["frobnicate"]),
    (["enrich-worker", "--per-message", "0"], ["--per-message"]),
    (["enrich-worker", "--prefetch", "70000"], ["--prefetch"]),
    (["store-worker", "--prefetch", "0"], ["--prefetch"]),
    (["store-worker", "--batch-size", "many"], ["many"]),
])
def test_bad_input_is_one_line_and_exit_2(args, needles):
    assert_one_line_error(run_isolated(*args), *needles)


def test_bad_line_in_a_target_file_names_file_and_line(tmp_path):
    targets = tmp_path / "targets.txt"
    targets.write_text("# ours\n127.10.0.1\n127.10.0.0/99\n")
    assert_one_line_error(run_isolated("scan", "-iL", str(targets), "--allow-reserved"),
                          f"{targets}:3")


def test_bad_target_on_stdin():
    assert_one_line_error(run_isolated("scan", "-", "--allow-reserved", stdin="127.1.1.1\nnope\n"),
                          "nope")


def test_opt_out_blocklist_applies_even_with_allow_reserved(tmp_path):
    optout = tmp_path / "optout.conf"
    optout.write_text("127.10.0.0/24  # they asked us not to\n")
    assert_one_line_error(
        run_isolated("scan", "127.10.0.5", "--allow-reserved", "--blocklist", str(optout)),
        "opt-out")


def test_bad_settings_are_one_line():
    assert_one_line_error(
        run_isolated("scan", "127.10.0.1", "--allow-reserved",
                     env={"BROKERSCAN_SCOPE": "127.0.0.0/40"}),
        "scope")
