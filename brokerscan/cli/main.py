"""The ``brokerscan`` entry point: build the parser from the command modules, run the
command, turn a :class:`~brokerscan.cli.errors.CliError` into one line and its exit code.

A command module has ``COMMANDS`` (the top-level names it adds), ``add_commands(sub)`` and
``run(args, settings) -> int``. Only the module of the command given is imported (all of
them for ``--help`` or an unknown command): a command pays for its own libraries, not for
every other command's (``sweep status`` does not load FastAPI, uvicorn and Celery).
"""

from __future__ import annotations

import argparse
import importlib
import sys
from collections.abc import Sequence
from types import ModuleType

from pydantic import ValidationError

from brokerscan import __version__
from brokerscan.cli.errors import (
    EXIT_BAD_INPUT,
    EXIT_INTERRUPTED,
    EXIT_UNAVAILABLE,
    CliError,
    Parser,
    print_error,
)
from brokerscan.settings import Settings
from storage.urls import StoreUrlError
from workers.tlshooks import TlsSelfCheckError

__all__ = ["COMMANDS", "build_parser", "main"]

#: Every top-level command and the module of ``brokerscan.cli`` that has it; ``--help``
#: lists the modules in this order (a unit test checks it against each module's COMMANDS).
COMMANDS: dict[str, str] = {
    "scan": "scan",
    "demo": "demo",
    "search": "search", "report": "search", "diff": "search", "import": "search",
    "sweep": "sweep",
    "worker": "fleet", "scheduler": "fleet",
    "enrich-worker": "stream", "store-worker": "stream", "stream": "stream",
    "db": "db",
    "lookup": "lookup",
    "serve": "serve",
    "token": "token",
    "watch": "watch",
    "optout": "optout",
}


def command_modules(command: str | None = None) -> list[ModuleType]:
    """The module of ``command``, or every command module (in ``--help`` order) when
    ``command`` is None or not a command."""
    wanted = [COMMANDS[command]] if command in COMMANDS else list(dict.fromkeys(
        COMMANDS.values()))
    return [importlib.import_module(f"brokerscan.cli.{name}") for name in wanted]


def build_parser(command: str | None = None) -> argparse.ArgumentParser:
    """The command line: every command, or only ``command``'s module's commands."""
    parser = Parser(prog="brokerscan",
                    description="Find and measure exposed MQTT and AMQP brokers.")
    parser.add_argument("--version", action="version", version=f"brokerscan {__version__}")
    sub = parser.add_subparsers(dest="command", required=True, parser_class=Parser)
    for module in command_modules(command):
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
    given = list(sys.argv[1:] if argv is None else argv)
    args = build_parser(given[0] if given else None).parse_args(given)
    try:
        settings = _settings()
        for module in command_modules(args.command):
            if args.command in module.COMMANDS:
                code: int = module.run(args, settings)
                return code
        raise CliError(f"unknown command {args.command!r}", EXIT_BAD_INPUT)  # pragma: no cover
    except CliError as exc:
        print_error(str(exc), exc.context)
        return exc.code
    except StoreUrlError as exc:  # a --store option or store setting no backend takes
        print_error(str(exc))
        return EXIT_BAD_INPUT
    except TlsSelfCheckError as exc:  # this Python's ssl lost a hook we rely on
        print_error(str(exc))
        return EXIT_UNAVAILABLE
    except KeyboardInterrupt:
        sys.stderr.write("brokerscan: interrupted\n")
        return EXIT_INTERRUPTED
