"""An alert as a message a person can act on: email text and HTML, Slack blocks, webhook JSON (see
`notices`). Plain functions over an alert (as the outbox hands it to a dispatcher) and its `AlertContext`
(what the ledger adds when it delivers: the budget's figures now, who spent, what would save): no I/O.

Every form says the crossing (or the forecast, or the spike), the limit, the spend, what remains, the days
left in the period, the top spenders along the budget's scope, the top recommendations with their savings
and, where TOKENLEDGER_PUBLIC_URL is set, a link to the dashboard. Without a context (it could not be
computed in time) an alert still goes out with its stable fields and a note saying so.

A user id appears only as `AlertContext` carries it: the ledger labels every user through
`Ledger.alert_user_labels`, and an anomaly about one user without a context names nobody.
"""

from __future__ import annotations

import json
from collections.abc import Mapping, Sequence
from datetime import datetime
from decimal import Decimal
from html import escape
from typing import Any, Final
from zoneinfo import ZoneInfo

from pydantic import Field

from tokenledger.notices import Notice, html_document, html_table, slack_escape
from tokenledger.types import Model

__all__ = [
    "AlertContext",
    "AlertFigures",
    "Recommendation",
    "Spender",
    "alert_notice",
    "describe",
    "payload",
]

STABLE_FIELDS: Final = (
    "tenant_id",
    "alert_id",
    "budget",
    "kind",
    "threshold",
    "percent_used",
    "used",
    "limit",
    "unit",
)
_CENT: Final = Decimal("0.01")


class AlertFigures(Model):
    """A budget's figures when its alert is delivered."""

    scope: str
    period: str
    timezone: str
    unit: str
    limit: Decimal
    used: Decimal
    reserved: Decimal
    remaining: Decimal
    percent_used: float
    period_start: datetime | None = None
    period_end: datetime | None = None  # None: a rolling window or the budget's whole life
    days_left: Decimal | None = None
    as_of: datetime


class Spender(Model):
    """One of the largest spenders along a dimension: `name` as the message may show it."""

    name: str
    amount: Decimal
    share: Decimal | None = None  # percent of what the window spent in the budget's scope


class Recommendation(Model):
    kind: str
    model: str
    suggestion: str
    saving_usd: Decimal
    evidence: str


class AlertContext(Model):
    """What the ledger adds to an alert when it delivers it."""

    figures: AlertFigures | None = None
    spenders_since: datetime | None = None
    spenders_until: datetime | None = None
    spent: Decimal | None = None  # all the window spent in the budget's scope (of the subject, if one)
    spenders: dict[str, list[Spender]] = Field(default_factory=dict)  # dimension -> largest first
    recommendations_since: datetime | None = None
    recommendations_until: datetime | None = None
    recommendations: list[Recommendation] = Field(default_factory=list)
    subject: str | None = None  # the user an anomaly is about, as the message may show it
    notes: list[str] = Field(default_factory=list)


# --- the sentence -----------------------------------------------------------------------------------


def amount(value: Decimal | str | int, unit: str) -> str:
    """An amount as people read it: exact dollars with at least the cents (`$10.00`, `$0.005`), or whole
    tokens with separators."""
    number = Decimal(value)
    if unit == "usd":
        places = number.normalize().as_tuple().exponent
        exact = number.normalize() if isinstance(places, int) and places < -2 else number.quantize(_CENT)
        return f"${exact:f}"
    return f"{number:,.0f} tokens" if number == number.to_integral_value() else f"{_plain(number)} tokens"


def _plain(number: Decimal) -> str:
    text = format(number.normalize(), "f")
    return "0" if text in ("-0", "") else text


def _dollars(value: Decimal) -> str:
    """A saving to the cent (the JSON keeps it exact): `$4.50`, or `<$0.01`."""
    cents = value.quantize(_CENT)
    return f"${cents}" if cents else "<$0.01"


