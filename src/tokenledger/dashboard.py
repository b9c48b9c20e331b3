"""The web dashboard's content and its HTML: plain functions over pydantic models, no I/O.

`Dashboard` is what one principal may see (`Ledger.dashboard` fills it: a viewer or admin sees its
tenant, a member its own user); `render` turns it into one self-contained HTML page: inline CSS, charts
as inline SVG, no script, no external font, stylesheet or image, so it loads with no internet and
under a `default-src 'none'` Content-Security-Policy. Every text that came from a user (budget, model,
project and user names, scopes, reasons) is HTML-escaped; numbers carry `data-` attributes with their
exact values so tests (and scrapers) read them without parsing formatted text.
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from datetime import UTC, date, datetime, timedelta
from decimal import ROUND_HALF_UP, Decimal
from html import escape
from typing import Final
from zoneinfo import ZoneInfo

from pydantic import Field

from tokenledger.types import BudgetState, FxRate, Model, Override, Role, UsageRow

__all__ = [
    "Chargeback",
    "DailySpend",
    "Dashboard",
    "Decision",
    "OpenAlert",
    "daily_series",
    "render",
    "render_chargeback",
    "render_login",
    "render_message",
    "window_start",
]

TITLE: Final = "tokenledger"
CHART_WIDTH: Final = 760
CHART_HEIGHT: Final = 220


class DailySpend(Model):
    day: date
    cost_usd: Decimal
    total_tokens: int
    requests: int


class Decision(Model):
    """A denial, or what a soft or shadow budget would have denied."""

    decided_at: datetime
    budget: str | None
    decision: str  # "deny" or "would_deny"
    reason: str
    enforcement: str | None = None
    user: str | None = None
    model: str | None = None


class SinkDelivery(Model):
    """An alert's delivery to one sink (tl_alert_delivery)."""

    sink: str
    delivered_at: datetime | None = None
    attempts: int = 0
    failed: bool = False  # the last attempt failed
    gave_up: bool = False  # no more attempts

    @property
    def state(self) -> str:
        """delivered, failed (given up), retrying (failed, trying again), sending (claimed) or pending."""
        if self.delivered_at is not None:
            return "delivered"
        if self.gave_up:
            return "failed"
        if self.failed:
            return "retrying"
        return "sending" if self.attempts else "pending"


class OpenAlert(Model):
    """A threshold, forecast or anomaly alert of a budget's current period."""

    alert_id: int
    budget: str
    kind: str
    threshold: Decimal
    percent_used: Decimal
    used: Decimal
    limit: Decimal
    unit: str
    period_start: datetime
    created_at: datetime
    delivered_at: datetime | None = None  # once every sink has it
    deliveries: list[SinkDelivery] = Field(default_factory=list)  # one per sink a dispatcher took it for
    subject: str = ""  # an anomaly about one user under a shared budget: 'user:X'


class Dashboard(Model):
    tenant: str
    role: Role
    user: str | None = None  # set for a member: everything below is that user's alone
    timezone: str
    since: datetime
    until: datetime
    budgets: list[BudgetState] = Field(default_factory=list)
    daily: list[DailySpend] = Field(default_factory=list)
    totals: UsageRow
    top_users: list[UsageRow] = Field(default_factory=list)
    top_projects: list[UsageRow] = Field(default_factory=list)
    top_models: list[UsageRow] = Field(default_factory=list)
    decisions: list[Decision] = Field(default_factory=list)
    alerts: list[OpenAlert] = Field(default_factory=list)
    # Every amount of money above is in this currency: USD as recorded, or converted at fx_rates (each
    # day's and group's cost at its date's rate, a usd budget's at its period start's).
    currency: str = "USD"
    fx_rates: list[FxRate] = Field(default_factory=list)
    overrides: list[Override] = Field(default_factory=list)  # an admin's tenant's, a member's own


Cells = dict[str, str | int | float | bool | None]


class Chargeback(Model):
    """A chargeback report's rows (lines, subtotals, total), totals and notes, as `Ledger.report` made them
    for one principal (a member: its own user's lines only)."""

    tenant: str
    role: Role
    user: str | None = None
    since: datetime
    until: datetime
    rows: list[Cells] = Field(default_factory=list)
    totals: Cells = Field(default_factory=dict)
    notes: list[str] = Field(default_factory=list)


# --- the data ----------------------------------------------------------------------------------


def window_start(now: datetime, days: int, timezone: str) -> datetime:
    """Local midnight `days - 1` days before `now`'s day in `timezone`: a window of `days` whole days."""
    zone = ZoneInfo(timezone)
    first = now.astimezone(zone).date() - timedelta(days=days - 1)
    return datetime(first.year, first.month, first.day, tzinfo=zone).astimezone(UTC)


