"""The ``brokerscan`` entry point: build the parser from every command module, run the
command, turn a :class:`~brokerscan.cli.errors.CliError` into one line and its exit code.

A command module has ``COMMANDS`` (the top-level names it adds), ``add_commands(sub)`` and
``run(args, settings) -> int``. Only the module of the command asked for is imported
(:data:`COMMAND_MODULES`), so ``brokerscan report`` does not start by loading the scan
engine, the stream and the web server; ``--help`` and anything unknown load them all.
"""

from __future__ import annotations

import argparse
import importlib
import sys
from collections.abc import Sequence
from types import ModuleType
from typing import Final

from pydantic import ValidationError

from brokerscan import __version__
from brokerscan.cli.errors import (
    EXIT_INTERRUPTED,
    EXIT_UNAVAILABLE,
    CliError,
    Parser,
    print_error,
)
from brokerscan.settings import Settings
from workers.tlshooks import TlsSelfCheckError

__all__ = ["build_parser", "main"]

#: Every command module (``brokerscan.cli.<name>``), in the order ``--help`` lists them.
MODULE_NAMES: Final = ("scan", "demo", "search", "sweep", "fleet", "stream", "db", "lookup",
                       "serve", "token")
#: The module of each top-level command (a test holds it to every module's ``COMMANDS``).
COMMAND_MODULES: Final = {
    "scan": "scan", "demo": "demo", "search": "search", "report": "search",
    "diff": "search", "import": "search", "sweep": "sweep", "scheduler": "fleet",
    "worker": "fleet", "enrich-worker": "stream", "store-worker": "stream",
    "stream": "stream", "db": "db", "lookup": "lookup", "serve": "serve", "token": "token",
}


def _module(name: str) -> ModuleType:
    return importlib.import_module(f"brokerscan.cli.{name}")


def build_parser(only: str | None = None) -> argparse.ArgumentParser:
    """The whole command line, or (*only*: a module's name) that module's commands."""
    parser = Parser(prog="brokerscan",
                    description="Find and measure exposed MQTT and AMQP brokers.")
    parser.add_argument("--version", action="version", version=f"brokerscan {__version__}")
    sub = parser.add_subparsers(dest="command", required=True, parser_class=Parser)
    for name in MODULE_NAMES if only is None else (only,):
        _module(name).add_commands(sub)
    return parser


def _settings() -> Settings:
    try:
        return Settings()
    except ValidationError as exc:
        first = exc.errors()[0]
        where = ".".join(str(p) for p in first["loc"]) or "settings"
        raise CliError(f"settings: {where}: {first['msg']}") from None


def main(argv: Sequence[str] | None = None) -> int:
    """Run the command line; returns the exit code."""
    words = list(sys.argv[1:] if argv is None else argv)
    only = COMMAND_MODULES.get(words[0]) if words else None
    args = build_parser(only).parse_args(words)
    try:
        settings = _settings()
        module = _module(COMMAND_MODULES[args.command])
        code: int = module.run(args, settings)
        return code
    except CliError as exc:
        print_error(str(exc), exc.context)
        return exc.code
    except TlsSelfCheckError as exc:  # this Python's ssl lost a hook we rely on
        print_error(str(exc))
        return EXIT_UNAVAILABLE
    except KeyboardInterrupt:
        sys.stderr.write("brokerscan: interrupted\n")
        return EXIT_INTERRUPTED
