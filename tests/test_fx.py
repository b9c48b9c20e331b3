"""Exchange rates: exact conversions, dated rates per tenant, reports across a rate change, budgets
declared in another currency, and a missing rate as a clear error. Real PostgreSQL throughout."""

from __future__ import annotations

import json
from datetime import UTC, datetime, timedelta
from decimal import Decimal
from decimal import Decimal as D

import anyio
import httpx2
import pytest
from mcp import Client

from tests.servers import serving
from tokenledger import dashboard, fx, reports
from tokenledger.cli import main
from tokenledger.errors import InvalidInput, PermissionDenied
from tokenledger.ledger import Ledger
from tokenledger.mcp import build_server
from tokenledger.mcp.http import DASHBOARD_COOKIE
from tokenledger.types import BudgetSpec, CheckRequest, Principal, TrackRequest

pytestmark = pytest.mark.anyio

MILLION = 1_000_000
OCTOBER = datetime(2026, 10, 1, tzinfo=UTC)
NOVEMBER = datetime(2026, 11, 1, tzinfo=UTC)
ADMIN = Principal(tenant_id="default", role="admin")


def test_conversions_are_exact_and_tables_round_half_up() -> None:
    assert fx.convert(Decimal("0.1"), Decimal("0.92")) == Decimal("0.092")
    assert fx.convert(Decimal("0.0000025"), Decimal("151.37")) == Decimal("0.000378425")
    # Every digit of the product is kept (34 significant digits; Decimal's default context keeps 28).
    assert fx.convert(Decimal("123456789.123456789123456789"), Decimal("0.918273")) == Decimal(
        "113367036.118764036118764036005397"
    )
    assert fx.shown(Decimal("2.345"), "EUR") == "EUR 2.35"
    assert fx.shown(Decimal("1234.5649"), "JPY") == "JPY 1,234.56"


def test_currency_codes_are_iso_4217() -> None:
    assert fx.check_currency("eur") == "EUR"
    for bad in ("XYZ", "EURO", "", 42, "E1R"):
        with pytest.raises(InvalidInput) as refused:
            fx.check_currency(bad)
        assert refused.value.field == "currency" and "ISO 4217" in str(refused.value)
    with pytest.raises(InvalidInput, match="costs are recorded in USD"):
        fx.check_currency("USD", allow_base=False)


async def _rates(ledger: Ledger) -> None:
    await ledger.set_fx_rate(fx.FxRateSpec(currency="EUR", rate=Decimal("0.90"), effective_from=OCTOBER))
    await ledger.set_fx_rate(fx.FxRateSpec(currency="EUR", rate=Decimal("0.92"), effective_from=NOVEMBER))


async def _usage(ledger: Ledger, when: datetime, user: str = "ana") -> None:
    # gpt-4o at $2.50 per million input tokens: $2.50 a call.
    await ledger.import_usage(
        TrackRequest(model="gpt-4o", input_tokens=MILLION, output_tokens=0, occurred_at=when, user=user)
    )


async def test_rates_are_set_listed_deleted_audited_and_bounded(ledger: Ledger) -> None:
    await _rates(ledger)
    listed = await ledger.list_fx_rates(currency="eur")
    assert [(r.rate, r.effective_from) for r in listed] == [
        (Decimal("0.90"), OCTOBER),
        (Decimal("0.92"), NOVEMBER),
    ]
    assert await ledger.list_fx_rates(Principal(tenant_id="other")) == []  # per tenant
    deleted = await ledger.delete_fx_rate("EUR", "2026-10-01")
    assert deleted.rate == Decimal("0.90")
    audit = await ledger.store.audit_log(tenant="default")
    kinds = [(row["object_kind"], row["action"]) for row in audit]
    assert kinds.count(("fx_rate", "create")) == 2 and ("fx_rate", "delete") in kinds

    for bad in (Decimal(0), Decimal("0.0000001"), Decimal(10_000_001)):
        with pytest.raises(ValueError, match="rate"):
            fx.FxRateSpec(currency="EUR", rate=bad)
    with pytest.raises(InvalidInput, match="a year ahead"):
        await ledger.set_fx_rate(
            fx.FxRateSpec(
                currency="EUR", rate=Decimal(1), effective_from=datetime.now(UTC) + timedelta(days=400)
            )
        )
    with pytest.raises(InvalidInput, match="ISO 4217"):
        await ledger.set_fx_rate(fx.FxRateSpec(currency="ABC", rate=Decimal(1)))
    with pytest.raises(PermissionDenied):
        await ledger.set_fx_rate(fx.FxRateSpec(currency="EUR", rate=Decimal(1)), Principal(role="viewer"))
    assert len(await ledger.list_fx_rates()) == 1  # nothing written by a refusal


