"""The entry point's map of commands to modules, and that a command loads only its own."""

from __future__ import annotations

import argparse
import subprocess
import sys

import pytest

from brokerscan.cli import main


def test_the_map_holds_exactly_each_modules_commands() -> None:
    for module in main.command_modules():
        name = module.__name__.rsplit(".", 1)[1]
        assert module.COMMANDS == {c for c, m in main.COMMANDS.items() if m == name}, name


def _commands(parser: argparse.ArgumentParser) -> list[str]:
    sub = next(a for a in parser._actions if isinstance(a, argparse._SubParsersAction))
    return list(sub.choices)


def test_every_command_is_in_the_whole_parser_and_in_its_own() -> None:
    # --help lists them in the map's order
    assert _commands(main.build_parser()) == list(main.COMMANDS)
    for command, module in main.COMMANDS.items():
        assert _commands(main.build_parser(command)) == [
            c for c, m in main.COMMANDS.items() if m == module]


def test_a_command_imports_only_its_own_module() -> None:
    code = ("import sys\n"
            "from brokerscan.cli.main import main\n"
            "try:\n"
            "    main(['sweep', '--help'])\n"
            "except SystemExit:\n"
            "    pass\n"
            "sys.stderr.write(' '.join(sys.modules))\n")
    proc = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                          timeout=60, check=True)
    loaded = set(proc.stderr.split())
    assert "brokerscan.cli.sweep" in loaded
    assert not loaded & {"brokerscan.cli.serve", "brokerscan.cli.demo", "fastapi", "uvicorn",
                         "celery"}, loaded & {"fastapi", "uvicorn", "celery"}


@pytest.mark.parametrize("argv", [
    ["db", "verify"], ["report"], ["search", "port:1883"], ["diff", "a", "b"],
    ["watch", "list"], ["token", "list"], ["serve"],
])  # scan's: tests/integration/test_scan_store.py
def test_a_store_url_no_backend_takes_is_bad_input(argv, capsys, monkeypatch) -> None:
    """Exit 2 and one line, with any password hidden, from every command that opens the
    store: from the option, and from the setting."""
    url = "mongodb://scanner:secret@127.0.0.1/census"
    assert main.main([*argv, "--store", url]) == 2
    err = capsys.readouterr().err
    assert err == ("brokerscan: error: store mongodb://scanner:***@127.0.0.1/census: "
                   "unknown store URL scheme 'mongodb'; use one of postgresql://, "
                   "postgres://, sqlite://\n"), err
    monkeypatch.setenv("BROKERSCAN_STORE_URL", "sqlit:///x.db")
    monkeypatch.setenv("BROKERSCAN_DATABASE_URL", "sqlit:///x.db")
    assert main.main(argv) == 2
    assert "(did you mean sqlite://?)" in capsys.readouterr().err