def describe(alert: Mapping[str, Any], subject: str | None = None) -> str:
    """One sentence a person reads in Slack, an email subject or the log. `subject`: the user an anomaly
    is about, as labelled (an anomaly about a user without it says "one user")."""
    budget, unit, kind = alert["budget"], alert["unit"], alert["kind"]
    if kind == "forecast":
        return (
            f"Budget {budget} is on course to run out before its period ends: projected "
            f"{alert['percent_used']}% of {amount(alert['limit'], unit)} (used {amount(alert['used'], unit)})"
        )
    if kind == "threshold":
        return (
            f"Budget {budget} crossed {alert['threshold']}%: "
            f"{amount(alert['used'], unit)} of {amount(alert['limit'], unit)} used ({alert['percent_used']}%)"
        )
    if kind == "anomaly":
        detail = alert.get("detail") or {}
        who = ""
        if alert.get("subject"):
            who = f" by user {subject}" if subject else " by one user"
        if not detail:
            return f"Budget {budget}: unusual spend{who}"
        return (
            f"Budget {budget}: unusual spend{who}: {amount(detail['spend'], unit)} in one hour, against a "
            f"usual {amount(detail['median'], unit)} at that hour of the week"
        )
    return (
        f"Budget {budget}: {kind} alert ({amount(alert['used'], unit)} of {amount(alert['limit'], unit)} "
        "used)"
    )


def payload(alert: Mapping[str, Any], subject: str | None = None) -> dict[str, Any]:
    """The stable fields of a webhook's JSON; `id` is stable across retries so receivers can deduplicate."""
    body: dict[str, Any] = {key: alert[key] for key in STABLE_FIELDS}
    body.update(
        id=alert_id(alert),
        period_start=alert["period_start"],
        created_at=alert["created_at"],
        text=describe(alert, subject),
    )
    return _json(body)


def alert_id(alert: Mapping[str, Any]) -> str:
    return f"{alert['tenant_id']}:{alert['alert_id']}"


def _json(value: dict[str, Any]) -> dict[str, Any]:
    """Plain JSON: Decimals and times as strings (money never becomes a float)."""
    plain: dict[str, Any] = json.loads(json.dumps(value, default=str))
    return plain


# --- the message -----------------------------------------------------------------------------------


def alert_notice(
    alert: Mapping[str, Any],
    context: AlertContext | None = None,
    *,
    dashboard_url: str | None = None,
    notes: Sequence[str] = (),
) -> Notice:
    """The alert in every form a sink sends. `dashboard_url`: the dashboard's address, linked when given;
    `notes`: what the message should also say (e.g. why there is no context)."""
    context = context or AlertContext()
    all_notes = [*context.notes, *notes]
    sentence = describe(alert, context.subject)
    sent_by = f"Sent by tokenledger for tenant {alert['tenant_id']}; alert {alert_id(alert)}"
    return Notice(
        id=alert_id(alert),
        subject=f"[tokenledger] {sentence}",
        text=_text(alert, context, sentence, dashboard_url, all_notes, sent_by),
        html=_html(alert, context, sentence, dashboard_url, all_notes, sent_by),
        slack_blocks=_slack(alert, context, sentence, dashboard_url, all_notes),
        payload={
            **payload(alert, context.subject),
            "type": "alert",
            "figures": None if context.figures is None else _json(context.figures.model_dump(mode="json")),
            "spenders": _spenders_json(context),
            "recommendations": _recommendations_json(context),
            "anomaly": _anomaly_json(alert, context),
            "dashboard_url": dashboard_url,
            "notes": all_notes,
        },
    )


def _spenders_json(context: AlertContext) -> dict[str, Any] | None:
    if context.spenders_since is None:
        return None
    return _json(
        {
            "since": context.spenders_since.isoformat(),
            "until": context.spenders_until.isoformat() if context.spenders_until else None,
            "spent": context.spent,
            "by": {dim: [s.model_dump(mode="json") for s in top] for dim, top in context.spenders.items()},
        }
    )


def _recommendations_json(context: AlertContext) -> dict[str, Any] | None:
    if context.recommendations_since is None:
        return None
    return _json(
        {
            "since": context.recommendations_since.isoformat(),
            "until": context.recommendations_until.isoformat() if context.recommendations_until else None,
            "rows": [r.model_dump(mode="json") for r in context.recommendations],
        }
    )


def _anomaly_json(alert: Mapping[str, Any], context: AlertContext) -> dict[str, Any] | None:
    if alert["kind"] != "anomaly":
        return None
    detail = dict(alert.get("detail") or {})
    detail["user"] = context.subject if alert.get("subject") else None
    return _json(detail)


def _local(moment: datetime | str, zone: str) -> str:
    when = datetime.fromisoformat(moment) if isinstance(moment, str) else moment
    return when.astimezone(ZoneInfo(zone)).strftime("%Y-%m-%d %H:%M")


