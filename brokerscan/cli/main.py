"""The ``brokerscan`` entry point: build the parser from every command module, run the
command, turn a :class:`~brokerscan.cli.errors.CliError` into one line and its exit code.

A command module has ``COMMANDS`` (the top-level names it adds), ``add_commands(sub)`` and
``run(args, settings) -> int``.
"""

from __future__ import annotations

import argparse
import sys
from collections.abc import Sequence
from types import ModuleType

from pydantic import ValidationError

from brokerscan import __version__
from brokerscan.cli import db, demo, fleet, lookup, scan, search, serve, stream, sweep, token
from brokerscan.cli.errors import (
    EXIT_BAD_INPUT,
    EXIT_INTERRUPTED,
    EXIT_UNAVAILABLE,
    CliError,
    Parser,
    print_error,
)
from brokerscan.settings import Settings
from workers.tlshooks import TlsSelfCheckError

__all__ = ["build_parser", "main"]

#: Every command module, in the order ``--help`` lists their commands.
MODULES: tuple[ModuleType, ...] = (scan, demo, search, sweep, fleet, stream, db, lookup,
                                   serve, token)


def build_parser() -> argparse.ArgumentParser:
    """The whole command line."""
    parser = Parser(prog="brokerscan",
                    description="Find and measure exposed MQTT and AMQP brokers.")
    parser.add_argument("--version", action="version", version=f"brokerscan {__version__}")
    sub = parser.add_subparsers(dest="command", required=True, parser_class=Parser)
    for module in MODULES:
        module.add_commands(sub)
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
    args = build_parser().parse_args(argv)
    try:
        settings = _settings()
        for module in MODULES:
            if args.command in module.COMMANDS:
                code: int = module.run(args, settings)
                return code
        raise CliError(f"unknown command {args.command!r}", EXIT_BAD_INPUT)  # pragma: no cover
    except CliError as exc:
        print_error(str(exc), exc.context)
        return exc.code
    except TlsSelfCheckError as exc:  # this Python's ssl lost a hook we rely on
        print_error(str(exc))
        return EXIT_UNAVAILABLE
    except KeyboardInterrupt:
        sys.stderr.write("brokerscan: interrupted\n")
        return EXIT_INTERRUPTED
