"""`tokenledger sql install-counting | count` and `tokenledger settings list | set | rotate-secret`:
counting in SQL, and the tenant's settings (provider counting, pseudonyms) and secret."""

from __future__ import annotations

import argparse
import json
from typing import Any

from tokenledger.cli.ledger_cmds import _run
from tokenledger.errors import InvalidInput
from tokenledger.ledger import Ledger
from tokenledger.tokens import DEFAULT_ENCODING
from tokenledger.types import Principal


def register(subparsers: Any) -> None:
    sql = subparsers.add_parser("sql", help="count tokens inside PostgreSQL (tiktoken_count)")
    actions = sql.add_subparsers(dest="action", metavar="ACTION", required=True)
    install = actions.add_parser(
        "install-counting",
        help="create tiktoken_count and tiktoken_encode in PL/Python where pg_tiktoken is not installed",
    )
    install.set_defaults(handler=_run(install_counting_command))
    count = actions.add_parser("count", help="count texts with the database's tiktoken_count")
    count.add_argument("texts", nargs="+")
    count.add_argument("--encoding", default=DEFAULT_ENCODING)
    count.add_argument("--json", action="store_true")
    count.set_defaults(handler=_run(sql_count_command))

    settings = subparsers.add_parser("settings", help="the tenant's settings (admin)")
    setting_actions = settings.add_subparsers(dest="action", metavar="ACTION", required=True)
    lister = setting_actions.add_parser("list", help="every setting and its value")
    lister.add_argument("--json", action="store_true")
    lister.set_defaults(handler=_run(settings_list_command))
    setter = setting_actions.add_parser("set", help="change a setting (audited)")
    setter.add_argument("key")
    setter.add_argument("value", help='a JSON value: true, false, 3, "text"')
    setter.set_defaults(handler=_run(settings_set_command))
    rotate = setting_actions.add_parser(
        "rotate-secret",
        help="replace the tenant's secret: every user pseudonym changes, new prompt hashes start afresh",
    )
    rotate.set_defaults(handler=_run(settings_rotate_secret_command))


def describe_counting(support: dict[str, Any]) -> str:
    """One line on counting in SQL: what provides tiktoken_count, or what is missing and how to get it."""
    if support["pg_tiktoken"]:
        return "pg_tiktoken installed: tiktoken_count counts in SQL (method pg_tiktoken)"
    if support["backend"] == "plpython":
        return "tokenledger's PL/Python tiktoken_count installed: counts in SQL (method pg_tiktoken)"
    if support["plpython"] or support["plpython_available"]:
        return "PL/Python available: `tokenledger sql install-counting` adds tiktoken_count"
    available = (
        ", pg_tiktoken available: CREATE EXTENSION pg_tiktoken" if support["pg_tiktoken_available"] else ""
    )
    return (
        f"no pg_tiktoken, no PL/Python{available}; for tokenledger's tiktoken_count install Debian's "
        f"{support['plpython_package']} on the server"
    )


async def install_counting_command(ledger: Ledger, principal: Principal, args: argparse.Namespace) -> int:
    print("installing tiktoken_count and tiktoken_encode (PL/Python) ...", flush=True)
    installed = await ledger.install_counting(principal)
    print(describe_counting(installed))
    tokens = installed["self_test_tokens"]
    print(f"self-test: tiktoken_count('o200k_base', ...) = {tokens}, as tokenledger counts")
    print("try: SELECT tiktoken_count('o200k_base', 'hello world');")
    return 0


async def sql_count_command(ledger: Ledger, principal: Principal, args: argparse.Namespace) -> int:
    counted = await ledger.count_in_database(args.texts, args.encoding)
    if args.json:
        print(counted.model_dump_json(indent=2, exclude_none=True))
    else:
        print(f"{counted.tokens} tokens ({counted.encoding}, counted in the database: {counted.method})")
    return 0


async def settings_list_command(ledger: Ledger, principal: Principal, args: argparse.Namespace) -> int:
    settings = await ledger.tenant_settings(principal)
    if args.json:
        print(settings.model_dump_json(indent=2))
    else:
        for key, value in settings.model_dump(mode="json").items():
            print(f"{key} = {json.dumps(value)}")
    return 0


async def settings_set_command(ledger: Ledger, principal: Principal, args: argparse.Namespace) -> int:
    try:
        value = json.loads(args.value)
    except json.JSONDecodeError:
        raise InvalidInput(
            "value", args.value, "a JSON value: true, false, a number or a quoted string"
        ) from None
    settings = await ledger.set_tenant_setting(args.key, value, principal)
    print(f"{args.key} = {json.dumps(getattr(settings, args.key))}")
    return 0


async def settings_rotate_secret_command(
    ledger: Ledger, principal: Principal, args: argparse.Namespace
) -> int:
    rotated = await ledger.rotate_tenant_secret(principal)
    when = rotated["rotated_at"].isoformat(timespec="seconds")
    print(
        f"tenant {rotated['tenant']}: secret rotated at {when}; user pseudonyms are new from now on, "
        "and prompt hashes no longer match earlier ones"
    )
    return 0
