"""`tokenledger`: one entry point; each command group lives in its own module with a `register`."""

from __future__ import annotations

import argparse
import logging
import sys
from collections.abc import Sequence

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
    "override_cmds",
)


def build_parser() -> argparse.ArgumentParser:
    import importlib

    parser = argparse.ArgumentParser(prog="tokenledger", description="A token ledger for LLM agents.")
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
        print(f"tokenledger: {error}", file=sys.stderr)
        return 1
    except ValidationError as error:
        print(f"tokenledger: {explain_validation_error(error)}", file=sys.stderr)
        return 1
    except BrokenPipeError:  # `tokenledger models | head`: the reader left; not an error
        sys.stderr.close()
        return 0
    except KeyboardInterrupt:
        return 130
    except Exception as error:  # a bug: logged with its traceback under an id, which the message names
        failure = internal_error(logging.getLogger("tokenledger.cli"), error, f"running {args.command}")
        print(f"tokenledger: {failure}", file=sys.stderr)
        return 1
