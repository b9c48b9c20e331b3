"""A message for people, ready for every sink: an email (plain text and an HTML alternative), a Slack
message (blocks, with a text fallback) and a webhook's JSON, under one stable id. Plain functions, no I/O.

The HTML is for mail clients: inline styles only, no images, no scripts, no external anything, so it
reads the same with remote content blocked; every text from a user or the database is escaped. Scheduled
reports build their notices in `tokenledger.digest`; alerts can build theirs the same way.
"""

from __future__ import annotations

import hashlib
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from email.message import EmailMessage
from email.utils import formatdate
from html import escape
from typing import Any, Final

__all__ = ["Notice", "email_message", "html_document", "html_table", "slack_escape", "slack_table"]

# Slack refuses a section text over 3,000 characters and a header over 150.
SLACK_TEXT_LIMIT: Final = 2_900
SLACK_HEADER_LIMIT: Final = 150

_CELL = "padding:4px 10px;border-bottom:1px solid #e3e7ee;text-align:left;vertical-align:top"
_RIGHT = ";text-align:right"
_HEAD = "padding:4px 10px;border-bottom:2px solid #c9d0dc;text-align:left;color:#5f6b7a;font-weight:600"


@dataclass(frozen=True)
class Notice:
    """One message in every form a sink sends. `id` is stable across retries: a webhook receiver
    deduplicates on it, and the email's Message-ID is derived from it."""

    id: str
    subject: str
    text: str
    html: str
    slack_blocks: list[dict[str, Any]] = field(default_factory=list)
    payload: dict[str, Any] = field(default_factory=dict)

    def slack(self) -> dict[str, Any]:
        """A Slack incoming-webhook body: blocks, and the subject as the notification's text."""
        return (
            {"text": self.subject, "blocks": self.slack_blocks} if self.slack_blocks else {"text": self.text}
        )

    def webhook(self) -> dict[str, Any]:
        """The webhook's JSON: the payload, with the id and the subject as `text`."""
        return {"id": self.id, "text": self.subject, **self.payload}


def email_message(notice: Notice, *, sender: str, recipients: Sequence[str]) -> EmailMessage:
    """A multipart/alternative email: the plain text first, the HTML as the preferred alternative."""
    message = EmailMessage()
    message["From"] = sender
    message["To"] = ", ".join(recipients)
    message["Subject"] = notice.subject
    message["Date"] = formatdate(localtime=False)
    digest = hashlib.sha256(notice.id.encode()).hexdigest()[:32]
    message["Message-ID"] = f"<tokenledger-{digest}@tokenledger>"
    message.set_content(notice.text)
    message.add_alternative(notice.html, subtype="html")
    return message


def html_table(columns: Sequence[str], rows: Sequence[Mapping[str, object]]) -> str:
    """Rows as an HTML table with inline styles; every cell escaped, None shown empty."""
    head = "".join(f'<th style="{_HEAD}">{escape(column)}</th>' for column in columns)
    body = "".join(
        "<tr>"
        + "".join(
            f'<td style="{_CELL}{_RIGHT if _numeric(row.get(column)) else ""}">'
            f"{escape(_text(row.get(column)))}</td>"
            for column in columns
        )
        + "</tr>"
        for row in rows
    )
    return (
        '<table cellspacing="0" cellpadding="0" style="border-collapse:collapse;font-size:13px;'
        f'font-variant-numeric:tabular-nums"><thead><tr>{head}</tr></thead><tbody>{body}</tbody></table>'
    )


def html_document(title: str, body: str) -> str:
    """A whole HTML email around `body` (already escaped HTML): one column, system fonts, no images."""
    return (
        '<!doctype html><html lang="en"><head><meta charset="utf-8">'
        f"<title>{escape(title)}</title></head>"
        '<body style="margin:0;padding:16px;background:#ffffff;color:#1d2330;'
        "font:14px/1.45 -apple-system,'Segoe UI',Roboto,Helvetica,Arial,sans-serif\">"
        f'<div style="max-width:960px">{body}</div></body></html>'
    )


def slack_escape(text: str) -> str:
    """Text for Slack's mrkdwn: `&`, `<` and `>` as entities, so no value can become a link or a
    mention (`<!channel>`)."""
    return text.replace("&", "&amp;").replace("<", "&lt;").replace(">", "&gt;")


def slack_table(columns: Sequence[str], rows: Sequence[Mapping[str, object]], limit: int) -> str:
    """Rows as an aligned, fixed-width table (escaped for mrkdwn) of whole lines within about `limit`
    characters, for a Slack code block; a last line says how many rows did not fit."""
    widths = {c: max([len(c), *(len(_text(row.get(c))) for row in rows)]) for c in columns}
    lines = ["  ".join(column.ljust(widths[column]) for column in columns).rstrip()]
    lines += ["  ".join(_text(row.get(c)).ljust(widths[c]) for c in columns).rstrip() for row in rows]
    shown: list[str] = []
    size = 0
    for line in lines:
        size += len(slack_escape(line)) + 1
        if size > limit - 40:  # room for the note
            shown.append(f"… {len(lines) - len(shown)} more row(s)")
            break
        shown.append(line)
    return slack_escape("\n".join(shown))


def _numeric(value: object) -> bool:
    """Numbers (and decimal strings, as money travels) align right."""
    if isinstance(value, bool) or value is None:
        return False
    if isinstance(value, int | float):
        return True
    text = str(value)
    return bool(text) and text.replace(".", "", 1).lstrip("-").isdigit()


def _text(value: object) -> str:
    if value is None:
        return ""
    if isinstance(value, bool):
        return "yes" if value else "no"
    return str(value)
