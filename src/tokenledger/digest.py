"""A scheduled report as a message: email text and HTML, Slack blocks, webhook JSON (see `notices`).

Plain functions over a `reports.Report` and the `schedules.Delivery` it was made for: no I/O. Every
message says which window it covers in the schedule's time zone and, for a catch-up after downtime,
how many occurrences it stands for.
"""

from __future__ import annotations

from collections.abc import Mapping
from datetime import datetime
from html import escape
from typing import Any, Final
from zoneinfo import ZoneInfo

from tokenledger import reports
from tokenledger.notices import Notice, html_document, html_table, slack_escape, slack_table
from tokenledger.schedules import Delivery

__all__ = ["report_notice"]

MAX_MESSAGE_ROWS: Final = 500  # rows an email shows; the webhook JSON carries them all
MAX_SLACK_FIELDS: Final = 10  # Slack's limit per section
_ADJECTIVE: Final = {"day": "daily", "week": "weekly", "month": "monthly"}


def _local(moment: datetime, timezone: str) -> str:
    return moment.astimezone(ZoneInfo(timezone)).strftime("%Y-%m-%d %H:%M")


def covers(delivery: Delivery, report: reports.Report) -> str:
    """What the report covers, in the schedule's time zone."""
    zone = delivery.timezone
    if delivery.view == "chargeback" and report.totals:
        return f"month {report.totals.get('period')} ({report.totals.get('timezone')})"
    if delivery.view == "budgets":
        return f"budgets as of {_local(delivery.until, zone)} {zone}"
    since, until = report.since or delivery.since, report.until or delivery.until
    return f"{_local(since, zone)} to {_local(until, zone)} {zone}"


def catch_up_note(delivery: Delivery) -> str | None:
    """For a catch-up, what it stands for; for a run-now, that it is one."""
    zone = delivery.timezone
    if delivery.kind == "manual":
        return "Run now on request, outside the schedule."
    if delivery.missed == 0 or delivery.missed_from is None:
        return None
    count = delivery.missed + 1
    return (
        f"Catch-up: no server was running when {count} occurrences of this schedule fell due, from "
        f"{_local(delivery.missed_from, zone)} to {_local(delivery.occurrence, zone)} {zone}. This one "
        f"report stands for all of them and covers the whole time since {_local(delivery.since, zone)}."
    )


def report_notice(report: reports.Report, delivery: Delivery) -> Notice:
    """The report of one scheduled run, in every form a sink sends."""
    what = f"{_ADJECTIVE[delivery.every]} {delivery.view} report"
    window = covers(delivery, report)
    note = catch_up_note(delivery)
    suffix = {"catch_up": f" (catch-up of {delivery.missed + 1})", "manual": " (run now)"}.get(
        delivery.kind, ""
    )
    subject = f"[tokenledger] {delivery.schedule}: {what}, {window}{suffix}"
    totals = report.totals or {}
    rows = [] if report.view == "summary" else report.rows
    columns = reports.columns_of(rows)
    shown = rows[:MAX_MESSAGE_ROWS]
    hidden = len(rows) - len(shown)
    more = (
        f"{hidden} more row(s) are in the webhook JSON and in `tokenledger report --view {report.view}`."
        if hidden
        else None
    )
    sent_by = (
        f"Sent by tokenledger for tenant {delivery.tenant_id}, schedule {delivery.schedule} (every "
        f"{delivery.every} at {delivery.at} {delivery.timezone}); id {delivery.id}"
    )
    return Notice(
        id=delivery.id,
        subject=subject,
        text=_text(what, delivery, window, note, totals, shown, more, report.notes, sent_by),
        html=_html(what, delivery, window, note, totals, columns, shown, more, report.notes, sent_by),
        slack_blocks=_slack(what, delivery, window, note, totals, columns, rows),
        payload={
            "type": "scheduled_report",
            "tenant_id": delivery.tenant_id,
            "schedule": delivery.schedule,
            "view": delivery.view,
            "kind": delivery.kind,
            "occurrence": delivery.occurrence.isoformat(),
            "since": delivery.since.isoformat(),
            "until": delivery.until.isoformat(),
            "timezone": delivery.timezone,
            "catch_up": None
            if delivery.kind != "catch_up" or delivery.missed_from is None
            else {"occurrences": delivery.missed + 1, "first": delivery.missed_from.isoformat()},
            "report": report.model_dump(mode="json", exclude={"text"}),
        },
    )


