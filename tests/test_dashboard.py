"""The web dashboard: rendering and escaping, sign-in with a key, what each role sees, and the page in a
real browser.

The browser test starts the real app under uvicorn on 127.0.0.1 over a database with seeded usage
(several days, users, projects, models; a denial, a live reservation, an alert), loads `/dashboard` in
headless Chromium (Debian's `chromium`, installed by the test when missing and running as root),
reads the rendered DOM (`--dump-dom`) and checks every number the page shows, through its `data-`
attributes, against the ledger. A screenshot is saved under the test's tmp_path and copied to
/tmp/tokenledger-dashboard.png.
"""

from __future__ import annotations

import logging
import os
import shutil
import subprocess
from dataclasses import dataclass, field
from datetime import UTC, date, datetime, timedelta
from decimal import Decimal
from html.parser import HTMLParser
from pathlib import Path
from typing import Any

import anyio
import httpx2
import pytest
from hypothesis import given
from hypothesis import strategies as st

from tests.servers import serving
from tokenledger import dashboard
from tokenledger.ledger import Ledger
from tokenledger.mcp.http import DASHBOARD_COOKIE
from tokenledger.types import (
    BudgetSpec,
    BudgetState,
    CheckRequest,
    PriceSpec,
    Principal,
    TrackRequest,
    UsageRow,
)

pytestmark = pytest.mark.anyio

TEST_TIMEOUT = 120
CHROMIUM = Path("/usr/bin/chromium")
CHROMIUM_FLAGS = (
    "--headless",
    "--no-sandbox",
    "--disable-gpu",
    "--disable-quic",
    "--no-first-run",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
)
SCREENSHOT_COPY = Path("/tmp/tokenledger-dashboard.png")
HOSTILE_MODEL = '<script>document.title="owned"</script>'
HOSTILE_BUDGET = "<script>alert(1)</script>"


# --- reading a page ------------------------------------------------------------------------------


@dataclass
class Element:
    tag: str
    attrs: dict[str, str]
    text: str = ""


@dataclass
class Page(HTMLParser):
    """Every element with `data-` attributes (with its text), and every tag name seen."""

    elements: list[Element] = field(default_factory=list)
    tags: list[str] = field(default_factory=list)
    text: str = ""
    _open: list[tuple[str, Element | None]] = field(default_factory=list)

    def __post_init__(self) -> None:
        HTMLParser.__init__(self)

    def handle_starttag(self, tag: str, attrs: list[tuple[str, str | None]]) -> None:
        self.tags.append(tag)
        values = {name: value or "" for name, value in attrs}
        element = Element(tag, values) if any(name.startswith("data-") for name in values) else None
        if element is not None:
            self.elements.append(element)
        if tag not in ("meta", "br", "input", "line", "link", "img"):
            self._open.append((tag, element))

    def handle_endtag(self, tag: str) -> None:
        while self._open:
            open_tag, _ = self._open.pop()
            if open_tag == tag:
                break

    def handle_data(self, data: str) -> None:
        self.text += data
        for _, element in self._open:
            if element is not None:
                element.text += data

    def find(self, **wanted: str) -> list[Element]:
        return [
            e
            for e in self.elements
            if all(e.attrs.get(f"data-{k.replace('_', '-')}") == v for k, v in wanted.items())
        ]

    def having(self, attribute: str) -> list[Element]:
        return [e for e in self.elements if f"data-{attribute}" in e.attrs]


def read(html: str) -> Page:
    page = Page()
    page.feed(html)
    page.close()
    return page


# --- seeding -------------------------------------------------------------------------------------

ADMIN = Principal()