def daily_series(rows: Iterable[UsageRow], *, since: datetime, days: int, timezone: str) -> list[DailySpend]:
    """One entry per day of the window (zeros where nothing was used), from usage rows by day bucket."""
    zone = ZoneInfo(timezone)
    first = since.astimezone(zone).date()
    by_day = {row.bucket.astimezone(zone).date(): row for row in rows if row.bucket is not None}
    series = []
    for offset in range(days):
        day = first + timedelta(days=offset)
        row = by_day.get(day)
        series.append(
            DailySpend(
                day=day,
                cost_usd=row.cost_usd if row else Decimal(0),
                total_tokens=row.total_tokens if row else 0,
                requests=row.requests if row else 0,
            )
        )
    return series


# --- formatting --------------------------------------------------------------------------------


def _plain(value: Decimal | int) -> str:
    """An exact number for a data- attribute: no exponent, no trailing zeros."""
    if isinstance(value, int):
        return str(value)
    normalized = value.normalize()
    return format(normalized if normalized != 0 else Decimal(0), "f")


def usd(value: Decimal, currency: str = "USD") -> str:
    """Money for people: cents from 1 up; below, four decimals and at least two significant digits (a
    cheap model's call costs millionths of a dollar, and spend must never read as $0.0000); `$` for USD,
    the ISO code before the amount for another currency."""
    sign = "$" if currency == "USD" else f"{currency} "
    if value == 0:
        return f"{sign}0"
    if abs(value) >= 1:
        places = 2
    else:
        first_digit = -abs(value).adjusted()  # 0.0000042 -> 6: its first significant digit's place
        places = max(4, first_digit + 1)
    shown = value.quantize(Decimal(1).scaleb(-places), rounding=ROUND_HALF_UP)
    return f"{sign}{shown:,f}"


def tokens(value: Decimal | int) -> str:
    return f"{int(value):,}"


def amount(value: Decimal, unit: str, currency: str = "USD") -> str:
    return usd(value, currency) if unit == "usd" else f"{tokens(value)} tokens"


def _moment(value: datetime | None, zone: ZoneInfo) -> str:
    if value is None:
        return "—"
    return value.astimezone(zone).strftime("%Y-%m-%d %H:%M")


def _until(value: datetime | None, now: datetime) -> str:
    if value is None:
        return "never"
    seconds = int((value - now).total_seconds())
    if seconds <= 0:
        return "now"
    days, rest = divmod(seconds, 86_400)
    hours, rest = divmod(rest, 3600)
    minutes = rest // 60
    if days:
        return f"in {days}d {hours}h"
    if hours:
        return f"in {hours}h {minutes}m"
    return f"in {max(minutes, 1)}m"


def _attrs(**values: object) -> str:
    """` data-x="..."` attributes, escaped; names use `-` for `_`."""
    return "".join(
        f' data-{name.replace("_", "-")}="{escape(str(value), quote=True)}"'
        for name, value in values.items()
        if value is not None
    )


# --- the page ----------------------------------------------------------------------------------

