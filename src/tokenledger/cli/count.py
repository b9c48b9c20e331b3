"""`tokenledger count`: count the tokens of a text, a file, stdin, or a chat request in JSON."""

from __future__ import annotations

import argparse
import json
import sys
from decimal import Decimal
from typing import Any

from tokenledger import tokens
from tokenledger.errors import InvalidInput, TokenLedgerError
from tokenledger.types import CountResult, ModelInfo, TokenCount


def register(subparsers: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    """Add the `count` command to the CLI."""
    parser = subparsers.add_parser(
        "count",
        help="count the tokens of a text, a file, stdin, or chat messages",
        description="Count tokens offline. With no TEXT, --file or --messages, the text is read from stdin.",
    )
    source = parser.add_mutually_exclusive_group()
    source.add_argument("text", nargs="?", help="the text to count")
    source.add_argument("--file", metavar="PATH", help="count the UTF-8 text of this file")
    source.add_argument(
        "--messages",
        metavar="FILE.json",
        help='a JSON list of chat messages, or {"messages": [...], "tools": [...]}; "-" reads stdin',
    )
    counted_as = parser.add_mutually_exclusive_group()
    counted_as.add_argument("--model", help="count as this model does, and show its context window")
    counted_as.add_argument(
        "--encoding",
        metavar="NAME",
        help=f"count with this encoding (default {tokens.DEFAULT_ENCODING}): {', '.join(tokens.ENCODINGS)}",
    )
    parser.add_argument(
        "--max-output-tokens", type=int, metavar="N", help="output tokens to leave room for (needs --model)"
    )
    parser.add_argument("--json", action="store_true", help="print the result as JSON")
    parser.set_defaults(handler=run)


def run(args: argparse.Namespace) -> int:
    """Print the count of what `args` names; return the exit code."""
    model = _resolve(args.model) if args.model else None
    if args.max_output_tokens is not None and (model is None or args.max_output_tokens < 0):
        raise InvalidInput(
            "--max-output-tokens", args.max_output_tokens, "give a non-negative number, together with --model"
        )
    if args.messages is not None:
        messages, tools = _read_messages(args.messages)
        count = tokens.count_messages(messages, tools=tools, model=model, encoding=args.encoding)
    else:
        count = tokens.count_text(_read_text(args), model=model, encoding=args.encoding)
    if model is None:
        _warn(count.warnings)
        if args.json:
            print(CountResult(**count.model_dump()).model_dump_json(exclude={"estimated_cost_usd", "priced"}))
        else:
            print(_describe(count))
        return 0
    output_tokens = args.max_output_tokens or 0
    fit = tokens.context_fit(count.tokens, model, output_tokens)
    price = _cost(model, count.tokens, output_tokens)
    result = CountResult(
        **count.model_dump(exclude={"warnings"}),
        **fit.model_dump(),
        estimated_cost_usd=price,
        priced=price is not None,
        warnings=[*count.warnings, *model.warnings],
    )
    _warn(result.warnings)  # an estimate's caveat, a retired model, a host's price the catalog lacks
    print(result.model_dump_json() if args.json else _describe(result, output_tokens))
    return 0


def _warn(warnings: list[str]) -> None:
    """Warnings go to stderr, once each, so stdout stays the count (or its JSON)."""
    for warning in warnings:
        print(f"tokenledger: warning: {warning}", file=sys.stderr)


def _resolve(name: str) -> ModelInfo:
    # Imported here: the catalog loads its price snapshot, which plain encoding counts never need.
    from tokenledger.catalog import resolve

    return resolve(name)


def _cost(model: ModelInfo, input_tokens: int, output_tokens: int) -> Decimal | None:
    """Return the USD cost of the input plus the output reserved at the model's price; None if unpriced."""
    from tokenledger.catalog import cost

    return cost(model.price, input_tokens=input_tokens, output_tokens=output_tokens).cost_usd


def _read_text(args: argparse.Namespace) -> str:
    """Return the text to count: the argument, the file, or stdin, with line endings kept as they are."""
    if args.text is not None:
        return str(args.text)
    if args.file is not None:
        return _read_file(args.file, "--file")
    if sys.stdin.isatty():
        raise TokenLedgerError(
            "nothing to count: give TEXT, --file PATH, --messages FILE.json, or pipe stdin"
        )
    return _read_stdin()


def _read_file(path: str, option: str) -> str:
    try:
        # newline="" keeps "\r\n" as written: it is a different token sequence from "\n".
        with open(path, encoding="utf-8", newline="") as file:
            return file.read()
    except OSError as error:
        reason = (error.strerror or str(error)).lower()
        raise TokenLedgerError(f"{option}: cannot read {path!r}: {reason}") from error
    except UnicodeDecodeError as error:
        raise InvalidInput(
            option, path, f"it is not UTF-8 text ({error.reason} at byte {error.start})"
        ) from error


def _read_stdin() -> str:
    buffer = getattr(sys.stdin, "buffer", None)
    if buffer is None:  # replaced by a text stream, as in tests
        return sys.stdin.read()
    try:
        return str(buffer.read().decode("utf-8"))
    except UnicodeDecodeError as error:
        raise InvalidInput("stdin", "<bytes>", f"it is not UTF-8 text ({error.reason})") from error


def _read_messages(path: str) -> tuple[list[Any], list[Any] | None]:
    """Return the messages and tools of a JSON chat request file (or stdin for "-")."""
    raw = _read_stdin() if path == "-" else _read_file(path, "--messages")
    try:
        payload = json.loads(raw)
    except json.JSONDecodeError as error:
        raise InvalidInput(
            "--messages", path, f"it is not valid JSON ({error.msg} at line {error.lineno})"
        ) from error
    if isinstance(payload, dict):
        unknown = sorted(set(payload) - {"messages", "tools"})
        if "messages" not in payload or unknown:
            raise InvalidInput(
                "--messages", path, 'give a list of messages or {"messages": [...], "tools": [...]}'
            )
        messages, tools = payload["messages"], payload.get("tools")
    else:
        messages, tools = payload, None
    if not isinstance(messages, list):
        raise InvalidInput("messages", messages, "give a JSON list of messages")
    if tools is not None and not isinstance(tools, list):
        raise InvalidInput("tools", tools, "give a JSON list of tool definitions")
    return messages, tools


def _describe(count: TokenCount | CountResult, output_tokens: int = 0) -> str:
    """Return the plain-text report: the count, then context window use, cost and what was not counted."""
    label = ", ".join(part for part in (count.method, count.encoding, count.model) if part)
    lines = [f"{count.tokens:,} token{'' if count.tokens == 1 else 's'} ({label})"]
    if count.error_band:
        lines.append(
            f"expected error: ±{count.error_band:.0%} (the provider's count may differ by this much)"
        )
    if isinstance(count, CountResult):
        if count.context_window is None:
            lines.append("context window: unknown for this model")
        else:
            verdict = "fits" if count.fits else "does NOT fit"
            lines.append(
                f"context: {count.tokens:,} input + {output_tokens:,} output of {count.context_window:,} "
                f"({count.percent_used}%), {count.remaining_context:,} remaining; {verdict}"
            )
        shown = "unpriced" if count.estimated_cost_usd is None else f"${count.estimated_cost_usd:f}"
        lines.append(f"estimated cost: {shown} (input + {output_tokens:,} output tokens)")
    lines.extend(f"not counted: {part}" for part in count.not_counted)
    return "\n".join(lines)