async def seed(ledger: Ledger) -> None:
    """Budgets, usage over ten days by several users, projects and models, a denial, a live
    reservation, an alert, and a model whose name is markup."""
    for spec in (
        BudgetSpec(name="team-search", scope="team:search", limit=Decimal(400_000), period="day"),
        BudgetSpec(name="monthly-usd", unit="usd", limit=Decimal(5), hard_limit=Decimal(8), period="month"),
        BudgetSpec(name="ana-weekly", scope="user:ana", limit=Decimal(2_000_000), period="week"),
        BudgetSpec(name="expensive-feature", scope="feature:expensive", limit=Decimal(10), period="day"),
    ):
        await ledger.set_budget(spec, ADMIN)
    now = datetime.now(UTC)
    await ledger.set_price(
        PriceSpec(
            model=HOSTILE_MODEL,
            input=Decimal("0.000001"),
            output=Decimal("0.000002"),
            effective_from=now - timedelta(days=30),
        ),
        ADMIN,
    )
    calls = [
        # (days ago, user, project, model, input, output)
        (9, "ana", "search", "gpt-4o-mini", 120_000, 30_000),
        (7, "bo", "billing", "claude-sonnet-4-5", 40_000, 8_000),
        (5, "ana", "search", "gpt-4o", 60_000, 12_000),
        (4, "cy", "support", "gpt-4o-mini", 300_000, 50_000),
        (2, "bo", "search", "claude-sonnet-4-5", 90_000, 20_000),
        (1, "ana", "billing", "gpt-4o", 30_000, 9_000),
        (0, "ana", "search", "gpt-4o", 900_000, 80_000),  # $3.05: monthly-usd crosses 50%
        (0, "cy", "support", HOSTILE_MODEL, 1_000, 500),
    ]
    for days_ago, user, project, model, input_tokens, output_tokens in calls:
        await ledger.import_usage(  # some are older than direct usage may be dated
            TrackRequest(
                model=model,
                user=user,
                project=project,
                team="search" if project == "search" else None,
                input_tokens=input_tokens,
                output_tokens=output_tokens,
                cache_read_input_tokens=input_tokens // 10,
                occurred_at=now - timedelta(days=days_ago, minutes=5),
            ),
            ADMIN,
        )
    denied = await ledger.check_budget(
        CheckRequest(model="gpt-4o-mini", input_tokens=500, feature="expensive", user="bo"), ADMIN
    )
    assert denied.decision == "deny"
    reserved = await ledger.check_budget(
        CheckRequest(model="gpt-4o-mini", input_tokens=2_000, max_output_tokens=1_000, user="ana"), ADMIN
    )
    assert reserved.allowed and reserved.reservation_id


# --- rendering -----------------------------------------------------------------------------------


def _row(**keys: str) -> UsageRow:
    return UsageRow(
        keys=dict(keys),
        requests=3,
        input_tokens=100,
        output_tokens=50,
        cache_read_input_tokens=0,
        cache_creation_input_tokens=0,
        reasoning_output_tokens=0,
        total_tokens=150,
        cost_usd=Decimal("0.0125"),
        unpriced_requests=0,
        errors=0,
    )


def _board(**changes: Any) -> dashboard.Dashboard:
    now = datetime(2026, 11, 23, 12, tzinfo=UTC)
    since = dashboard.window_start(now, 30, "UTC")
    state = BudgetState(
        name=HOSTILE_BUDGET,
        scope='user:"><img src=x onerror=alert(2)>',
        unit="usd",
        limit=Decimal(10),
        period="day",
        timezone="UTC",
        enforcement="hard",
        resets_at=now + timedelta(hours=12),
        used=Decimal("2.5"),
        reserved=Decimal("0.5"),
        remaining=Decimal(7),
        percent_used=25.0,
        status="ok",
    )
    values: dict[str, Any] = {
        "tenant": "default",
        "role": "viewer",
        "timezone": "UTC",
        "since": since,
        "until": now,
        "budgets": [state],
        "daily": dashboard.daily_series([], since=since, days=30, timezone="UTC"),
        "totals": _row(),
        "top_users": [_row(user="<b>eve</b>")],
        "top_projects": [_row(project="p&q")],
        "top_models": [_row(model=HOSTILE_MODEL)],
        "decisions": [
            dashboard.Decision(
                decided_at=now, budget=HOSTILE_BUDGET, decision="deny", reason="limit", model="<i>m</i>"
            )
        ],
    }
    values.update(changes)
    return dashboard.Dashboard(**values)