_CSS: Final = """
:root { color-scheme: light; --ink:#1d2330; --muted:#5f6b7a; --line:#e3e7ee; --bg:#f6f7fb; --card:#fff;
        --accent:#3a6df0; --warn:#d98a00; --bad:#d33c3c; --ok:#2f9e5b; }
* { box-sizing: border-box; }
body { margin:0; font: 14px/1.45 system-ui, -apple-system, "Segoe UI", Roboto, "Helvetica Neue", Arial,
       sans-serif; color:var(--ink); background:var(--bg); }
header { display:flex; align-items:center; justify-content:space-between; padding:14px 28px;
         background:#141a26; color:#fff; }
header h1 { font-size:18px; margin:0; letter-spacing:.3px; }
header .who { color:#c6cfdd; font-size:13px; }
header form { display:inline; margin-left:14px; }
header button { background:transparent; color:#c6cfdd; border:1px solid #4a5568; border-radius:6px;
                padding:3px 10px; cursor:pointer; font:inherit; }
main { max-width:1220px; margin:0 auto; padding:20px 28px 40px; }
.cards { display:grid; grid-template-columns:repeat(4, 1fr); gap:14px; margin-bottom:18px; }
.card, section { background:var(--card); border:1px solid var(--line); border-radius:10px; }
.card { padding:14px 16px; }
.card .label { color:var(--muted); font-size:12px; text-transform:uppercase; letter-spacing:.6px; }
.card .value { font-size:24px; font-weight:600; margin-top:4px; font-variant-numeric:tabular-nums; }
section { padding:14px 18px 16px; margin-bottom:18px; }
section h2 { font-size:15px; margin:0 0 10px; }
section h2 small { color:var(--muted); font-weight:400; margin-left:6px; }
.grid3 { display:grid; grid-template-columns:repeat(3, 1fr); gap:18px; }
.grid3 section { margin-bottom:0; }
.grid2 { display:grid; grid-template-columns:1fr 1fr; gap:18px; margin-bottom:18px; }
.grid2 section { margin-bottom:0; }
table { width:100%; border-collapse:collapse; font-variant-numeric:tabular-nums; }
th { text-align:left; color:var(--muted); font-weight:500; font-size:12px;
     border-bottom:1px solid var(--line); padding:6px 8px; }
td { border-bottom:1px solid var(--line); padding:7px 8px; vertical-align:middle; }
tr:last-child td { border-bottom:none; }
td.num, th.num { text-align:right; }
.name { font-weight:600; overflow-wrap:anywhere; }
.sub { color:var(--muted); font-size:12px; overflow-wrap:anywhere; }
.when { white-space:nowrap; }
.bar { background:#edf0f5; border-radius:4px; height:8px; width:140px; overflow:hidden; margin-top:4px; }
.bar span { display:block; height:100%; background:var(--accent); }
.bar.warning span { background:var(--warn); } .bar.exceeded span { background:var(--bad); }
.pill { display:inline-block; border-radius:10px; padding:1px 8px; font-size:12px; }
.pill.ok { background:#e3f4ea; color:#1f6e40; } .pill.warning { background:#fdf0d9; color:#8a5800; }
.pill.exceeded, .pill.deny { background:#fbe4e4; color:#a32626; }
.pill.would_deny, .pill.pending { background:#eef0f5; color:#4a5568; }
.pill.delivered { background:#e3f4ea; color:#1f6e40; }
.pill.retrying, .pill.sending { background:#fdf3e1; color:#8a5a00; }
.pill.failed { background:#fde8e8; color:#9b1c1c; }
.empty { color:var(--muted); padding:6px 0; }
svg text { font-size:11px; fill:var(--muted); }
svg rect.day { fill:var(--accent); }
svg line.grid { stroke:var(--line); }
footer { color:var(--muted); font-size:12px; text-align:center; }
"""


def _page(title: str, body: str, css: str = "") -> str:
    return (
        "<!doctype html>\n"
        '<html lang="en"><head><meta charset="utf-8">'
        '<meta name="viewport" content="width=device-width, initial-scale=1">'
        f"<title>{escape(title)}</title><style>{_CSS}{css}</style></head>"
        f"<body>{body}</body></html>\n"
    )


def render(data: Dashboard, *, now: datetime | None = None, csrf: str | None = None) -> str:
    """The dashboard page for `data`; an admin's page (with `csrf`, its form token) approves and denies
    override requests."""
    now = now or datetime.now(UTC)
    zone = ZoneInfo(data.timezone)
    who = f"tenant {data.tenant} · {data.role}" + (f" · user {data.user}" if data.user else "")
    scope = "your usage" if data.user else "this tenant"
    header = (
        f'<header><h1>{TITLE}</h1><div class="who"{_attrs(tenant=data.tenant, role=data.role)}>'
        f"{escape(who)}"
        '<form method="post" action="/dashboard/logout"><button type="submit">Sign out</button></form>'
        "</div></header>"
    )
    days = len(data.daily)
    currency = data.currency
    parts = [
        _cards(data, days),
        _budgets(data.budgets, zone, now, currency),
        f'<section id="spend"><h2>Spend per day<small>last {days} days, {escape(data.timezone)}, '
        f"{escape(scope)}</small></h2>{spend_chart(data.daily, currency)}</section>",
        _tops(data),
        '<div class="grid2">',
        _decisions(data.decisions, zone),
        _alerts(data.alerts, zone, currency),
        "</div>",
        _overrides(data, zone, csrf) if data.role != "viewer" else "",
        _fx_note(data),
        f"<footer>Generated {escape(_moment(now, zone))} {escape(data.timezone)} · "
        f"window {escape(_moment(data.since, zone))} – {escape(_moment(data.until, zone))}</footer>",
    ]
    return _page(f"{TITLE} — {data.tenant}", header + "<main>" + "".join(parts) + "</main>", _OVERRIDE_CSS)


def _fx_note(data: Dashboard) -> str:
    """Which rates turned the recorded USD into the currency shown."""
    if data.currency == "USD":
        return ""
    rates = ", ".join(
        f"{_plain(rate.rate)} from {rate.effective_from.date().isoformat()}" for rate in data.fx_rates
    )
    return (
        f'<p class="sub" id="fx" data-currency="{escape(data.currency)}">Amounts in {escape(data.currency)} '
        f"at this tenant's rates ({escape(data.currency)} per USD: {escape(rates or 'none needed')}); each "
        "day's cost at its date's rate, each usd budget at its period start's. Costs are recorded in USD.</p>"
    )


