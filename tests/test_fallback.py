"""Graceful degradation: a call its USD budget cannot afford runs on a cheaper fallback model, with the
real OpenAI and Anthropic SDKs against the provider stand-in, on real PostgreSQL; the usage records the
downgrade and reports show it."""

from __future__ import annotations

from collections.abc import Iterator
from datetime import UTC, datetime, timedelta
from decimal import Decimal
from functools import partial
from typing import Any

import pytest
from pydantic import ValidationError

from tests.provider_standin import ProviderStandin
from tokenledger.errors import BudgetExceeded, InvalidInput
from tokenledger.integrations import SyncLedger, guard
from tokenledger.integrations.fallback import MAX_FALLBACK_MODELS, fallback_request_id
from tokenledger.ledger import Ledger
from tokenledger.reports import ReportQuery
from tokenledger.types import BudgetSpec, Principal, TrackRequest

openai = pytest.importorskip("openai")
anthropic = pytest.importorskip("anthropic")

from tokenledger.integrations.anthropic import wrap_anthropic  # noqa: E402
from tokenledger.integrations.openai import wrap_openai  # noqa: E402

pytestmark = pytest.mark.anyio

MESSAGES = [{"role": "system", "content": "Be brief."}, {"role": "user", "content": "What is a ledger?"}]
# With max tokens 500: gpt-4o costs at least $0.005 (output $10/M) and claude-sonnet-4-6 $0.0075, over
# the limit; gpt-4o-mini about $0.0003 and claude-haiku-4-5 about $0.0025, within it.
TIGHT = Decimal("0.005")


def usd_budget(limit: Decimal = TIGHT, **fields: Any) -> BudgetSpec:
    return BudgetSpec(name="main", unit="usd", limit=limit, period="day", priority_shares=None, **fields)


async def usage_rows(ledger: Ledger) -> list[dict[str, Any]]:
    return await ledger.store.usage_rows(tenant="default")


async def reservations(ledger: Ledger) -> int:
    rows = await ledger.store._fetch_rows("select count(*) as n from tl_reservation", ())
    return int(rows[0]["n"])


# --- the SDKs --------------------------------------------------------------------------------------


async def test_openai_call_denied_for_money_runs_on_the_fallback(
    ledger: Ledger, provider: ProviderStandin, clients: dict[str, Any]
) -> None:
    await ledger.set_budget(usd_budget())
    client = wrap_openai(clients["openai"], ledger, user="ana", fallback=["gpt-4o-mini"])
    completion = await client.chat.completions.create(model="gpt-4o", messages=MESSAGES, max_tokens=500)
    assert provider.requests[0].body["model"] == "gpt-4o-mini"  # the SDK call was sent with the fallback
    assert completion.model == "gpt-4o-mini"  # and the caller sees it
    [row] = await usage_rows(ledger)
    assert (row["model"], row["requested_model"]) == ("gpt-4o-mini", "gpt-4o")
    assert row["metadata"] == {"fallback_reason": "limit", "fallback_budget": "main"}
    assert await reservations(ledger) == 1  # gpt-4o's denied check reserved nothing

    stream = await client.chat.completions.create(
        model="gpt-4o", messages=MESSAGES, max_tokens=500, stream=True
    )
    async with stream:
        chunks = [chunk async for chunk in stream]
    assert stream.grant.model == "gpt-4o-mini" and stream.grant.requested_model == "gpt-4o"
    assert stream.grant.downgrade.reason == "limit" and stream.grant.downgrade.budget == "main"
    assert provider.requests[1].body["model"] == "gpt-4o-mini" and chunks[0].model == "gpt-4o-mini"

    by_model = await ledger.report(ReportQuery(view="usage", group_by=["model"]))
    assert [(r["model"], r["requests"], r["downgrades"]) for r in by_model.rows] == [("gpt-4o-mini", 2, 2)]
    assert by_model.totals is not None and by_model.totals["downgrades"] == 2
    assert any(note.startswith("downgrades: 2 call(s) ran on a fallback model") for note in by_model.notes)
    pairs = await ledger.report(ReportQuery(view="usage", group_by=["requested_model", "model"]))
    assert [(r["requested_model"], r["model"], r["downgrades"]) for r in pairs.rows] == [
        ("gpt-4o", "gpt-4o-mini", 2)
    ]


