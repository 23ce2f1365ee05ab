"""How every command fails: one error type, one set of exit codes, one line on stderr.

=====  ==========================================================================
code   meaning
=====  ==========================================================================
0      done
1      a service is unreachable or failed under us (broker, Redis, database, store)
2      bad input: a malformed argument, target, query, file or setting
130    interrupted (Ctrl-C)
=====  ==========================================================================
"""

from __future__ import annotations

import argparse
import sys
from typing import Final, NoReturn

__all__ = ["EXIT_BAD_INPUT", "EXIT_INTERRUPTED", "EXIT_OK", "EXIT_UNAVAILABLE", "CliError",
           "Parser", "print_error"]

EXIT_OK: Final = 0
EXIT_UNAVAILABLE: Final = 1
EXIT_BAD_INPUT: Final = 2
EXIT_INTERRUPTED: Final = 130


class CliError(Exception):
    """A command cannot go on: *message* is one line for the user, *code* the exit code;
    *context* (optional) is shown under it, indented: the query with a caret under a
    mistake."""

    def __init__(self, message: str, code: int = EXIT_BAD_INPUT, *,
                 context: str | None = None) -> None:
        super().__init__(" ".join(message.split()))
        self.code = code
        self.context = context


def print_error(message: str, context: str | None = None) -> None:
    """``brokerscan: error: <message>`` on stderr, then the context lines, indented."""
    sys.stderr.write(f"brokerscan: error: {message}\n")
    for line in (context or "").splitlines():
        sys.stderr.write(f"    {line}\n")
    sys.stderr.flush()


class Parser(argparse.ArgumentParser):
    """An argument parser whose mistakes are one line and exit code 2 (argparse prints the
    whole usage first, which buries the line that matters)."""

    def error(self, message: str) -> NoReturn:
        self.exit(EXIT_BAD_INPUT, f"{self.prog}: error: {message} (see --help)\n")