def _cards(data: Dashboard, days: int) -> str:
    totals = data.totals
    at_risk = sum(1 for b in data.budgets if b.status != "ok")
    window = f" · {days} days"
    cards = [
        ("Spend" + window, usd(totals.cost_usd, data.currency), "total-cost", _plain(totals.cost_usd)),
        ("Tokens" + window, tokens(totals.total_tokens), "total-tokens", _plain(totals.total_tokens)),
        ("Requests" + window, tokens(totals.requests), "total-requests", _plain(totals.requests)),
        ("Budgets at warning or over", str(at_risk), "budgets-at-risk", str(at_risk)),
    ]
    html = "".join(
        f'<div class="card"><div class="label">{escape(label)}</div>'
        f'<div class="value" data-metric="{name}" data-value="{escape(value)}">{escape(shown)}</div></div>'
        for label, shown, name, value in cards
    )
    unpriced = ""
    if totals.unpriced_requests:
        count = totals.unpriced_requests
        calls = "1 call" if count == 1 else f"{count:,} calls"
        unpriced = (
            f'<p class="sub" data-unpriced="{count}">{calls} used unpriced models: '
            "their cost is unknown, not counted as $0.</p>"
        )
    return f'<div class="cards">{html}</div>{unpriced}'


def _budgets(budgets: Sequence[BudgetState], zone: ZoneInfo, now: datetime, currency: str = "USD") -> str:
    if not budgets:
        return '<section id="budgets"><h2>Budgets</h2><p class="empty">No budgets apply.</p></section>'
    rows = []
    for b in budgets:
        percent = max(0.0, min(b.percent_used, 100.0))
        limit_note = f"limit {amount(b.limit, b.unit, currency)}"
        if b.hard_limit is not None:
            limit_note += f", hard {amount(b.hard_limit, b.unit, currency)}"
        if b.override:
            limit_note += f", {amount(b.override, b.unit, currency)} of it by override"
        attrs = _attrs(
            budget=b.name,
            unit=b.unit,
            used=_plain(b.used),
            limit=_plain(b.limit),
            reserved=_plain(b.reserved),
            remaining=_plain(b.remaining),
            percent=b.percent_used,
            status=b.status,
            resets_at=b.resets_at.isoformat() if b.resets_at else None,
        )
        rows.append(
            f"<tr{attrs}>"
            f'<td><div class="name">{escape(b.name)}</div><div class="sub">{escape(b.scope)} · '
            f"{escape(b.enforcement)}</div></td>"
            f'<td>{escape(b.period)}<div class="sub">{escape(b.timezone)}</div></td>'
            f'<td class="num">{escape(amount(b.used, b.unit, currency))}'
            f'<div class="bar {escape(b.status)}"><span style="width:{percent:.1f}%"></span></div>'
            f'<div class="sub">{escape(limit_note)}</div></td>'
            f'<td class="num">{escape(amount(b.reserved, b.unit, currency))}</td>'
            f'<td class="num">{escape(amount(b.remaining, b.unit, currency))}</td>'
            f'<td class="num">{b.percent_used:.1f}%</td>'
            f'<td><span class="pill {escape(b.status)}">{escape(b.status)}</span></td>'
            f'<td>{escape(_until(b.resets_at, now))}<div class="sub">'
            f"{escape(_moment(b.resets_at, zone))}</div></td></tr>"
        )
    head = (
        '<tr><th>Budget</th><th>Period</th><th class="num">Used</th><th class="num">Reserved</th>'
        '<th class="num">Remaining</th><th class="num">%</th><th>Status</th><th>Resets</th></tr>'
    )
    return f'<section id="budgets"><h2>Budgets</h2><table>{head}{"".join(rows)}</table></section>'


