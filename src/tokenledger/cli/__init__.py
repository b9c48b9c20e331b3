"""`tokenledger`: one entry point; each command group lives in its own module with a `register`.

Every error ends as one line on stderr and a non-zero exit, never a traceback: our own errors and
refused input (exit 1), a bad command line (exit 2), and anything unforeseen (exit 1, with the
traceback only when TOKENLEDGER_DEBUG is set).
"""

from __future__ import annotations

import argparse
import logging
import os
import sys
import traceback
from collections.abc import Sequence
from importlib.metadata import PackageNotFoundError, version
from typing import NoReturn

from pydantic import ValidationError

from tokenledger.errors import TokenLedgerError, internal_error
from tokenledger.types import explain_validation_error

# Each module exposes `register(subparsers)`, which adds its commands and sets `handler`
# (a function taking the parsed args and returning an exit code).
_COMMAND_MODULES = (
    "count",
    "catalog_cmds",
    "ledger_cmds",
    "counting_cmds",
    "serve",
    "report_cmd",
    "schedule_cmds",
    "install",
    "db",
    "fx_cmds",
    "override_cmds",
)


class _Parser(argparse.ArgumentParser):
    """argparse, with its errors on one line (`tokenledger keys create: error: ...; see --help`)."""

    def error(self, message: str) -> NoReturn:
        self.exit(2, f"{self.prog}: error: {message} (see {self.prog} --help)\n")


def package_version() -> str:
    """The installed package's version (from its metadata)."""
    try:
        return version("tokenledger")
    except PackageNotFoundError:  # running from a source tree that was never installed
        return "unknown"


def build_parser() -> argparse.ArgumentParser:
    import importlib

    parser = _Parser(prog="tokenledger", description="A token ledger for LLM agents.")
    parser.add_argument("--version", action="version", version=f"tokenledger {package_version()}")
    subparsers = parser.add_subparsers(dest="command", metavar="COMMAND")
    for name in _COMMAND_MODULES:
        try:
            module = importlib.import_module(f"tokenledger.cli.{name}")
        except ModuleNotFoundError as missing:
            if missing.name != f"tokenledger.cli.{name}":
                raise
            continue
        module.register(subparsers)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    if getattr(args, "handler", None) is None:
        parser.print_help(sys.stderr)
        return 2
    try:
        return int(args.handler(args))
    except TokenLedgerError as error:
        return _fail(str(error))
    except ValidationError as error:
        return _fail(explain_validation_error(error))
    except BrokenPipeError:  # `tokenledger models | head`: the reader left; not an error
        sys.stderr.close()
        return 0
    except KeyboardInterrupt:
        return 130
    except OSError as error:  # a file or directory the command could not read or write
        where = f": {error.filename}" if error.filename else ""
        return _fail(f"{error.strerror or error}{where}")
    except Exception as error:  # a bug: logged with its traceback under an id, which the message names
        if os.environ.get("TOKENLEDGER_DEBUG"):
            traceback.print_exc()
        failure = internal_error(logging.getLogger("tokenledger.cli"), error, f"running {args.command}")
        return _fail(str(failure))


def _fail(message: str) -> int:
    print(f"tokenledger: {' '.join(message.split())}", file=sys.stderr)
    return 1
