"""`tokenledger schedule add | list | run-now | delete`: scheduled reports from the shell.

Acts as the configured local principal (admin of `default` unless TOKENLEDGER_TENANT / ROLE say
otherwise). A running `tokenledger serve` delivers the occurrences; `run-now` also tries to deliver its
run from here at once, through the sinks configured in this shell (TOKENLEDGER_ALERT_SMTP, ...).
"""

from __future__ import annotations

import argparse
import os
import sys
from collections.abc import Sequence
from typing import Any, get_args

import anyio

from tokenledger.cli import tables
from tokenledger.cli.ledger_cmds import _run, print_json
from tokenledger.ledger import Ledger
from tokenledger.schedules import Schedule, ScheduleSpec, ScheduleView, destination
from tokenledger.types import Principal

# The environment variable that configures each destination's sinks (the alert sinks').
SINK_SETTINGS = {
    "email": "TOKENLEDGER_ALERT_SMTP",
    "slack": "TOKENLEDGER_ALERT_SLACK_WEBHOOK",
    "webhook": "TOKENLEDGER_ALERT_WEBHOOK",
}


def register(subparsers: Any) -> None:
    schedule = subparsers.add_parser(
        "schedule",
        help="reports delivered every day, week or month by email, Slack or webhook",
        description=(
            "Scheduled reports: a running `tokenledger serve` delivers each occurrence once (any number of "
            "servers share the work), at the local time in the schedule's time zone; after downtime, one "
            "catch-up report stands for the missed occurrences. Sinks are the alert sinks: "
            + ", ".join(f"{kind} uses {name}" for kind, name in SINK_SETTINGS.items())
            + "."
        ),
    )
    actions = schedule.add_subparsers(dest="action", metavar="ACTION", required=True)
    add = actions.add_parser("add", help="add a scheduled report")
    add.add_argument("name", help="letters, digits, _ . -")
    add.add_argument("--view", default="summary", help=" | ".join(get_args(ScheduleView)))
    add.add_argument("--every", default="day", help="day, week (Mondays) or month (the 1st)")
    add.add_argument("--at", default="08:00", help="local time HH:MM (default 08:00)")
    add.add_argument("--timezone", default="UTC", help="IANA zone of --at, e.g. Europe/Paris")
    add.add_argument("--to", required=True, help="email, email:ADDRESS, slack or webhook")
    add.add_argument(
        "--by", help="usage: the grouping (default model); chargeback: team project feature user"
    )
    add.add_argument("--json", action="store_true")
    add.set_defaults(handler=_run(add_command))
    lister = actions.add_parser("list", help="the scheduled reports, their next and last runs")
    lister.add_argument("--json", action="store_true")
    lister.set_defaults(handler=_run(list_command))
    run_now = actions.add_parser("run-now", help="deliver a schedule's report now (the last day/week/month)")
    run_now.add_argument("name")
    run_now.set_defaults(handler=_run(run_now_command))
    delete = actions.add_parser("delete", help="delete a scheduled report")
    delete.add_argument("name")
    delete.set_defaults(handler=_run(delete_command))


async def add_command(ledger: Ledger, principal: Principal, args: argparse.Namespace) -> int:
    spec = ScheduleSpec.model_validate(
        {
            "name": args.name,
            "view": args.view,
            "every": args.every,
            "at": args.at,
            "timezone": args.timezone,
            "to": args.to,
            "by": args.by,
        }
    )
    added = await ledger.add_schedule(spec, principal)
    if args.json:
        print_json(added)
    else:
        print(f"added schedule {added.name}: next {added.next_run_at.isoformat(timespec='minutes')}")
    kind, _ = destination(added.to)
    if not os.environ.get(SINK_SETTINGS[kind], "").strip():
        print(
            f"note: {SINK_SETTINGS[kind]} is not set here; the server that delivers needs it",
            file=sys.stderr,
        )
    return 0


async def list_command(ledger: Ledger, principal: Principal, args: argparse.Namespace) -> int:
    found = await ledger.list_schedules(principal)
    if args.json:
        print_json(found)
        return 0
    tables.show(tables.console(), _grid(found))
    return 0


def _grid(found: Sequence[Schedule]) -> tables.Grid:
    """Schedules: what each sends, when and where, its next occurrence and how its last one went."""
    columns = [
        tables.Column("Name"),
        tables.Column("View"),
        tables.Column("When", "prose"),
        tables.Column("To", drop=2),
        tables.Column("Next", "date"),
        tables.Column("Last", "date", drop=1),
        tables.Column("State", "prose"),
    ]
    rows = []
    for s in found:
        last = tables.moment(s.last_occurrence, s.timezone) if s.last_occurrence else "-"
        state = (
            "delivered" if s.last_delivered_at else (s.last_error or "pending") if s.last_occurrence else "-"
        )
        rows.append(
            [
                s.name,
                s.view + (f" by {s.by}" if s.by else ""),
                f"every {s.every} at {s.at} {s.timezone}",
                s.to,
                tables.moment(s.next_run_at, s.timezone),
                last,
                state,
            ]
        )
    return tables.Grid(columns=columns, rows=rows)


async def run_now_command(ledger: Ledger, principal: Principal, args: argparse.Namespace) -> int:
    from tokenledger.alerts import sinks_from_env
    from tokenledger.scheduled import ScheduleDispatcher

    run = await ledger.run_schedule_now(args.name, principal)
    sinks = await anyio.to_thread.run_sync(sinks_from_env)
    delivered = await ScheduleDispatcher(ledger, sinks).run_once(run=(principal.tenant_id, run.run_id))
    if delivered:
        print(f"delivered {args.name} ({run.since.isoformat(timespec='minutes')} to now)")
    else:
        print(f"queued {args.name}: a running server delivers it (no sink here could)")
    return 0


async def delete_command(ledger: Ledger, principal: Principal, args: argparse.Namespace) -> int:
    deleted = await ledger.delete_schedule(args.name, principal)
    print(f"deleted schedule {deleted.name}")
    return 0