def _figure_lines(figures: AlertFigures) -> list[tuple[str, str]]:
    unit = figures.unit
    if figures.days_left is not None and figures.period_end is not None:
        end = f"{_local(figures.period_end, figures.timezone)} {figures.timezone}"
        ends = f"{figures.days_left} (the period ends {end})"
    elif figures.period in ("24h", "7d", "30d"):
        ends = f"none: a rolling {figures.period} window"
    else:
        ends = "none: the budget has no period end"
    return [
        ("limit", amount(figures.limit, unit)),
        ("spent", amount(figures.used, unit)),
        ("reserved", amount(figures.reserved, unit)),
        ("remaining", amount(figures.remaining, unit)),
        ("days left", ends),
    ]


def _scope_line(figures: AlertFigures) -> str:
    return (
        f"{figures.scope}, {figures.period} ({figures.timezone}), "
        f"as of {_local(figures.as_of, figures.timezone)} {figures.timezone}"
    )


def _window(since: datetime, until: datetime | None, zone: str) -> str:
    end = _local(until, zone) if until is not None else "now"
    return f"{_local(since, zone)} to {end} {zone}"


def _zone(alert: Mapping[str, Any], context: AlertContext) -> str:
    if context.figures is not None:
        return context.figures.timezone
    return str((alert.get("detail") or {}).get("timezone") or "UTC")


def _spender_text(spender: Spender, unit: str) -> str:
    share = f" ({spender.share}%)" if spender.share is not None else ""
    return f"{spender.name} {amount(spender.amount, unit)}{share}"


def _anomaly_lines(alert: Mapping[str, Any], context: AlertContext) -> list[str]:
    detail = alert.get("detail") or {}
    if alert["kind"] != "anomaly" or not detail:
        return []
    unit, zone = alert["unit"], detail.get("timezone", "UTC")
    return [
        f"Spent {amount(detail['spend'], unit)} in the hour from {_local(detail['hour_start'], zone)} to "
        f"{_local(detail['hour_end'], zone)} {zone}.",
        f"The same hour of the week in the {detail['weeks']} weeks before: median "
        f"{amount(detail['median'], unit)}, median absolute deviation {amount(detail['mad'], unit)}. A spike "
        f"is above {amount(detail['bar'], unit)} and at least {amount(detail['floor'], unit)}.",
    ]


def _unit(alert: Mapping[str, Any], context: AlertContext) -> str:
    return context.figures.unit if context.figures is not None else str(alert["unit"])


def _text(
    alert: Mapping[str, Any],
    context: AlertContext,
    sentence: str,
    dashboard_url: str | None,
    notes: list[str],
    sent_by: str,
) -> str:
    unit, zone = _unit(alert, context), _zone(alert, context)
    lines = [sentence]
    if anomaly := _anomaly_lines(alert, context):
        lines += ["", *anomaly]
    if (figures := context.figures) is not None:
        lines += ["", f"Budget {alert['budget']} ({_scope_line(figures)}):"]
        lines += [f"  {label + ':':<11} {value}" for label, value in _figure_lines(figures)]
    if context.spenders_since is not None:
        spent = f" ({amount(context.spent, unit)} in all)" if context.spent is not None else ""
        window = _window(context.spenders_since, context.spenders_until, zone)
        lines += ["", f"Top spenders, {window}{spent}:"]
        for dimension, top in context.spenders.items():
            lines.append(f"  by {dimension}: " + ", ".join(_spender_text(s, unit) for s in top))
        if not context.spenders:
            lines.append("  none: nothing was spent in the budget's scope")
    if context.recommendations_since is not None:
        window = _window(context.recommendations_since, context.recommendations_until, zone)
        lines += ["", f"Recommendations (what the traffic of {window} would have cost less):"]
        lines += [
            f"  - {r.suggestion} for {r.model} ({r.kind}): saves {_dollars(r.saving_usd)}. {r.evidence}"
            for r in context.recommendations
        ] or ["  none found"]
    if dashboard_url:
        lines += ["", f"Dashboard: {dashboard_url}"]
    if notes:
        lines += ["", "Notes:", *(f"  - {note}" for note in notes)]
    return "\n".join([*lines, "", "-- ", sent_by]) + "\n"


