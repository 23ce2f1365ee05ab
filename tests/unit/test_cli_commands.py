"""The command line loads only the module of the command asked for: its table of which
module adds which command must be every module's own ``COMMANDS``."""

from __future__ import annotations

import importlib
import subprocess
import sys

from brokerscan.cli.importer import MAX_LINE
from brokerscan.cli.main import COMMAND_MODULES, MODULE_NAMES, build_parser
from brokerscan.cli.search import _MAX_LINE_MIB


def test_every_command_is_found_in_its_own_module() -> None:
    owned = {command: name for name in MODULE_NAMES
             for command in importlib.import_module(f"brokerscan.cli.{name}").COMMANDS}
    assert owned == COMMAND_MODULES


def test_one_modules_parser_knows_its_commands() -> None:
    args = build_parser("search").parse_args(["report", "--format", "json"])
    assert args.command == "report" and args.format == "json"


def test_report_does_not_load_the_scan_engine_or_the_stream() -> None:
    code = ("import sys; from brokerscan.cli.main import build_parser; "
            "build_parser('search').parse_args(['report']); "
            "print(sorted(m for m in ('workers.engine', 'aio_pika', 'redis', 'fastapi') "
            "if m in sys.modules))")
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                          check=True, timeout=60)
    assert done.stdout.strip() == "[]"


def test_the_import_help_says_the_importers_line_limit() -> None:
    assert _MAX_LINE_MIB << 20 == MAX_LINE