async def test_a_report_across_a_rate_change_converts_each_cost_at_its_dates_rate(ledger: Ledger) -> None:
    await _rates(ledger)
    await _usage(ledger, datetime(2026, 10, 15, 12, tzinfo=UTC), user="ana")
    await _usage(ledger, datetime(2026, 11, 15, 12, tzinfo=UTC), user="bob")
    window = {"since": "2026-10-10T00:00:00+00:00", "until": "2026-11-20T00:00:00+00:00"}

    summary = await ledger.report(reports.ReportQuery(view="summary", currency="EUR", **window))
    assert summary.totals is not None
    assert Decimal(str(summary.totals["cost_usd"])) == 5
    assert Decimal(str(summary.totals["cost_eur"])) == Decimal("4.55")  # 2.50 x 0.90 + 2.50 x 0.92
    assert summary.currency == "EUR" and [r.rate for r in summary.fx_rates] == [
        Decimal("0.90"),
        Decimal("0.92"),
    ]
    assert any("0.9 from 2026-10-01" in note and "0.92 from 2026-11-01" in note for note in summary.notes)

    by_user = await ledger.report(
        reports.ReportQuery(view="usage", group_by=["user"], currency="EUR", **window)
    )
    assert {row["user"]: Decimal(str(row["cost_eur"])) for row in by_user.rows} == {
        "ana": D("2.25"),
        "bob": D("2.3"),
    }

    daily = await ledger.report(
        reports.ReportQuery(view="timeseries", bucket="day", currency="EUR", **window)
    )
    costs = {
        str(row["bucket"])[:10]: D(str(row["cost_eur"])) for row in daily.rows if D(str(row["cost_usd"]))
    }
    assert costs == {"2026-10-15": D("2.25"), "2026-11-15": D("2.3")}

    # The sum of two monthly reports is the report of both months: each cost keeps its date's rate.
    october = await ledger.report(
        reports.ReportQuery(
            view="summary", currency="EUR", since=window["since"], until="2026-11-01T00:00:00+00:00"
        )
    )
    assert october.totals is not None and D(str(october.totals["cost_eur"])) == D("2.25")

    top = await ledger.report(reports.ReportQuery(view="top", currency="EUR", **window))
    assert sorted(D(str(row["cost_eur"])) for row in top.rows) == [D("2.25"), D("2.3")]
    assert top.totals is not None and D(str(top.totals["cost_eur"])) == D("4.55")

    chargeback = await ledger.report(
        reports.ReportQuery(view="chargeback", period="2026-11", by="user", currency="EUR")
    )
    assert chargeback.totals is not None and chargeback.totals["cost_eur"] == "2.30"
    assert "cost_usd" not in chargeback.totals


async def test_a_missing_rate_is_a_clear_error(ledger: Ledger) -> None:
    await _rates(ledger)
    await _usage(ledger, datetime(2026, 9, 20, tzinfo=UTC))
    with pytest.raises(InvalidInput) as refused:
        await ledger.report(
            reports.ReportQuery(view="summary", currency="EUR", since="2026-09-01T00:00:00+00:00")
        )
    message = str(refused.value)
    assert refused.value.field == "currency" and "2026-09-20" in message
    assert "the earliest EUR rate is from 2026-10-01" in message
    assert "tokenledger fx set EUR RATE --from 2026-09-20" in message
    with pytest.raises(InvalidInput, match="this tenant has no GBP rate"):
        await ledger.report(
            reports.ReportQuery(view="summary", currency="GBP", since="2026-09-01T00:00:00+00:00")
        )
    # USD needs no rate, and a window without priced usage before the first rate needs none either.
    usd = await ledger.report(
        reports.ReportQuery(view="summary", currency="USD", since="2026-09-01T00:00:00+00:00")
    )
    assert usd.totals is not None and "cost_eur" not in usd.totals and usd.currency is None