async def test_a_wrapped_call_to_a_fallback_model_itself_runs_as_asked(
    ledger: Ledger, provider: ProviderStandin, clients: dict[str, Any]
) -> None:
    await ledger.set_budget(usd_budget())
    client = wrap_openai(clients["openai"], ledger, fallback=["gpt-4o-mini"], fallback_at=0.5)
    completion = await client.chat.completions.create(model="gpt-4o-mini", messages=MESSAGES, max_tokens=500)
    assert completion.model == "gpt-4o-mini"
    [row] = await usage_rows(ledger)
    assert (row["model"], row["requested_model"]) == ("gpt-4o-mini", None)


async def test_anthropic_call_denied_for_money_runs_on_the_fallback(
    ledger: Ledger, provider: ProviderStandin, clients: dict[str, Any]
) -> None:
    await ledger.set_budget(usd_budget())
    client = wrap_anthropic(clients["anthropic"], ledger, fallback=["claude-haiku-4-5"])
    message = await client.messages.create(model="claude-sonnet-4-6", max_tokens=500, messages=MESSAGES[1:])
    assert provider.requests[0].body["model"] == "claude-haiku-4-5"
    assert message.model == "claude-haiku-4-5"
    [row] = await usage_rows(ledger)
    assert (row["model"], row["requested_model"]) == ("claude-haiku-4-5", "claude-sonnet-4-6")
    assert (row["input_tokens"], row["output_tokens"]) == (25, 18)  # the provider's usage, settled as usual


async def test_no_fallback_the_budget_allows_raises_as_before(
    ledger: Ledger, provider: ProviderStandin, clients: dict[str, Any]
) -> None:
    await ledger.set_budget(usd_budget(Decimal("0.0001")))  # not even gpt-4o-mini's 500 tokens fit
    client = wrap_openai(clients["openai"], ledger, fallback=["gpt-4o-mini"])
    with pytest.raises(BudgetExceeded) as denied:
        await client.chat.completions.create(model="gpt-4o", messages=MESSAGES, max_tokens=500)
    check = denied.value.decision  # type: ignore[attr-defined]
    assert check.blocked_by.budget == "main" and check.blocked_by.reason == "limit"
    assert "no fallback model fits either (gpt-4o-mini)" in str(denied.value)
    assert provider.requests == [] and await usage_rows(ledger) == [] and await reservations(ledger) == 0
    state = (await ledger.get_budget("main")).state
    assert (state.used, state.reserved) == (0, 0)


async def test_a_token_budget_denial_does_not_fall_back(
    ledger: Ledger, provider: ProviderStandin, clients: dict[str, Any]
) -> None:
    """A cheaper model needs as many tokens: only money denials fall back."""
    await ledger.set_budget(BudgetSpec(name="tokens", limit=Decimal(100), period="day", priority_shares=None))
    client = wrap_openai(clients["openai"], ledger, fallback=["gpt-4o-mini"])
    with pytest.raises(BudgetExceeded) as denied:
        await client.chat.completions.create(model="gpt-4o", messages=MESSAGES, max_tokens=500)
    assert "fallback" not in str(denied.value)
    assert denied.value.decision.blocked_by.budget == "tokens"  # type: ignore[attr-defined]
    assert provider.requests == [] and await reservations(ledger) == 0


@pytest.fixture
def sync_ledger(dsn: str) -> Iterator[SyncLedger]:
    with SyncLedger.open(dsn=dsn, migrate=False) as opened:
        opened.set_budget(usd_budget())
        yield opened


def test_sync_openai_client_falls_back(sync_ledger: SyncLedger, provider: ProviderStandin) -> None:
    with openai.OpenAI(base_url=provider.openai_base_url, api_key="t", max_retries=0) as raw:
        client = wrap_openai(raw, sync_ledger, fallback=["gpt-4o-mini"])
        completion = client.chat.completions.create(model="gpt-4o", messages=MESSAGES, max_tokens=500)
    assert completion.model == "gpt-4o-mini" and provider.requests[0].body["model"] == "gpt-4o-mini"
    rows = sync_ledger.run(partial(sync_ledger.ledger.store.usage_rows, tenant="default"))
    assert [(r["model"], r["requested_model"]) for r in rows] == [("gpt-4o-mini", "gpt-4o")]


# --- the guard -----------------------------------------------------------------------------------


async def spend(ledger: Ledger, usd: str) -> None:
    await ledger.track_usage(
        TrackRequest(model="gpt-4o", input_tokens=1, output_tokens=1, cost_usd=Decimal(usd))
    )