def _html(
    alert: Mapping[str, Any],
    context: AlertContext,
    sentence: str,
    dashboard_url: str | None,
    notes: list[str],
    sent_by: str,
) -> str:
    unit, zone = _unit(alert, context), _zone(alert, context)
    h2 = '<h2 style="font-size:15px;margin:16px 0 6px">'
    parts = [f'<h1 style="font-size:18px;margin:0 0 8px">{escape(sentence)}</h1>']
    for line in _anomaly_lines(alert, context):
        parts.append(f'<p style="margin:0 0 6px">{escape(line)}</p>')
    if (figures := context.figures) is not None:
        parts.append(f'<p style="margin:0 0 8px;color:#5f6b7a">{escape(_scope_line(figures))}</p>')
        rows = [{"figure": label, "value": value} for label, value in _figure_lines(figures)]
        parts.append(html_table(["figure", "value"], rows))
    if context.spenders_since is not None:
        spent = f" ({amount(context.spent, unit)} in all)" if context.spent is not None else ""
        window = _window(context.spenders_since, context.spenders_until, zone)
        parts.append(f"{h2}Top spenders</h2>")
        parts.append(f'<p style="margin:0 0 6px;color:#5f6b7a">{escape(window + spent)}</p>')
        rows = [
            {
                "by": dimension,
                "name": s.name,
                "spent": amount(s.amount, unit),
                "share": "" if s.share is None else f"{s.share}%",
            }
            for dimension, top in context.spenders.items()
            for s in top
        ]
        parts.append(
            html_table(["by", "name", "spent", "share"], rows)
            if rows
            else "<p>Nothing was spent in the budget's scope.</p>"
        )
    if context.recommendations_since is not None:
        window = _window(context.recommendations_since, context.recommendations_until, zone)
        parts.append(f"{h2}Recommendations</h2>")
        parts.append(
            f'<p style="margin:0 0 6px;color:#5f6b7a">What the traffic of {escape(window)} would have '
            "cost less.</p>"
        )
        rows = [
            {
                "suggestion": r.suggestion,
                "model": r.model,
                "saving_usd": _dollars(r.saving_usd),
                "evidence": r.evidence,
            }
            for r in context.recommendations
        ]
        parts.append(
            html_table(["suggestion", "model", "saving_usd", "evidence"], rows)
            if rows
            else "<p>None found.</p>"
        )
    if dashboard_url:
        parts.append(
            f'<p style="margin:16px 0"><a href="{escape(dashboard_url)}" style="color:#1f5fbf">Open the '
            f"dashboard</a> ({escape(dashboard_url)})</p>"
        )
    if notes:
        items = "".join(f"<li>{escape(note)}</li>" for note in notes)
        parts.append(f'<ul style="color:#5f6b7a;font-size:12px;padding-left:18px">{items}</ul>')
    parts.append(f'<p style="color:#8a94a3;font-size:12px;margin-top:20px">{escape(sent_by)}</p>')
    return html_document(sentence, "".join(parts))


def _slack(
    alert: Mapping[str, Any],
    context: AlertContext,
    sentence: str,
    dashboard_url: str | None,
    notes: list[str],
) -> list[dict[str, Any]]:
    unit, zone = _unit(alert, context), _zone(alert, context)

    def section(text: str) -> dict[str, Any]:
        return {"type": "section", "text": {"type": "mrkdwn", "text": slack_escape(text)[:2900]}}

    blocks: list[dict[str, Any]] = [
        {"type": "header", "text": {"type": "plain_text", "text": f"Budget {alert['budget']}"[:150]}},
        section(f":warning: {sentence}"),
    ]
    if anomaly := _anomaly_lines(alert, context):
        blocks.append(section("\n".join(anomaly)))
    if (figures := context.figures) is not None:
        fields = [
            {"type": "mrkdwn", "text": slack_escape(f"*{label}*\n{value}")[:1900]}
            for label, value in _figure_lines(figures)
        ]
        blocks.append({"type": "section", "fields": fields})
    if context.spenders_since is not None:
        window = _window(context.spenders_since, context.spenders_until, zone)
        lines = [f"*Top spenders*, {window}"]
        lines += [
            f"by {dimension}: " + ", ".join(_spender_text(s, unit) for s in top)
            for dimension, top in context.spenders.items()
        ] or ["nothing was spent in the budget's scope"]
        blocks.append(section("\n".join(lines)))
    if context.recommendations_since is not None:
        lines = ["*Recommendations*"]
        lines += [
            f"• {r.suggestion} for {r.model} ({r.kind}): saves {_dollars(r.saving_usd)}"
            for r in context.recommendations
        ] or ["none found"]
        blocks.append(section("\n".join(lines)))
    if dashboard_url:
        blocks.append(
            {
                "type": "actions",
                "elements": [
                    {
                        "type": "button",
                        "text": {"type": "plain_text", "text": "Open the dashboard"},
                        "url": dashboard_url,
                    }
                ],
            }
        )
    context_lines = [*notes, f"alert {alert_id(alert)}"][-10:]  # Slack's limit per context block
    elements = [{"type": "mrkdwn", "text": slack_escape(line)[:2900]} for line in context_lines]
    blocks.append({"type": "context", "elements": elements})
    return blocks