def _text(
    what: str,
    delivery: Delivery,
    window: str,
    note: str | None,
    totals: Mapping[str, reports.Cell],
    rows: list[dict[str, reports.Cell]],
    more: str | None,
    notes: list[str],
    sent_by: str,
) -> str:
    lines = [f"tokenledger · {what} {delivery.schedule}", f"Covers: {window}"]
    if note:
        lines += ["", note]
    if totals:
        lines += ["", "Totals:"] + [f"  {key}: {_shown(value)}" for key, value in totals.items()]
    if rows:
        lines += ["", (reports.render(rows, "markdown") or "").rstrip()]
    if more:
        lines += [more]
    if notes:
        lines += ["", *(f"- {n}" for n in notes)]
    return "\n".join([*lines, "", "-- ", sent_by]) + "\n"


def _html(
    what: str,
    delivery: Delivery,
    window: str,
    note: str | None,
    totals: Mapping[str, reports.Cell],
    columns: list[str],
    rows: list[dict[str, reports.Cell]],
    more: str | None,
    notes: list[str],
    sent_by: str,
) -> str:
    parts = [
        f'<h1 style="font-size:18px;margin:0 0 4px">{escape(delivery.schedule)}: {escape(what)}</h1>',
        f'<p style="margin:0 0 12px;color:#5f6b7a">Covers {escape(window)}</p>',
    ]
    if note:
        parts.append(
            '<p style="margin:0 0 12px;padding:8px 12px;background:#fdf0d9;border-left:4px solid #d98a00">'
            f"{escape(note)}</p>"
        )
    if totals:
        pairs = [{"total": key, "value": value} for key, value in totals.items()]
        parts.append(
            f'<h2 style="font-size:15px;margin:16px 0 6px">Totals</h2>{html_table(["total", "value"], pairs)}'
        )
    if rows:
        parts.append(f'<h2 style="font-size:15px;margin:16px 0 6px">Rows</h2>{html_table(columns, rows)}')
    if more:
        parts.append(f'<p style="color:#5f6b7a">{escape(more)}</p>')
    if notes:
        items = "".join(f"<li>{escape(n)}</li>" for n in notes)
        parts.append(f'<ul style="color:#5f6b7a;font-size:12px;padding-left:18px">{items}</ul>')
    parts.append(f'<p style="color:#8a94a3;font-size:12px;margin-top:20px">{escape(sent_by)}</p>')
    return html_document(f"{delivery.schedule}: {what}", "".join(parts))


def _slack(
    what: str,
    delivery: Delivery,
    window: str,
    note: str | None,
    totals: Mapping[str, reports.Cell],
    columns: list[str],
    rows: list[dict[str, reports.Cell]],
) -> list[dict[str, Any]]:
    header = f"{delivery.schedule}: {what}"[:150]
    blocks: list[dict[str, Any]] = [
        {"type": "header", "text": {"type": "plain_text", "text": header}},
        {"type": "section", "text": {"type": "mrkdwn", "text": slack_escape(f"Covers {window}")[:2900]}},
    ]
    if note:
        blocks.append(
            {"type": "section", "text": {"type": "mrkdwn", "text": slack_escape(f":warning: {note}")}}
        )
    fields = [
        {"type": "mrkdwn", "text": slack_escape(f"*{key}*\n{_shown(value)}")[:1900]}
        for key, value in list(totals.items())[:MAX_SLACK_FIELDS]
    ]
    if fields:
        blocks.append({"type": "section", "fields": fields})
    if rows:
        table = slack_table(columns, rows, 2_900)
        blocks.append({"type": "section", "text": {"type": "mrkdwn", "text": f"```{table}```"}})
    blocks.append(
        {
            "type": "context",
            "elements": [{"type": "mrkdwn", "text": slack_escape(f"id {delivery.id}")[:2900]}],
        }
    )
    return blocks


def _shown(value: reports.Cell) -> str:
    if value is None:
        return "-"
    if isinstance(value, bool):
        return "yes" if value else "no"
    return str(value)