@pytest.mark.parametrize("enforcement", ["hard", "soft"])
async def test_fallback_at_prefers_the_cheaper_model_past_the_share(ledger: Ledger, enforcement: str) -> None:
    await ledger.set_budget(usd_budget(Decimal(1), enforcement=enforcement))
    await spend(ledger, "0.89")
    options: dict[str, Any] = {"model": "gpt-4o", "text": "hi", "max_output_tokens": 1000}
    # $0.89 + gpt-4o's $0.01 reaches 0.9 of the $1 limit: the call runs on gpt-4o-mini.
    async with guard(ledger, **options, fallback=["gpt-4o-mini"], fallback_at=0.9) as grant:
        assert grant.model == "gpt-4o-mini" and grant.downgrade is not None
        assert (grant.downgrade.reason, grant.downgrade.budget) == ("fallback_at", "main")
        await grant.settle({"input_tokens": 5, "output_tokens": 5})
    # Below the share the model asked for runs.
    async with guard(ledger, **options, fallback=["gpt-4o-mini"], fallback_at=0.95) as grant:
        assert grant.model == "gpt-4o" and grant.downgrade is None
        await grant.settle({"input_tokens": 5, "output_tokens": 5})
    rows = await usage_rows(ledger)
    assert sorted((r["model"], r["requested_model"]) for r in rows) == [
        ("gpt-4o", None),
        ("gpt-4o", None),
        ("gpt-4o-mini", "gpt-4o"),
    ]
    assert await reservations(ledger) == 2  # one per guarded call: the probes reserve nothing


async def test_fallbacks_are_tried_in_order_and_only_the_allowed_one_reserves(ledger: Ledger) -> None:
    await ledger.set_budget(usd_budget())
    # 700 output tokens: gpt-4.1 ($8/M output) is denied too; gpt-4.1-nano is the first allowed.
    fallback = ["gpt-4.1", "gpt-4.1-nano", "gpt-4o-mini"]
    async with guard(ledger, model="gpt-4o", text="hi", max_output_tokens=700, fallback=fallback) as grant:
        assert grant.model == "gpt-4.1-nano" and grant.requested_model == "gpt-4o"
    assert await reservations(ledger) == 1
    decisions = await ledger.recent_decisions()
    assert sorted(d.model or "" for d in decisions) == ["gpt-4.1", "gpt-4o"]  # the denials, as before


async def test_a_priority_share_denial_falls_back_and_a_partial_grant_does_not(ledger: Ledger) -> None:
    # A medium call may take 5 % of the $0.1 left: $0.005, which gpt-4o's 500 output tokens exceed.
    await ledger.set_budget(
        BudgetSpec(
            name="main", unit="usd", limit=Decimal("0.1"), period="day", priority_shares={"medium": "0.05"}
        )
    )
    options: dict[str, Any] = {"model": "gpt-4o", "text": "hi", "max_output_tokens": 500}
    async with guard(ledger, **options, fallback=["gpt-4o-mini"]) as grant:
        assert grant.model == "gpt-4o-mini" and grant.downgrade is not None
        assert grant.downgrade.reason == "priority_share"
        await grant.release()
    async with guard(ledger, **options, fallback=["gpt-4o-mini"], allow_partial=True) as grant:
        assert grant.model == "gpt-4o" and grant.downgrade is None and grant.max_output_tokens < 500
        await grant.release()


async def test_a_replayed_guarded_call_counts_once(ledger: Ledger) -> None:
    """A retry with the same request_id replays the requested model's denial and the fallback's grant."""
    await ledger.set_budget(usd_budget())
    grants = []
    for _ in range(2):
        options: dict[str, Any] = {"text": "hi", "max_output_tokens": 500, "request_id": "r1"}
        async with guard(ledger, model="gpt-4o", fallback=["gpt-4o-mini"], **options) as grant:
            await grant.settle({"input_tokens": 5, "output_tokens": 5})
            grants.append(grant)
    assert grants[1].model == "gpt-4o-mini" and grants[1].check.duplicate
    assert grants[0].reservation_id == grants[1].reservation_id
    assert len(await usage_rows(ledger)) == 1 and await reservations(ledger) == 1