def test_render_escapes_every_user_text() -> None:
    html = dashboard.render(_board(), now=datetime(2026, 11, 23, 12, tzinfo=UTC))
    page = read(html)
    assert "script" not in page.tags and "img" not in page.tags and "b" not in page.tags
    assert "i" not in page.tags
    assert "&lt;script&gt;alert(1)&lt;/script&gt;" in html
    assert "<script" not in html and "<img" not in html
    budget = page.find(budget=HOSTILE_BUDGET)  # the parser unescapes: the attribute holds the real name
    assert len(budget) == 1 and HOSTILE_BUDGET in budget[0].text
    assert budget[0].attrs["data-used"] == "2.5" and budget[0].attrs["data-limit"] == "10"
    assert 'user:"><img src=x onerror=alert(2)>' in budget[0].text
    assert page.find(group="model", key=HOSTILE_MODEL) and page.find(group="user", key="<b>eve</b>")
    assert "in 12h 0m" in budget[0].text  # resets in 12 hours
    # Self-contained: nothing is fetched from anywhere.
    assert "http://" not in html and "https://" not in html and "@import" not in html


def test_costs_below_a_cent_keep_two_significant_digits() -> None:
    assert dashboard.usd(Decimal("0.0000042")) == "$0.0000042"  # a gpt-4o-mini call of a few tokens
    assert dashboard.usd(Decimal("0.00001234")) == "$0.000012"
    assert dashboard.usd(Decimal("0.0000005")) == "$0.00000050"
    assert dashboard.usd(Decimal("0.0125")) == "$0.0125" and dashboard.usd(Decimal("0.5")) == "$0.5000"
    assert dashboard.usd(Decimal("1234.565")) == "$1,234.57" and dashboard.usd(Decimal(0)) == "$0"
    assert dashboard.usd(Decimal("0.000003"), "EUR") == "EUR 0.0000030"


@given(st.decimals(min_value=Decimal("1e-12"), max_value=Decimal("0.9999"), places=14))
def test_real_spend_never_reads_as_zero(cost: Decimal) -> None:
    shown = Decimal(dashboard.usd(cost).removeprefix("$"))
    assert shown != 0 and abs(shown - cost) / cost <= Decimal("0.05")  # two significant digits or more


async def test_an_alert_shows_each_sinks_delivery(ledger: Ledger) -> None:
    """One sink delivered, one retrying after an error: each says so, not "pending"."""
    await ledger.set_budget(BudgetSpec(name="daily", limit=Decimal(100), period="day", priority_shares=None))
    await ledger.track_usage(TrackRequest(model="gpt-4o", input_tokens=60, output_tokens=0))
    claimed = {d["sink"]: d for d in await ledger.claim_alert_deliveries(["webhook", "slack"])}
    await ledger.finish_alert_delivery(claimed["webhook"])
    await ledger.finish_alert_delivery(claimed["slack"], error="HTTP 503", retry_seconds=60)
    page = read(dashboard.render(await ledger.dashboard(Principal())))
    shown = {e.attrs["data-sink"]: (e.attrs["data-delivery"], e.text) for e in page.having("sink")}
    assert shown == {"slack": ("retrying", "slack: retrying"), "webhook": ("delivered", "webhook: delivered")}
    await ledger.finish_alert_delivery(claimed["slack"], error="HTTP 410", retry_seconds=None)
    page = read(dashboard.render(await ledger.dashboard(Principal())))
    assert {e.attrs["data-sink"]: e.attrs["data-delivery"] for e in page.having("sink")}["slack"] == "failed"


def test_member_page_has_no_top_users() -> None:
    html = dashboard.render(_board(role="member", user="ana", top_users=[]))
    assert 'id="top-user"' not in html and 'id="top-project"' in html and "user ana" in html


def test_daily_series_fills_every_day_in_the_zone() -> None:
    now = datetime(2026, 3, 29, 1, 30, tzinfo=UTC)  # 03:30 in Paris, the day summer time starts
    since = dashboard.window_start(now, 3, "Europe/Paris")
    assert since == datetime(2026, 3, 26, 23, tzinfo=UTC)  # local midnight of March 27
    bucket = datetime(2026, 3, 27, 23, tzinfo=UTC)  # local midnight of March 28
    row = _row().model_copy(update={"bucket": bucket})
    series = dashboard.daily_series([row], since=since, days=3, timezone="Europe/Paris")
    assert [d.day for d in series] == [date(2026, 3, 27), date(2026, 3, 28), date(2026, 3, 29)]
    assert [d.cost_usd for d in series] == [Decimal(0), Decimal("0.0125"), Decimal(0)]