def spend_chart(daily: Sequence[DailySpend], currency: str = "USD") -> str:
    """Daily cost as an inline SVG bar chart, with a title (tooltip) per bar."""
    if not daily:
        return '<p class="empty">No days in this window.</p>'
    left, right, top, bottom = 56, 8, 10, 26
    width, height = CHART_WIDTH, CHART_HEIGHT
    plot_w, plot_h = width - left - right, height - top - bottom
    peak = max((d.cost_usd for d in daily), default=Decimal(0))
    scale = _nice_ceiling(peak)
    slot = plot_w / len(daily)
    bar_w = max(slot * 0.72, 1.0)
    parts = [
        f'<svg id="spend-chart" viewBox="0 0 {width} {height}" width="100%" role="img" '
        f'aria-label="Spend per day"{_attrs(max_cost=_plain(peak), days=len(daily))}>'
    ]
    for step in range(5):
        value = scale * step / 4
        y = top + plot_h - plot_h * step / 4
        parts.append(f'<line class="grid" x1="{left}" x2="{width - right}" y1="{y:.1f}" y2="{y:.1f}"/>')
        parts.append(
            f'<text x="{left - 6}" y="{y + 4:.1f}" text-anchor="end">{escape(usd(value, currency))}</text>'
        )
    for index, day in enumerate(daily):
        share = float(day.cost_usd / scale) if scale > 0 else 0.0
        bar_h = plot_h * share
        x = left + slot * index + (slot - bar_w) / 2
        y = top + plot_h - bar_h
        tip = (
            f"{day.day.isoformat()}: {usd(day.cost_usd, currency)} · {tokens(day.total_tokens)} tokens · "
            f"{day.requests} requests"
        )
        attrs = _attrs(
            day=day.day.isoformat(), cost=_plain(day.cost_usd), tokens=day.total_tokens, requests=day.requests
        )
        parts.append(
            f'<rect class="day" x="{x:.1f}" y="{y:.1f}" width="{bar_w:.1f}" height="{bar_h:.1f}" rx="2"'
            f"{attrs}><title>{escape(tip)}</title></rect>"
        )
    labelled = sorted({0, len(daily) // 2, len(daily) - 1})
    for index in labelled:
        x = left + slot * index + slot / 2
        label = daily[index].day.strftime("%b %d")
        parts.append(f'<text x="{x:.1f}" y="{height - 8}" text-anchor="middle">{escape(label)}</text>')
    parts.append("</svg>")
    return "".join(parts)


def _nice_ceiling(value: Decimal) -> Decimal:
    """The smallest of 1, 2, 2.5, 5 times a power of ten at or above `value` (a clean axis top)."""
    if value <= 0:
        return Decimal("0.01")
    exponent = value.adjusted()
    for power in (exponent - 1, exponent, exponent + 1):
        for step in (Decimal(1), Decimal(2), Decimal("2.5"), Decimal(5)):
            candidate = step.scaleb(power)
            if candidate >= value:
                return candidate
    return Decimal(10).scaleb(exponent + 1)


def _tops(data: Dashboard) -> str:
    groups = [("project", "Top projects", data.top_projects), ("model", "Top models", data.top_models)]
    if data.user is None:
        groups.insert(0, ("user", "Top users", data.top_users))
    sections = "".join(_top_table(key, title, rows, data.currency) for key, title, rows in groups)
    layout = "grid3" if len(groups) == 3 else "grid2"
    return f'<div class="{layout}" style="margin-bottom:18px">{sections}</div>'


def _top_table(key: str, title: str, rows: Sequence[UsageRow], currency: str = "USD") -> str:
    if not rows:
        body = '<p class="empty">No usage in this window.</p>'
    else:
        lines = []
        for row in rows:
            name = row.keys.get(key)
            shown = name if name is not None else "(none)"
            attrs = _attrs(
                group=key,
                key=shown,
                cost=_plain(row.cost_usd),
                tokens=row.total_tokens,
                requests=row.requests,
            )
            lines.append(
                f"<tr{attrs}>"
                f'<td class="name">{escape(shown)}</td>'
                f'<td class="num">{escape(usd(row.cost_usd, currency))}</td>'
                f'<td class="num">{escape(tokens(row.total_tokens))}</td>'
                f'<td class="num">{escape(tokens(row.requests))}</td></tr>'
            )
        head = (
            f'<tr><th>{escape(key)}</th><th class="num">Cost</th><th class="num">Tokens</th>'
            '<th class="num">Calls</th></tr>'
        )
        body = f"<table>{head}{''.join(lines)}</table>"
    return f'<section id="top-{key}"><h2>{escape(title)}</h2>{body}</section>'


def _decisions(decisions: Sequence[Decision], zone: ZoneInfo) -> str:
    if not decisions:
        body = '<p class="empty">No denials.</p>'
    else:
        lines = [
            f"<tr{_attrs(decision=d.decision, blocked_by=d.budget or '', reason=d.reason)}>"
            f'<td class="when">{escape(_moment(d.decided_at, zone))}</td>'
            f'<td class="name">{escape(d.budget or "—")}</td>'
            f'<td><span class="pill {escape(d.decision)}">{escape(d.decision.replace("_", " "))}</span>'
            f'<div class="sub">{escape(d.reason)}</div></td>'
            f'<td>{escape(d.user or "—")}<div class="sub">{escape(d.model or "")}</div></td></tr>'
            for d in decisions
        ]
        head = "<tr><th>When</th><th>Budget</th><th>Decision</th><th>User / model</th></tr>"
        body = f"<table>{head}{''.join(lines)}</table>"
    title = "<h2>Recent denials<small>and would-deny of soft and shadow budgets</small></h2>"
    return f'<section id="denials">{title}{body}</section>'


def _deliveries(alert: OpenAlert) -> str:
    """One pill per sink with its state; without a sink row yet (no dispatcher ran), the alert's own."""
    if not alert.deliveries:
        state = "delivered" if alert.delivered_at is not None else "pending"
        return f'<span class="pill {state}">{state}</span>'
    return " ".join(
        f'<span class="pill {d.state}"{_attrs(sink=d.sink, delivery=d.state)}>'
        f"{escape(d.sink)}: {d.state}</span>"
        for d in alert.deliveries
    )


def _alerts(alerts: Sequence[OpenAlert], zone: ZoneInfo, currency: str = "USD") -> str:
    if not alerts:
        body = '<p class="empty">No alerts in the current periods.</p>'
    else:
        lines = []
        for a in alerts:
            what = {
                "forecast": f"forecast {a.percent_used}%",
                "anomaly": f"unusual hourly spend{' by ' + a.subject if a.subject else ''}",
            }.get(a.kind, f"crossed {_plain(a.threshold)}%")
            attrs = _attrs(
                alert=a.alert_id, alert_budget=a.budget, kind=a.kind, threshold=_plain(a.threshold)
            )
            lines.append(
                f"<tr{attrs}>"
                f'<td class="when">{escape(_moment(a.created_at, zone))}</td>'
                f'<td class="name">{escape(a.budget)}</td>'
                f'<td>{escape(what)}<div class="sub">{escape(amount(a.used, a.unit, currency))} of '
                f"{escape(amount(a.limit, a.unit, currency))}</div></td>"
                f"<td>{_deliveries(a)}</td></tr>"
            )
        head = "<tr><th>When</th><th>Budget</th><th>Alert</th><th>Delivery</th></tr>"
        body = f"<table>{head}{''.join(lines)}</table>"
    return f'<section id="alerts"><h2>Open alerts<small>current periods</small></h2>{body}</section>'


_OVERRIDE_CSS: Final = """
form.decide { display:flex; gap:6px; flex-wrap:wrap; }
form.decide input { font:inherit; padding:3px 6px; border:1px solid var(--line); border-radius:6px;
    min-width:180px; }
form.decide button { font:inherit; padding:3px 10px; border:1px solid var(--line); border-radius:6px;
    background:#fff; cursor:pointer; }
.pill.approved { background:#e3f4ea; color:#1f6e40; } .pill.denied { background:#fbe4e4; color:#a32626; }
.pill.expired, .pill.cancelled { background:#eef0f5; color:#4a5568; }
"""


def _overrides(data: Dashboard, zone: ZoneInfo, csrf: str | None) -> str:
    """Override requests: a member's own; an admin's tenant's, each pending one with approve and deny
    (a POST to /dashboard/overrides carrying the page's form token)."""
    deciding = data.role == "admin" and csrf is not None
    if not data.overrides:
        body = '<p class="empty">No override requests.</p>'
    else:
        lines = []
        for o in data.overrides:
            attrs = _attrs(override=o.override_id, override_budget=o.budget, override_status=o.status)
            decided = ""
            if o.decided_by:
                decided = f"{o.status} by {o.decided_by}" + (
                    f": {o.decision_reason}" if o.decision_reason else ""
                )
            action = ""
            if deciding and o.status == "pending":
                action = (
                    '<form class="decide" method="post" action="/dashboard/overrides">'
                    f'<input type="hidden" name="csrf" value="{escape(csrf or "", quote=True)}">'
                    f'<input type="hidden" name="id" value="{o.override_id}">'
                    '<input name="reason" maxlength="500" placeholder="reason (required to deny)">'
                    '<button type="submit" name="action" value="approve">Approve</button>'
                    '<button type="submit" name="action" value="deny">Deny</button></form>'
                )
            lines.append(
                f"<tr{attrs}>"
                f'<td class="when">{escape(_moment(o.requested_at, zone))}</td>'
                f'<td class="name">{escape(o.budget)}<div class="sub">{escape(o.scope)}</div></td>'
                f'<td class="num">+{escape(amount(o.amount, o.unit))}</td>'
                f'<td class="when">{escape(_moment(o.until, zone))}</td>'
                f'<td>{escape(o.user or o.requested_by)}<div class="sub">{escape(o.reason)}</div></td>'
                f'<td><span class="pill {escape(o.status)}">{escape(o.status)}</span>'
                f'<div class="sub">{escape(decided)}</div>{action}</td></tr>'
            )
        head = (
            '<tr><th>Asked</th><th>Budget</th><th class="num">More</th><th>Until</th><th>Who / why</th>'
            "<th>State</th></tr>"
        )
        body = f"<table>{head}{''.join(lines)}</table>"
    whose = "this tenant's" if data.role == "admin" else "yours"
    return f'<section id="overrides"><h2>Override requests<small>{whose}</small></h2>{body}</section>'


# --- the chargeback statement ------------------------------------------------------------------

_PRINT_CSS: Final = """
form.pick { display:flex; gap:10px; align-items:end; flex-wrap:wrap; }
form.pick label { display:block; color:var(--muted); font-size:12px; }
form.pick input, form.pick select, form.pick button { font:inherit; padding:5px 8px;
    border:1px solid var(--line); border-radius:6px; background:#fff; }
tr.subtotal td { font-weight:600; border-top:2px solid var(--line); }
section.statement { break-inside:avoid; page-break-inside:avoid; }
@media print {
  body { background:#fff; font-size:12px; }
  header, .noprint { display:none; }
  main { padding:0; max-width:none; }
  .card, section { border:1px solid #bbb; }
}
"""
_TOKEN_TYPE_NAMES: Final = {
    "input": "Input",
    "output": "Output",
    "cache_read": "Cache read",
    "cache_write": "Cache write",
    "reasoning": "Reasoning",
}
CHARGEBACK_CENTRES: Final = ("team", "project", "feature", "user")


def _cents(value: object) -> str:
    return f"${Decimal(str(value or 0)):,.2f}"


def _count(value: object) -> int:
    return int(str(value or 0))


def _share(value: object) -> str:
    return "—" if value is None else f"{value}%"


def render_chargeback(data: Chargeback, *, now: datetime | None = None) -> str:
    """A printable page: one statement per cost centre (lines by model and token type, a subtotal), then
    the total, with a form to pick another month, cost centre or time zone."""
    now = now or datetime.now(UTC)
    totals = data.totals
    period, by, timezone = (str(totals.get(k, "")) for k in ("period", "by", "timezone"))
    who = f"tenant {data.tenant} · {data.role}" + (f" · user {data.user}" if data.user else "")
    header = (
        f'<header><h1>{TITLE}</h1><div class="who"{_attrs(tenant=data.tenant, role=data.role)}>'
        f'{escape(who)} · <a href="/dashboard" style="color:#c6cfdd">dashboard</a>'
        '<form method="post" action="/dashboard/logout"><button type="submit">Sign out</button></form>'
        "</div></header>"
    )
    options = "".join(
        f'<option value="{c}"{" selected" if c == by else ""}>{c}</option>' for c in CHARGEBACK_CENTRES
    )
    pick = (
        '<section class="noprint"><form class="pick" method="get" action="/dashboard/chargeback">'
        f'<div><label for="period">Month</label><input id="period" name="period" type="month" '
        f'value="{escape(period, quote=True)}" pattern="[0-9]{{4}}-[0-9]{{2}}"></div>'
        f'<div><label for="by">Cost centre</label><select id="by" name="by">{options}</select></div>'
        f'<div><label for="tz">Time zone</label><input id="tz" name="tz" '
        f'value="{escape(timezone, quote=True)}"></div>'
        '<div><button type="submit">Show</button></div>'
        '<p class="sub" style="margin:0">Print it, or save it as PDF, from the browser (Ctrl+P).</p>'
        "</form></section>"
    )
    zone = ZoneInfo(timezone) if timezone else ZoneInfo("UTC")
    scope = f"user {data.user}'s usage" if data.user else "this tenant"
    title = (
        f'<section id="chargeback-title"{_attrs(period=period, by=by, timezone=timezone)}>'
        f"<h2>Chargeback statement {escape(period)}<small>by {escape(by)} · {escape(timezone)} · "
        f"{escape(scope)} · {escape(_moment(data.since, zone))} – {escape(_moment(data.until, zone))}"
        "</small></h2></section>"
    )
    cards = [
        ("Total", _cents(totals.get("cost_usd")), "total-cost", totals.get("cost_usd")),
        ("Tokens", tokens(_count(totals.get("tokens"))), "total-tokens", totals.get("tokens")),
        ("Requests", tokens(_count(totals.get("requests"))), "total-requests", totals.get("requests")),
        ("Cost centres", str(totals.get("cost_centres", 0)), "cost-centres", totals.get("cost_centres")),
    ]
    card_html = "".join(
        f'<div class="card"><div class="label">{escape(label)}</div>'
        f'<div class="value" data-metric="{name}" data-value="{escape(str(value), quote=True)}">'
        f"{escape(shown)}</div></div>"
        for label, shown, name, value in cards
    )
    statements = _statements(data.rows, by)
    notes = "".join(f"<li>{escape(note)}</li>" for note in data.notes)
    parts = [
        pick,
        title,
        f'<div class="cards">{card_html}</div>',
        statements or '<section><p class="empty">No usage in this month.</p></section>',
        f'<section id="notes"><h2>How these numbers are made</h2><ul class="sub">{notes}</ul></section>',
        f"<footer>Generated {escape(_moment(now, zone))} {escape(timezone)}</footer>",
    ]
    body = header + "<main>" + "".join(parts) + "</main>"
    return _page(f"{TITLE} — chargeback {period}", body, _PRINT_CSS)


def _statements(rows: Sequence[Cells], by: str) -> str:
    """A section per cost centre: its lines and subtotal row (rows come grouped, the subtotal last)."""
    sections: list[str] = []
    lines: list[str] = []
    head = (
        '<tr><th>Model</th><th>Token type</th><th class="num">Tokens</th><th class="num">Cost</th>'
        '<th class="num">Share of total</th></tr>'
    )
    for row in rows:
        if row.get("kind") == "line":
            token_type = str(row.get("token_type"))
            attrs = _attrs(
                model=row.get("model"),
                token_type=token_type,
                tokens=row.get("tokens"),
                cost=row.get("cost_usd"),
                share=row.get("share_percent"),
            )
            lines.append(
                f'<tr class="line"{attrs}><td class="name">{escape(str(row.get("model")))}</td>'
                f"<td>{escape(_TOKEN_TYPE_NAMES.get(token_type, token_type))}</td>"
                f'<td class="num">{escape(tokens(_count(row.get("tokens"))))}</td>'
                f'<td class="num">{escape(_cents(row.get("cost_usd")))}</td>'
                f'<td class="num">{escape(_share(row.get("share_percent")))}</td></tr>'
            )
        elif row.get("kind") == "subtotal":
            centre = str(row.get("cost_centre"))
            cost, share = _cents(row.get("cost_usd")), _share(row.get("share_percent"))
            requests = _count(row.get("requests"))
            subtotal = (
                f'<tr class="subtotal"{_attrs(subtotal=row.get("cost_usd"), tokens=row.get("tokens"))}>'
                f'<td colspan="2">Subtotal · {requests:,} call{"" if requests == 1 else "s"}</td>'
                f'<td class="num">{escape(tokens(_count(row.get("tokens"))))}</td>'
                f'<td class="num">{escape(cost)}</td><td class="num">{escape(share)}</td></tr>'
            )
            sections.append(
                f'<section class="statement"{_attrs(centre=centre, cost=row.get("cost_usd"))}>'
                f"<h2>{escape(by)} {escape(centre)}<small>{escape(cost)} · {escape(share)} of the total"
                f"</small></h2><table>{head}{''.join(lines)}{subtotal}</table></section>"
            )
            lines = []
        elif row.get("kind") == "total":
            sections.append(
                f'<section id="total"{_attrs(total_cost=row.get("cost_usd"))}><h2>Total · '
                f"{escape(_cents(row.get('cost_usd')))}<small>{escape(tokens(_count(row.get('tokens'))))} "
                f"tokens · {_count(row.get('requests')):,} call(s)</small></h2></section>"
            )
    return "".join(sections) if len(sections) > 1 else ""


# --- other pages -------------------------------------------------------------------------------


def render_login(message: str | None = None) -> str:
    """The sign-in form: an API key posted to /dashboard/login (kept in an HttpOnly cookie)."""
    note = (
        f'<p class="sub" id="login-error" style="color:var(--bad)">{escape(message)}</p>' if message else ""
    )
    body = (
        f'<header><h1>{TITLE}</h1></header><main style="max-width:520px"><section>'
        "<h2>Sign in to the dashboard</h2>"
        f"{note}"
        '<form method="post" action="/dashboard/login">'
        '<p><label for="key">API key</label><br>'
        '<input id="key" name="key" type="password" autocomplete="off" required '
        'style="width:100%;padding:8px;font:inherit;border:1px solid var(--line);border-radius:6px"></p>'
        '<p><button type="submit" style="padding:7px 16px;font:inherit">Sign in</button></p></form>'
        '<p class="sub">Any key of this server works: an admin or viewer key shows its tenant, a member key '
        "its own user (create one with <code>tokenledger keys create --role viewer</code>). The key is kept "
        "in an HttpOnly, SameSite=Strict cookie for 12 hours.</p>"
        "</section></main>"
    )
    return _page(f"{TITLE} — sign in", body)


def render_message(title: str, message: str) -> str:
    """A plain page for an error (a bad parameter, the database unavailable)."""
    body = (
        f'<header><h1>{TITLE}</h1></header><main style="max-width:640px"><section>'
        f"<h2>{escape(title)}</h2><p>{escape(message)}</p>"
        '<p><a href="/dashboard">Back to the dashboard</a></p></section></main>'
    )
    return _page(f"{TITLE} — {title}", body)