async def test_a_usd_budget_declared_in_euros_takes_its_limit_at_the_period_starts_rate(
    ledger: Ledger,
) -> None:
    await _rates(ledger)  # November's rate: 0.92 EUR per USD
    spec = BudgetSpec(
        name="eu-team", unit="usd", currency="EUR", limit=Decimal(1000), period="month", priority_shares=None
    )
    budget = await ledger.set_budget(spec)
    assert budget.spec.limit == Decimal(1000) and budget.spec.currency == "EUR"
    assert budget.state.limit == Decimal("1086.956521")  # 1000 / 0.92, down to a millionth of a dollar
    assert budget.state.period_start == NOVEMBER
    assert (budget.state.currency, budget.state.currency_limit) == ("EUR", Decimal(1000))
    assert (budget.state.fx_rate, budget.state.fx_rate_from) == (Decimal("0.92"), NOVEMBER)

    # The ledger counts USD: $1,086.95 of input fits, a cent more does not.
    fits = await ledger.check_budget(CheckRequest(model="gpt-4o", input_tokens=434_782_000))  # $1,086.955
    assert fits.allowed
    await ledger.release(str(fits.reservation_id))
    over = await ledger.check_budget(CheckRequest(model="gpt-4o", input_tokens=434_783_000))  # $1,086.9575
    assert not over.allowed and over.blocked_by is not None and over.blocked_by.budget == "eu-team"

    # A later period takes the rate in force at its own start.
    await ledger.set_fx_rate(fx.FxRateSpec(currency="EUR", rate=Decimal("0.8"), effective_from="2026-12-01"))
    later = await ledger.store._fetch_json(
        "select tl_period_limit(b, '2026-12-01T00:00:00Z', false) from tl_budget b where name = 'eu-team'", ()
    )
    assert later == Decimal("1250.000000")

    shown = (await ledger.list_budgets())[0]
    assert shown.state.currency_limit == Decimal(1000) and shown.state.fx_rate == Decimal("0.92")


async def test_a_budget_in_a_currency_without_a_rate_is_refused_and_nothing_written(ledger: Ledger) -> None:
    with pytest.raises(InvalidInput) as refused:
        await ledger.set_budget(BudgetSpec(name="gbp", unit="usd", currency="GBP", limit=Decimal(10)))
    assert refused.value.field == "currency" and "no GBP rate in force" in str(refused.value)
    with pytest.raises(InvalidInput, match="only with unit usd"):
        await ledger.set_budget(BudgetSpec(name="tok", unit="tokens", currency="EUR", limit=Decimal(10)))
    assert await ledger.list_budgets() == []


async def test_budgets_and_the_dashboard_in_a_currency(ledger: Ledger) -> None:
    await _rates(ledger)
    await ledger.set_budget(BudgetSpec(name="monthly", unit="usd", limit=Decimal(100), period="month"))
    await ledger.track_usage(TrackRequest(model="gpt-4o", input_tokens=MILLION, output_tokens=0, user="ana"))

    budgets = await ledger.report(reports.ReportQuery(view="budgets", currency="EUR"))
    row = budgets.rows[0]
    assert (D(str(row["limit_eur"])), D(str(row["used_eur"]))) == (92, D("2.3"))  # at November's rate

    data = await ledger.dashboard(ADMIN, days=7, currency="EUR")
    assert data.currency == "EUR" and data.totals.cost_usd == Decimal("2.300")
    assert data.budgets[0].limit == Decimal("92.00")
    page = dashboard.render(data)
    assert 'data-metric="total-cost" data-value="2.3">EUR 2.30<' in page
    assert "EUR per USD: 0.92 from 2026-11-01" in page


async def test_the_report_tool_takes_a_currency(ledger: Ledger) -> None:
    await _rates(ledger)
    await ledger.track_usage(TrackRequest(model="gpt-4o", input_tokens=MILLION, output_tokens=0))
    async with Client(build_server(ledger, default_principal=ADMIN)) as client:
        answer = await client.call_tool("report", {"view": "summary", "currency": "eur"})
        assert not answer.is_error
        document = json.loads(answer.content[0].text)  # type: ignore[union-attr]
        assert D(document["totals"]["cost_eur"]) == D("2.3") and document["currency"] == "EUR"
        refused = await client.call_tool("report", {"view": "summary", "currency": "XXQ"})
        assert refused.is_error and "ISO 4217" in refused.content[0].text  # type: ignore[union-attr]