def test_spend_chart_scales_to_a_clean_axis() -> None:
    assert dashboard._nice_ceiling(Decimal("3.05")) == Decimal(5)
    assert dashboard._nice_ceiling(Decimal("0.012")) == Decimal("0.02")
    assert dashboard._nice_ceiling(Decimal(0)) > 0
    daily = [
        dashboard.DailySpend(day=date(2026, 1, d), cost_usd=Decimal(d), total_tokens=d, requests=1)
        for d in range(1, 5)
    ]
    page = read(dashboard.spend_chart(daily))
    bars = page.having("day")
    assert [b.attrs["data-cost"] for b in bars] == ["1", "2", "3", "4"]
    heights = [float(b.attrs["height"]) for b in bars]
    assert heights == sorted(heights) and heights[-1] > 0


# --- sign-in and access ----------------------------------------------------------------------------


async def test_sign_in_with_a_key_sets_a_strict_http_only_cookie(
    dsn: str, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.INFO)
    with anyio.fail_after(TEST_TIMEOUT):
        async with serving(dsn) as served, httpx2.AsyncClient(timeout=10) as http:
            url = f"{served.base}/dashboard"
            viewer, record = await served.ledger.create_key(role="viewer")
            form = await http.get(url)
            assert form.status_code == 200 and 'action="/dashboard/login"' in form.text
            assert form.headers["content-security-policy"].startswith("default-src 'none'")

            wrong = await http.get(url, params={"key": "tl_0_wrong"})
            assert wrong.status_code == 401 and "unknown or revoked" in wrong.text

            linked = await http.get(url, params={"key": viewer}, headers={"Sec-Fetch-Site": "cross-site"})
            assert linked.status_code == 403 and "set-cookie" not in linked.headers
            signed_in = await http.get(url, params={"key": viewer, "tz": "Europe/Paris"})
            assert signed_in.status_code == 303
            assert signed_in.headers["location"] == "/dashboard?tz=Europe%2FParis"  # the key is dropped
            cookie = signed_in.headers["set-cookie"]
            assert cookie.startswith(f"{DASHBOARD_COOKIE}={viewer};")
            for attribute in ("HttpOnly", "Path=/dashboard", "SameSite=strict", "Max-Age=43200"):
                assert attribute.lower() in cookie.lower(), attribute
            # The server's access log shows no query string (the test's own HTTP client logs the URL).
            access = [r.getMessage() for r in caplog.records if r.name == "uvicorn.access"]
            assert any("/dashboard?[redacted]" in line for line in access), access
            assert not any(viewer in line for line in access)

            http.cookies.clear()  # from here on the cookie is sent explicitly
            cookies = {"Cookie": f"{DASHBOARD_COOKIE}={viewer}"}
            page = await http.get(url, params={"tz": "Europe/Paris"}, headers=cookies)
            assert page.status_code == 200 and "tenant default · viewer" in page.text
            assert page.headers["cache-control"] == "no-store"
            bad_zone = await http.get(url, params={"tz": "Mars/Olympus"}, headers=cookies)
            assert bad_zone.status_code == 400 and "Mars/Olympus" in bad_zone.text

            posted = await http.post(f"{url}/login", data={"key": viewer})
            assert posted.status_code == 303 and posted.headers["location"] == "/dashboard"
            assert "httponly" in posted.headers["set-cookie"].lower()
            http.cookies.clear()
            refused = await http.post(f"{url}/login", data={"key": "tl_nope"})
            assert refused.status_code == 401
            # Host and Origin are checked as on /mcp: another site cannot post a key or read the page.
            cross_site = await http.post(
                f"{url}/login", data={"key": viewer}, headers={"Origin": "https://evil.example"}
            )
            assert cross_site.status_code == 403
            rebinding = await http.get(url, headers={**cookies, "Host": "evil.example"})
            assert rebinding.status_code == 421

            out = await http.post(f"{url}/logout", headers=cookies)
            assert out.status_code == 303 and "Max-Age=0" in out.headers["set-cookie"]
            http.cookies.clear()

            await served.ledger.revoke_key(record["key_id"])
            revoked = await http.get(url, headers=cookies)
            assert revoked.status_code == 401 and "sign in again" in revoked.text
            # The cookie opens the dashboard only: it is no credential for /mcp or /metrics.
            assert (await http.get(f"{served.base}/metrics", headers=cookies)).status_code == 401