def test_the_report_command_groups_by_requested_model(
    dsn: str, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    from tokenledger.cli import main

    monkeypatch.setenv("TOKENLEDGER_DATABASE_URL", dsn)
    with SyncLedger.open(dsn=dsn, migrate=False) as ledger:
        ledger.track_usage(
            TrackRequest(model="gpt-4o-mini", requested_model="gpt-4o", input_tokens=9, output_tokens=1)
        )
    args = ["report", "--view", "usage", "--group-by", "requested_model,model", "--since", "7d"]
    assert main([*args, "--format", "csv"]) == 0
    lines = capsys.readouterr().out.splitlines()
    assert lines[0].startswith('"requested_model","model","requests"') and '"downgrades"' in lines[0]
    assert lines[1].startswith('"gpt-4o","gpt-4o-mini","1"') and lines[1].endswith('"1"')
    assert main(args) == 0 and "downgrades: 1 call(s)" in capsys.readouterr().out


def test_fallback_request_ids_stay_within_bounds() -> None:
    assert fallback_request_id("r1", 2) == "r1#fallback2" and fallback_request_id(None, 1) is None
    longest = fallback_request_id("x" * 200, 8)
    assert longest is not None and len(longest) <= 200 and longest.endswith("#fallback8")


async def test_fallback_options_are_checked_before_any_call(ledger: Ledger, clients: dict[str, Any]) -> None:
    await ledger.set_budget(usd_budget())
    bad: list[tuple[dict[str, Any], str]] = [
        ({"fallback": ["gpt-4o"]}, "fallback"),  # the model requested itself
        ({"fallback": ["gpt-4o-mini", "gpt-4o-mini"]}, "fallback"),
        ({"fallback": [f"m{n}" for n in range(MAX_FALLBACK_MODELS + 1)]}, "fallback"),
        ({"fallback": "gpt-4o-mini"}, "fallback"),  # a string, not a list of names
        ({"fallback": [""]}, "fallback"),
        ({"fallback": ["gpt-4o-mini"], "fallback_at": 0}, "fallback_at"),
        ({"fallback": ["gpt-4o-mini"], "fallback_at": 1.01}, "fallback_at"),
        ({"fallback": ["gpt-4o-mini"], "fallback_at": "nan"}, "fallback_at"),
        ({"fallback_at": 0.9}, "fallback_at"),  # nothing to fall back to
    ]
    for options, field in bad:
        with pytest.raises(InvalidInput) as refused:
            guard(ledger, model="gpt-4o", text="hi", **options)
        assert refused.value.field == field, options
    with pytest.raises(InvalidInput, match="fallback_at"):
        wrap_openai(clients["openai"], ledger, fallback_at=0.9)  # at wrap time, not at the first call
    # The bounds themselves pass.
    guard(ledger, model="gpt-4o", fallback=[f"m{n}" for n in range(MAX_FALLBACK_MODELS)], fallback_at=1)
    assert await reservations(ledger) == 0


# --- the usage record ----------------------------------------------------------------------------


async def test_requested_model_is_bounded_and_kept_only_when_it_differs(ledger: Ledger) -> None:
    with pytest.raises(ValidationError, match="requested_model"):
        TrackRequest(model="gpt-4o-mini", requested_model="x" * 201, input_tokens=1, output_tokens=1)
    TrackRequest(model="gpt-4o-mini", requested_model="x" * 200, input_tokens=1, output_tokens=1)
    await ledger.track_usage(
        TrackRequest(model="gpt-4o-mini", requested_model="gpt-4o-mini", input_tokens=1, output_tokens=1)
    )
    [row] = await usage_rows(ledger)
    assert row["requested_model"] is None  # the model asked for ran: no downgrade
    totals = (await ledger.report(ReportQuery(view="summary"))).totals
    assert totals is not None and totals["downgrades"] == 0


async def test_downgrades_survive_pruning_into_daily_totals(ledger: Ledger) -> None:
    long_ago = datetime.now(UTC) - timedelta(days=100)
    await ledger.import_usage(
        TrackRequest(
            model="gpt-4o-mini",
            requested_model="gpt-4o",
            input_tokens=10,
            output_tokens=1,
            occurred_at=long_ago,
        ),
        Principal(),
    )
    await ledger.prune_usage(timedelta(days=60))
    assert await usage_rows(ledger) == []  # rolled up into tl_usage_daily
    report = await ledger.report(
        ReportQuery(view="usage", group_by=["requested_model", "model"], since=long_ago - timedelta(days=2))
    )
    assert [(r["requested_model"], r["model"], r["downgrades"]) for r in report.rows] == [
        ("gpt-4o", "gpt-4o-mini", 1)
    ]
