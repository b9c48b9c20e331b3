"""`tokenledger override request | status | cancel | list | approve | deny`: override requests from the shell.

Acts as the configured local principal (TOKENLEDGER_TENANT, TOKENLEDGER_ROLE, TOKENLEDGER_USER): a member
asks for more of a budget it may read and follows its own requests; an admin lists, approves and denies.
A running `tokenledger serve` tells the admins of each request through the alert sinks.
"""

from __future__ import annotations

import argparse
from collections.abc import Sequence
from datetime import UTC
from typing import Any, get_args

from tokenledger.cli import tables
from tokenledger.cli.ledger_cmds import _run, print_json
from tokenledger.ledger import Ledger
from tokenledger.types import (
    MAX_OVERRIDE_DAYS,
    MAX_OVERRIDE_FACTOR,
    Override,
    OverrideRequest,
    OverrideStatus,
    Principal,
)


def register(subparsers: Any) -> None:
    override = subparsers.add_parser(
        "override",
        help="ask for a temporary increase of a budget; approve or deny (admin)",
        description=(
            "Override requests: a member asks for more of a budget until a moment (at most "
            f"{MAX_OVERRIDE_FACTOR} times its limit, at most {MAX_OVERRIDE_DAYS} days ahead); an admin "
            "approves or denies. Approved, the budget's limit and hard cap rise by the amount from approval "
            "until then, and revert by themselves."
        ),
    )
    actions = override.add_subparsers(dest="action", metavar="ACTION", required=True)
    request = actions.add_parser("request", help="ask for more of a budget until a moment")
    request.add_argument("budget")
    request.add_argument("--amount", required=True, help="how much more, in the budget's unit")
    request.add_argument("--until", required=True, help="ISO 8601 with offset, or a duration ahead: 2h, 3d")
    request.add_argument("--reason", required=True, help="why (shown to the admins)")
    request.add_argument("--json", action="store_true")
    request.set_defaults(handler=_run(request_command))
    status = actions.add_parser("status", help="one request and its state")
    status.add_argument("id", type=int)
    status.add_argument("--json", action="store_true")
    status.set_defaults(handler=_run(status_command))
    cancel = actions.add_parser("cancel", help="withdraw a pending request")
    cancel.add_argument("id", type=int)
    cancel.set_defaults(handler=_run(cancel_command))
    lister = actions.add_parser("list", help="requests, newest first (a member: its own)")
    lister.add_argument("--status", choices=get_args(OverrideStatus))
    lister.add_argument("--budget")
    lister.add_argument("--json", action="store_true")
    lister.set_defaults(handler=_run(list_command))
    approve = actions.add_parser("approve", help="approve a pending request (admin)")
    approve.add_argument("id", type=int)
    approve.add_argument("--reason", help="why (kept in the audit log)")
    approve.set_defaults(handler=_run(approve_command))
    deny = actions.add_parser("deny", help="deny a pending request (admin)")
    deny.add_argument("id", type=int)
    deny.add_argument("--reason", required=True, help="why (the requester reads it)")
    deny.set_defaults(handler=_run(deny_command))


async def request_command(ledger: Ledger, principal: Principal, args: argparse.Namespace) -> int:
    asked = OverrideRequest.model_validate(
        {"budget": args.budget, "amount": args.amount, "until": args.until, "reason": args.reason}
    )
    made = await ledger.request_override(asked, principal)
    if args.json:
        print_json(made)
    else:
        print(f"requested override #{made.override_id}: {_what(made)} (pending an admin's decision)")
    return 0


async def status_command(ledger: Ledger, principal: Principal, args: argparse.Namespace) -> int:
    found = await ledger.override_status(args.id, principal)
    if args.json:
        print_json(found)
    else:
        tables.show(tables.console(), _grid([found]))
    return 0


async def cancel_command(ledger: Ledger, principal: Principal, args: argparse.Namespace) -> int:
    cancelled = await ledger.cancel_override(args.id, principal)
    print(f"cancelled override #{cancelled.override_id}")
    return 0


async def list_command(ledger: Ledger, principal: Principal, args: argparse.Namespace) -> int:
    found = await ledger.list_overrides(principal, status=args.status, budget=args.budget)
    if args.json:
        print_json(found)
    else:
        tables.show(tables.console(), _grid(found))
    return 0


async def approve_command(ledger: Ledger, principal: Principal, args: argparse.Namespace) -> int:
    approved = await ledger.approve_override(args.id, principal, reason=args.reason)
    print(f"approved override #{approved.override_id}: {_what(approved)}")
    return 0


async def deny_command(ledger: Ledger, principal: Principal, args: argparse.Namespace) -> int:
    denied = await ledger.deny_override(args.id, args.reason, principal)
    print(f"denied override #{denied.override_id}: {_what(denied)}")
    return 0


def _amount(override: Override) -> str:
    plain = format(override.amount.normalize(), "f")
    return f"${plain}" if override.unit == "usd" else f"{plain} tokens"


def _what(override: Override) -> str:
    until = override.until.astimezone(UTC).isoformat(timespec="minutes")
    return f"{_amount(override)} more on budget {override.budget} until {until}"


def _grid(found: Sequence[Override]) -> tables.Grid:
    """Override requests: which budget, how much until when, their state and who asked, and why."""
    columns = [
        tables.Column("Id", "number"),
        tables.Column("Budget"),
        tables.Column("Amount", "number"),
        tables.Column("Until", "date"),
        tables.Column("Status", "prose"),
        tables.Column("By", drop=2),
        tables.Column("Reason", "prose", drop=1),
    ]
    rows = []
    for o in found:
        decided = f" by {o.decided_by}" if o.decided_by else ""
        note = f"{o.reason}" + (f" / {o.decision_reason}" if o.decision_reason else "")
        rows.append(
            [
                str(o.override_id),
                o.budget,
                _amount(o),
                tables.moment(o.until, "UTC"),
                o.status + decided,
                o.user or o.requested_by,
                note if len(note) <= 60 else note[:57] + "...",
            ]
        )
    return tables.Grid(columns=columns, rows=rows)
