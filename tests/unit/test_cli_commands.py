"""The entry point's map of commands to modules, and that a command loads only its own."""

from __future__ import annotations

import argparse
import subprocess
import sys

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