def test_the_fx_and_currency_commands(
    dsn: str, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    monkeypatch.setenv("TOKENLEDGER_DATABASE_URL", dsn)
    assert main(["fx", "set", "EUR", "0.92", "--from", "2026-11-01"]) == 0
    assert "EUR 0.92 per USD from 2026-11-01T00:00:00+00:00" in capsys.readouterr().out
    assert main(["fx", "list"]) == 0
    listing = [line.split() for line in capsys.readouterr().out.splitlines()]
    assert ["EUR", "0.92", "2026-11-01T00:00:00+00:00", "now", "local:admin"] in listing
    assert main(["budget", "set", "eu", "--unit", "usd", "--currency", "EUR", "--limit", "1000"]) == 0
    out = capsys.readouterr().out
    assert "$1086.956521" in out and "declared as EUR 1,000.00" in out
    assert main(["usage", "--currency", "EUR"]) == 0
    assert "Cost (EUR)" in capsys.readouterr().out
    assert main(["budget", "list", "--currency", "EUR"]) == 0
    assert "EUR 1,000.00" in capsys.readouterr().out  # the limit shown at its period start's rate
    assert main(["fx", "set", "ZZZ", "1"]) == 1
    assert "currency" in capsys.readouterr().err
    assert main(["report", "--currency", "GBP"]) == 0  # no usage: nothing needs a GBP rate
    assert "Cost (GBP)" in capsys.readouterr().out


async def test_the_dashboard_page_takes_a_currency(dsn: str) -> None:
    with anyio.fail_after(120):
        async with serving(dsn) as served, httpx2.AsyncClient(timeout=10) as http:
            await _rates(served.ledger)
            await served.ledger.track_usage(
                TrackRequest(model="gpt-4o", input_tokens=MILLION, output_tokens=0)
            )
            viewer, _ = await served.ledger.create_key(role="viewer")
            cookie = {"Cookie": f"{DASHBOARD_COOKIE}={viewer}"}
            page = await http.get(f"{served.base}/dashboard", params={"currency": "EUR"}, headers=cookie)
            assert (
                page.status_code == 200 and ">EUR 2.30<" in page.text and 'data-currency="EUR"' in page.text
            )
            plain = await http.get(f"{served.base}/dashboard", headers=cookie)
            assert ">$2.50<" in plain.text and 'id="fx"' not in plain.text
            bad = await http.get(f"{served.base}/dashboard", params={"currency": "EURO"}, headers=cookie)
            assert bad.status_code == 400 and "ISO 4217" in bad.text


async def test_rates_per_currency_are_bounded_and_any_role_reads_them(ledger: Ledger) -> None:
    for day in (1, 2):
        await ledger.store.set_fx_rate(
            tenant="default",
            actor="t",
            currency="EUR",
            effective_from=datetime(2026, 11, day, tzinfo=UTC),
            rate=D(1),
            most=2,
        )
    with pytest.raises(InvalidInput, match="the most allowed"):
        await ledger.store.set_fx_rate(
            tenant="default",
            actor="t",
            currency="EUR",
            effective_from=NOVEMBER + timedelta(days=9),
            rate=D(1),
            most=2,
        )
    viewer = Principal(role="viewer")
    assert [rate.effective_from.day for rate in await ledger.list_fx_rates(viewer)] == [1, 2]


async def test_forecasts_and_recommendations_in_a_currency(ledger: Ledger) -> None:
    await _rates(ledger)
    await ledger.set_budget(BudgetSpec(name="monthly", unit="usd", limit=Decimal(100), period="month"))
    await ledger.track_usage(TrackRequest(model="gpt-4o", input_tokens=MILLION, output_tokens=0))
    forecast = await ledger.report(reports.ReportQuery(view="forecast", currency="EUR"))
    assert D(str(forecast.rows[0]["limit_eur"])) == 92 and D(str(forecast.rows[0]["used_eur"])) == D("2.3")
    advice = await ledger.report(reports.ReportQuery(view="recommendations", currency="EUR"))
    assert advice.totals is not None and "saving_eur" in advice.totals
    assert advice.fx_rates[0].rate == D("0.92")  # the rate in force at the window's end