async def test_a_member_sees_only_its_own_user(dsn: str) -> None:
    with anyio.fail_after(TEST_TIMEOUT):
        async with serving(dsn) as served, httpx2.AsyncClient(timeout=10) as http:
            await seed(served.ledger)
            member, _ = await served.ledger.create_key(role="member", user="ana")
            cookie = {"Cookie": f"{DASHBOARD_COOKIE}={member}"}
            answer = await http.get(f"{served.base}/dashboard", headers=cookie)
            assert answer.status_code == 200
            page = read(answer.text)
            ana = Principal(role="member", user="ana")
            board = await served.ledger.dashboard(ana)
            shared = {"monthly-usd", "team-search", "expensive-feature"}  # as aggregate state
            assert {e.attrs["data-budget"] for e in page.having("budget")} == shared | {"ana-weekly"}
            assert not page.find(group="user")
            projects = {e.attrs["data-key"] for e in page.find(group="project")}
            assert projects == {"search", "billing"}  # ana's projects only
            total = page.find(metric="total-cost")[0].attrs["data-value"]
            assert Decimal(total) == board.totals.cost_usd
            assert board.totals.requests == 4  # ana's calls, none of bo's or cy's
            assert not page.having("decision")  # the denial was bo's
            bo, _ = await served.ledger.create_key(role="member", user="bo")
            answer = await http.get(
                f"{served.base}/dashboard", headers={"Cookie": f"{DASHBOARD_COOKIE}={bo}"}
            )
            page = read(answer.text)
            assert {e.attrs["data-budget"] for e in page.having("budget")} == shared
            assert "ana-weekly" not in answer.text and "user:ana" not in answer.text
            assert {e.attrs["data-alert-budget"] for e in page.having("alert")} <= shared
            assert {e.attrs["data-blocked-by"] for e in page.having("decision")} <= shared


# --- in a real browser ---------------------------------------------------------------------------


def chromium_path() -> Path:
    """Debian's chromium, installed now if missing (as root); fails the test if it cannot be had."""
    if CHROMIUM.exists():
        return CHROMIUM
    if os.geteuid() != 0 or shutil.which("apt-get") is None:
        pytest.fail(
            f"{CHROMIUM} is missing and this test cannot install it (needs root and apt-get): "
            "run `apt-get install -y chromium` first"
        )
    env = {**os.environ, "DEBIAN_FRONTEND": "noninteractive"}
    for command in (["apt-get", "update", "-qq"], ["apt-get", "install", "-y", "-qq", "chromium"]):
        done = subprocess.run(command, env=env, capture_output=True, text=True, timeout=900, check=False)
        if done.returncode != 0:
            pytest.fail(f"could not install chromium ({' '.join(command)}): {done.stderr[-2000:]}")
    if not CHROMIUM.exists():
        pytest.fail(f"apt-get installed chromium but {CHROMIUM} is still missing")
    return CHROMIUM


async def browse(chromium: Path, profile: Path, *arguments: str) -> str:
    """Run headless Chromium with a fresh profile; its stdout."""
    await anyio.Path(profile).mkdir(parents=True, exist_ok=True)
    command = [str(chromium), *CHROMIUM_FLAGS, f"--user-data-dir={profile}", *arguments]
    with anyio.fail_after(90):
        done = await anyio.run_process(command, check=False)
    output = done.stdout.decode("utf-8", "replace")
    assert done.returncode == 0, f"chromium failed ({done.returncode}): {done.stderr.decode()[-2000:]}"
    return output


async def test_the_dashboard_in_chromium_shows_the_ledgers_numbers(dsn: str, tmp_path: Path) -> None:
    chromium = await anyio.to_thread.run_sync(chromium_path)
    with anyio.fail_after(TEST_TIMEOUT):
        async with serving(dsn) as served:
            await seed(served.ledger)
            viewer, _ = await served.ledger.create_key(role="viewer")
            url = f"{served.base}/dashboard?key={viewer}"
            html = await browse(chromium, tmp_path / "profile-dom", "--dump-dom", url)
            screenshot = tmp_path / "dashboard.png"
            await browse(
                chromium,
                tmp_path / "profile-shot",
                f"--screenshot={screenshot}",
                "--window-size=1280,1600",
                "--hide-scrollbars",
                url,
            )
            viewer_principal = Principal(role="viewer")
            budgets = {b.spec.name: b.state for b in await served.ledger.list_budgets(viewer_principal)}
            board = await served.ledger.dashboard(viewer_principal)
        assert screenshot.exists() and screenshot.stat().st_size > 10_000
        shutil.copyfile(screenshot, SCREENSHOT_COPY)

    page = read(html)
    assert "tenant default · viewer" in page.text, html[:2000]  # signed in through the redirect and cookie
    # Budgets: use, reservation and reset time, as the ledger has them.
    shown = {e.attrs["data-budget"]: e for e in page.having("budget")}
    assert set(shown) == set(budgets)
    for name, state in budgets.items():
        row = shown[name].attrs
        assert Decimal(row["data-used"]) == state.used, name
        assert Decimal(row["data-limit"]) == state.limit, name
        assert Decimal(row["data-reserved"]) == state.reserved, name
        assert Decimal(row["data-remaining"]) == state.remaining, name
        assert row["data-resets-at"] == (state.resets_at.isoformat() if state.resets_at else ""), name
        assert row["data-status"] == state.status, name
    assert Decimal(shown["ana-weekly"].attrs["data-reserved"]) == 3_000  # the live reservation
    # Spend per day: thirty bars, each the ledger's total of that day.
    bars = page.having("day")
    assert len(bars) == 30
    by_day = {d.day.isoformat(): d for d in board.daily}
    for bar in bars:
        expected = by_day[bar.attrs["data-day"]]
        assert Decimal(bar.attrs["data-cost"]) == expected.cost_usd
        assert int(bar.attrs["data-tokens"]) == expected.total_tokens
    assert sum(1 for bar in bars if Decimal(bar.attrs["data-cost"]) > 0) == 7  # 7 distinct days of usage
    assert sum(Decimal(bar.attrs["data-cost"]) for bar in bars) == board.totals.cost_usd
    # Totals, top users, projects and models.
    assert Decimal(page.find(metric="total-cost")[0].attrs["data-value"]) == board.totals.cost_usd
    assert int(page.find(metric="total-tokens")[0].attrs["data-value"]) == board.totals.total_tokens
    assert int(page.find(metric="total-requests")[0].attrs["data-value"]) == 8
    for group, rows in (
        ("user", board.top_users),
        ("project", board.top_projects),
        ("model", board.top_models),
    ):
        shown_rows = page.find(group=group)
        assert [e.attrs["data-key"] for e in shown_rows] == [r.keys[group] for r in rows]
        assert [Decimal(e.attrs["data-cost"]) for e in shown_rows] == [r.cost_usd for r in rows]
    assert [e.attrs["data-key"] for e in page.find(group="user")][:1] == ["ana"]  # the biggest spender
    # The denial and the alert.
    denial = page.having("decision")
    assert [(e.attrs["data-blocked-by"], e.attrs["data-reason"]) for e in denial] == [
        ("expensive-feature", "limit")
    ]
    alerts = page.having("alert")
    shown_alerts = [(e.attrs["data-alert-budget"], Decimal(e.attrs["data-threshold"])) for e in alerts]
    assert shown_alerts == [(a.budget, a.threshold) for a in board.alerts]
    assert ("monthly-usd", Decimal(50)) in shown_alerts  # crossed by today's big call
    # A model named with markup is text in the browser, never a script.
    assert "script" not in page.tags
    assert HOSTILE_MODEL in page.text
    assert page.find(group="model", key=HOSTILE_MODEL)
