"""Tenant aliases: an Azure deployment, a fine-tune or a gateway's name counts and prices as its catalog
target (unless the tenant prices the alias itself); admin only, audited, per tenant, no shadowing, no
chains; from the library, the MCP `prices` tool and the CLI."""

from __future__ import annotations

import json
from collections.abc import AsyncIterator
from datetime import UTC, datetime
from decimal import Decimal
from typing import Any

import pydantic
import pytest
from mcp import Client

from tests.provider_standin import ProviderStandin
from tokenledger import catalog
from tokenledger import ledger as ledger_module
from tokenledger.cli import main
from tokenledger.errors import InvalidInput, NotFound, PermissionDenied, UnknownModel
from tokenledger.ledger import Ledger
from tokenledger.mcp import build_server
from tokenledger.pricing import cost
from tokenledger.store import Store
from tokenledger.types import (
    BudgetSpec,
    ChatMessage,
    CheckRequest,
    CountRequest,
    FitRequest,
    PriceSpec,
    Principal,
    TrackRequest,
)

DEPLOYMENT = "my-gpt4o-prod"
MESSAGES = [
    {"role": "system", "content": "You are a careful accountant."},
    {"role": "user", "content": "Reconcile these three ledgers and list every difference you find."},
]
ANSWER = "Ledger B double-counts the 3 March refund; ledgers A and C agree."
MEMBER = Principal(role="member", user="ana")
VIEWER = Principal(role="viewer")
OTHER_TENANT = Principal(tenant_id="globex")


async def usage_rows(ledger: Ledger) -> list[dict[str, Any]]:
    return await ledger.store._fetch_rows(
        "select tenant_id, model, alias_of, provider, input_tokens, output_tokens, cost_usd, method"
        " from tl_usage order by recorded_at",
        (),
    )


async def audit(ledger: Ledger) -> list[tuple[str, str, Any, Any]]:
    rows = await ledger.store._fetch_rows(
        "select action, object_id, before, after from tl_audit where object_kind = 'model_alias'"
        " order by audit_id",
        (),
    )
    return [(row["action"], row["object_id"], row["before"], row["after"]) for row in rows]


# --- the Azure deployment path, exactly --------------------------------------------------------------


@pytest.mark.anyio
async def test_an_azure_deployment_counts_and_prices_exactly_as_gpt_4o(ledger: Ledger) -> None:
    alias = await ledger.set_alias(DEPLOYMENT, "gpt-4o")
    assert (alias.alias, alias.target, alias.created_by) == (DEPLOYMENT, "gpt-4o", "local:admin")
    chat = [ChatMessage.model_validate(m) for m in MESSAGES]

    counted = await ledger.count_tokens(CountRequest(messages=chat, model=DEPLOYMENT))
    as_gpt4o = await ledger.count_tokens(CountRequest(messages=chat, model="gpt-4o"))
    assert (counted.tokens, counted.method, counted.encoding) == (as_gpt4o.tokens, "exact", "o200k_base")
    assert counted.model == DEPLOYMENT and counted.context_window == as_gpt4o.context_window == 128_000
    assert counted.estimated_cost_usd == as_gpt4o.estimated_cost_usd and counted.warnings == []

    await ledger.set_budget(BudgetSpec(name="usd", unit="usd", limit=Decimal(10), period="day"))
    check = await ledger.check_budget(CheckRequest(model=DEPLOYMENT, messages=chat, max_output_tokens=100))
    assert (check.input_tokens, check.method) == (as_gpt4o.tokens, "exact")
    gpt4o = catalog.resolve("gpt-4o").price
    assert check.estimated_cost_usd == cost(gpt4o, input_tokens=as_gpt4o.tokens, output_tokens=100).cost_usd

    tracked = await ledger.track_usage(
        TrackRequest(
            model=DEPLOYMENT,
            reservation_id=check.reservation_id,
            input_text=MESSAGES[1]["content"],
            output_text=ANSWER,
        )
    )
    exact_in = ledger.counter.count_text(MESSAGES[1]["content"], encoding="o200k_base").tokens
    exact_out = ledger.counter.count_text(ANSWER, encoding="o200k_base").tokens
    assert (tracked.input_tokens, tracked.output_tokens, tracked.method) == (exact_in, exact_out, "exact")
    assert tracked.cost_usd == cost(gpt4o, input_tokens=exact_in, output_tokens=exact_out).cost_usd
    assert tracked.warnings == []
    # The row records the name the call used as `model`, and the catalog model it stood for as alias_of.
    assert await usage_rows(ledger) == [
        {
            "tenant_id": "default",
            "model": DEPLOYMENT,
            "alias_of": "gpt-4o",
            "provider": "openai",
            "input_tokens": exact_in,
            "output_tokens": exact_out,
            "cost_usd": tracked.cost_usd,
            "method": "exact",
        }
    ]


@pytest.mark.anyio
async def test_an_alias_is_costed_at_its_targets_dated_price(ledger: Ledger) -> None:
    # gpt-3.5-turbo: $1.50 / $2 per million until 2025-10-05, $0.50 / $1.50 since.
    await ledger.set_alias("legacy-35", "gpt-3.5-turbo")
    then = await ledger.import_usage(
        TrackRequest(
            model="legacy-35",
            input_tokens=1_000_000,
            output_tokens=1_000_000,
            occurred_at=datetime(2025, 9, 15, 12, tzinfo=UTC),
        )
    )
    now = await ledger.track_usage(
        TrackRequest(model="legacy-35", input_tokens=1_000_000, output_tokens=1_000_000)
    )
    assert (then.cost_usd, now.cost_usd) == (Decimal("3.5"), Decimal("2"))


@pytest.mark.anyio
async def test_the_deployments_own_price_wins_else_the_targets_override(ledger: Ledger) -> None:
    await ledger.set_alias(DEPLOYMENT, "gpt-4o")
    usage = TrackRequest(model=DEPLOYMENT, input_tokens=1_000_000, output_tokens=1_000_000)
    assert (await ledger.track_usage(usage)).cost_usd == Decimal("12.5")  # gpt-4o's catalog price

    await ledger.set_price(PriceSpec(model="gpt-4o", input=Decimal("0.000002"), output=Decimal("0.000008")))
    assert (await ledger.track_usage(usage)).cost_usd == Decimal("10")  # the tenant's price of gpt-4o

    # Azure bills this deployment differently: its own price wins (names match case-insensitively).
    await ledger.set_price(
        PriceSpec(model="MY-GPT4O-PROD", input=Decimal("0.0000025"), output=Decimal("0.000011"))
    )
    tracked = await ledger.track_usage(usage)
    assert tracked.cost_usd == Decimal("13.5")
    check = await ledger.check_budget(
        CheckRequest(model=DEPLOYMENT, input_tokens=1_000_000, max_output_tokens=0)
    )
    assert check.estimated_cost_usd == Decimal("2.5")
    info = await ledger.get_price(DEPLOYMENT)
    assert (info.name, info.alias_of, info.source, info.price.output) == (
        DEPLOYMENT,
        "gpt-4o",
        "tenant override",
        Decimal("0.000011"),
    )


@pytest.mark.anyio
async def test_an_alias_fits_into_its_targets_window_and_matches_any_case(ledger: Ledger) -> None:
    await ledger.set_alias("Claude-Gateway", "claude-sonnet-4-5")
    fitted = await ledger.fit_messages(FitRequest(model="claude-gateway", messages=MESSAGES))  # type: ignore[arg-type]
    assert fitted.context_window == catalog.resolve("claude-sonnet-4-5").context_window
    assert fitted.method == "estimate" and fitted.warnings == []
    tracked = await ledger.track_usage(
        TrackRequest(model="CLAUDE-GATEWAY", input_tokens=10, output_tokens=10)
    )
    assert tracked.cost_usd == Decimal("0.00018")  # 10 x $3 + 10 x $15 per MTok
    assert [(r["model"], r["alias_of"]) for r in await usage_rows(ledger)] == [
        ("Claude-Gateway", "claude-sonnet-4-5")
    ]


@pytest.mark.anyio
async def test_a_price_set_under_any_spelling_applies_to_the_calls_that_use_it(ledger: Ledger) -> None:
    # Stored under the name calls record (the catalog's gpt-4o), not as typed: it applies to them.
    await ledger.set_price(PriceSpec(model="openai/GPT-4o", input=Decimal("0.000001"), output=Decimal(0)))
    tracked = await ledger.track_usage(TrackRequest(model="gpt-4o", input_tokens=1_000_000, output_tokens=0))
    assert tracked.cost_usd == Decimal(1)
    assert [row["model"] for row in await ledger.list_price_overrides()] == ["gpt-4o"]


# --- what an alias may be ----------------------------------------------------------------------------


@pytest.mark.anyio
async def test_the_target_must_be_a_catalog_model_and_the_error_names_the_closest(ledger: Ledger) -> None:
    with pytest.raises(UnknownModel) as refused:
        await ledger.set_alias(DEPLOYMENT, "gpt-4oo")
    assert refused.value.field == "target" and "closest known: gpt-4o" in str(refused.value)


@pytest.mark.anyio
@pytest.mark.parametrize("name", ["gpt-4o", "GPT-4o", "openai/gpt-4o", "azure/gpt-4o", "ollama/llama3"])
async def test_an_alias_may_not_shadow_a_catalog_name(ledger: Ledger, name: str) -> None:
    with pytest.raises(InvalidInput) as refused:
        await ledger.set_alias(name, "gpt-4o-mini")
    assert refused.value.field == "alias" and "shadow" in str(refused.value)


@pytest.mark.anyio
async def test_aliases_do_not_chain(ledger: Ledger) -> None:
    await ledger.set_alias(DEPLOYMENT, "gpt-4o")
    with pytest.raises(InvalidInput) as refused:
        await ledger.set_alias("my-gpt4o-canary", DEPLOYMENT)
    assert refused.value.field == "target"
    assert f"{DEPLOYMENT} is this tenant's alias of gpt-4o (aliases do not chain)" in str(refused.value)


@pytest.mark.anyio
@pytest.mark.parametrize(
    ("alias", "target"), [("x" * 201, "gpt-4o"), ("ok", "x" * 201), ("bad\nname", "gpt-4o")]
)
async def test_alias_names_are_bounded_stored_text(ledger: Ledger, alias: str, target: str) -> None:
    with pytest.raises(pydantic.ValidationError):
        await ledger.set_alias(alias, target)
    assert await ledger.list_aliases() == []


@pytest.mark.anyio
async def test_only_admins_change_aliases_and_every_change_is_audited(ledger: Ledger) -> None:
    for principal in (MEMBER, VIEWER):
        with pytest.raises(PermissionDenied):
            await ledger.set_alias(DEPLOYMENT, "gpt-4o", principal)
    await ledger.set_alias(DEPLOYMENT, "gpt-4o")
    for principal in (MEMBER, VIEWER):
        with pytest.raises(PermissionDenied):
            await ledger.delete_alias(DEPLOYMENT, principal)
    assert [a.alias for a in await ledger.list_aliases(MEMBER)] == [DEPLOYMENT]  # any role reads them

    await ledger.set_alias(DEPLOYMENT, "gpt-4o-mini")  # re-pointed
    removed = await ledger.delete_alias("MY-GPT4O-PROD")
    assert (removed.alias, removed.target) == (DEPLOYMENT, "gpt-4o-mini")
    with pytest.raises(NotFound):
        await ledger.delete_alias(DEPLOYMENT)
    changes = await audit(ledger)
    assert [(action, name) for action, name, _, _ in changes] == [
        ("set", DEPLOYMENT),
        ("set", DEPLOYMENT),
        ("delete", DEPLOYMENT),
    ]
    assert changes[0][2] is None and changes[0][3]["target"] == "gpt-4o"
    assert (changes[1][2]["target"], changes[1][3]["target"]) == ("gpt-4o", "gpt-4o-mini")
    assert (changes[2][2]["target"], changes[2][3]) == ("gpt-4o-mini", None)
    # Removed, the name is unknown again: recorded as an estimate, unpriced.
    tracked = await ledger.track_usage(TrackRequest(model=DEPLOYMENT, input_tokens=1, output_tokens=1))
    assert tracked.cost_usd is None


@pytest.mark.anyio
async def test_an_alias_belongs_to_its_tenant(ledger: Ledger) -> None:
    await ledger.set_alias(DEPLOYMENT, "gpt-4o")
    elsewhere = await ledger.track_usage(
        TrackRequest(model=DEPLOYMENT, input_tokens=1_000, output_tokens=0), OTHER_TENANT
    )
    assert elsewhere.cost_usd is None and any("not in the catalog" in w for w in elsewhere.warnings)
    assert await ledger.list_aliases(OTHER_TENANT) == []
    with pytest.raises(NotFound):
        await ledger.delete_alias(DEPLOYMENT, OTHER_TENANT)
    assert [a.alias for a in await ledger.list_aliases()] == [DEPLOYMENT]


@pytest.mark.anyio
async def test_a_tenant_holds_a_bounded_number_of_aliases(
    ledger: Ledger, monkeypatch: pytest.MonkeyPatch
) -> None:
    assert ledger_module.MAX_ALIASES == 1_000  # the README's bound; two here, to reach it quickly
    monkeypatch.setattr(ledger_module, "MAX_ALIASES", 2)
    await ledger.set_alias("a-1", "gpt-4o")
    await ledger.set_alias("a-2", "gpt-4o")
    with pytest.raises(InvalidInput) as refused:
        await ledger.set_alias("a-3", "gpt-4o")
    assert refused.value.field == "alias" and "2 aliases, the most allowed" in str(refused.value)
    await ledger.set_alias("A-2", "gpt-4o-mini")  # re-pointing one at the bound is a change, not a third
    assert [(a.alias, a.target) for a in await ledger.list_aliases()] == [
        ("a-1", "gpt-4o"),
        ("A-2", "gpt-4o-mini"),
    ]


@pytest.mark.anyio
async def test_aliases_are_read_once_per_tenant_not_once_per_call(ledger: Ledger) -> None:
    reads = 0
    read_aliases = ledger.store.aliases

    async def counted(*, tenant: str) -> list[dict[str, Any]]:
        nonlocal reads
        reads += 1
        return await read_aliases(tenant=tenant)

    ledger.store.aliases = counted  # type: ignore[method-assign]
    for _ in range(5):
        await ledger.track_usage(TrackRequest(model="gpt-4o", input_tokens=1, output_tokens=1))
        await ledger.check_budget(CheckRequest(model="gpt-4o", input_tokens=1))
    assert reads == 1
    await ledger.set_alias(DEPLOYMENT, "gpt-4o")  # a change here applies at once: read again
    tracked = await ledger.track_usage(
        TrackRequest(model=DEPLOYMENT, input_tokens=1_000_000, output_tokens=0)
    )
    assert tracked.cost_usd == Decimal("2.5") and reads == 3  # set_alias's own check, then this call


@pytest.mark.anyio
async def test_counting_needs_no_database_for_aliases(dsn: str) -> None:
    store = await Store.open(dsn, migrate=False, max_size=2)
    ledger = Ledger(store)
    await ledger.set_alias(DEPLOYMENT, "gpt-4o")
    await ledger.count_tokens(CountRequest(text="hello world", model=DEPLOYMENT))  # the aliases, read
    await store.close()  # the database is away from here on
    reads = 0
    read_aliases = store.aliases

    async def counted(*, tenant: str) -> list[dict[str, Any]]:
        nonlocal reads
        reads += 1
        return await read_aliases(tenant=tenant)

    store.aliases = counted  # type: ignore[method-assign]
    ledger._aliases["default"] = (ledger._aliases["default"][0], 0.0)  # 30 s later: stale
    for _ in range(3):  # the last aliases read still apply, and one failed read is not retried per count
        count = await ledger.count_tokens(CountRequest(text="hello world", model=DEPLOYMENT))
        assert (count.tokens, count.method, count.model) == (2, "exact", DEPLOYMENT)
    assert reads == 1


@pytest.mark.anyio
async def test_another_process_sees_an_alias_once_its_cached_aliases_go_stale(ledger: Ledger) -> None:
    assert ledger_module.ALIAS_TTL_SECONDS == 30  # the README's "within 30 s"
    other = Ledger(ledger.store)  # another server process over the same database
    usage = TrackRequest(model=DEPLOYMENT, input_tokens=1_000_000, output_tokens=0)
    assert (await other.track_usage(usage)).cost_usd is None  # unknown: its aliases are now cached
    await ledger.set_alias(DEPLOYMENT, "gpt-4o")
    assert (await other.track_usage(usage)).cost_usd is None  # within the 30 s it keeps what it read
    aliases, _ = other._aliases["default"]
    other._aliases["default"] = (aliases, 0.0)  # 30 s later
    assert (await other.track_usage(usage)).cost_usd == Decimal("2.5")


# --- the wrapper, the MCP tool and the CLI -----------------------------------------------------------


@pytest.fixture
async def openai_client(provider: ProviderStandin) -> AsyncIterator[Any]:
    openai = pytest.importorskip("openai")
    async with openai.AsyncOpenAI(base_url=provider.openai_base_url, api_key="test", max_retries=0) as client:
        yield client


@pytest.mark.anyio
async def test_a_wrapped_call_of_the_deployment_is_priced_as_gpt_4o(
    ledger: Ledger, provider: ProviderStandin, openai_client: Any
) -> None:
    from tokenledger.integrations.openai import wrap_openai

    await ledger.set_alias(DEPLOYMENT, "gpt-4o")
    client = wrap_openai(openai_client, ledger)
    await client.chat.completions.create(model=DEPLOYMENT, messages=MESSAGES, max_tokens=50)
    # The stand-in reports prompt 40 (8 cached), completion 30 (5 reasoning).
    expected = cost(
        catalog.resolve("gpt-4o").price,
        input_tokens=32,
        cache_read_input_tokens=8,
        output_tokens=30,
        reasoning_output_tokens=5,
    ).cost_usd
    [row] = await usage_rows(ledger)
    assert (row["model"], row["alias_of"], row["cost_usd"]) == (DEPLOYMENT, "gpt-4o", expected)


@pytest.mark.anyio
async def test_the_price_tools_alias_list_and_unalias_for_admins_only(ledger: Ledger) -> None:
    async with Client(build_server(ledger, default_principal=Principal())) as admin:
        made = await admin.call_tool(
            "manage_prices", {"action": "alias", "model": DEPLOYMENT, "target": "gpt-4o"}
        )
        assert not made.is_error and made.structured_content is not None
        assert made.structured_content["aliases"][0]["target"] == "gpt-4o"
        got = await admin.call_tool("prices", {"action": "get", "model": DEPLOYMENT})
        assert got.structured_content is not None
        assert got.structured_content["models"][0]["alias_of"] == "gpt-4o"
        listed = await admin.call_tool("prices", {"action": "list", "query": "gpt-4o", "limit": 1})
        assert listed.structured_content is not None
        assert [a["alias"] for a in listed.structured_content["aliases"]] == [DEPLOYMENT]
        missing = await admin.call_tool("manage_prices", {"action": "alias", "model": "x-1"})
        assert missing.is_error and "target: missing" in missing.content[0].text  # type: ignore[union-attr]
        shadow = await admin.call_tool(
            "manage_prices", {"action": "alias", "model": "gpt-4o", "target": "o3"}
        )
        assert shadow.is_error and "alias: 'gpt-4o'" in shadow.content[0].text  # type: ignore[union-attr]
    async with Client(build_server(ledger, default_principal=MEMBER)) as member:
        refused = await member.call_tool("manage_prices", {"action": "unalias", "model": DEPLOYMENT})
        assert refused.is_error and "cannot change model aliases" in refused.content[0].text  # type: ignore[union-attr]
    async with Client(build_server(ledger, default_principal=Principal())) as admin:
        removed = await admin.call_tool("manage_prices", {"action": "unalias", "model": DEPLOYMENT})
        assert not removed.is_error
    assert await ledger.list_aliases() == []


@pytest.fixture
def env(dsn: str, monkeypatch: pytest.MonkeyPatch) -> str:
    monkeypatch.setenv("TOKENLEDGER_DATABASE_URL", dsn)
    return dsn


def run(capsys: pytest.CaptureFixture[str], *args: str) -> tuple[int, str, str]:
    code = main(list(args))
    out, err = capsys.readouterr()
    return code, out, err


def test_the_cli_aliases_shows_lists_and_unaliases(env: str, capsys: pytest.CaptureFixture[str]) -> None:
    code, out, _ = run(capsys, "models", "alias", DEPLOYMENT, "gpt-4o")
    assert (code, out) == (0, f"{DEPLOYMENT} -> gpt-4o: counts and prices as gpt-4o\n")
    code, out, _ = run(capsys, "prices", DEPLOYMENT)
    assert code == 0 and "alias of        gpt-4o (this tenant's alias" in out and "0.0000025 / 2.5" in out
    code, out, _ = run(capsys, "models", "--aliases", "--json")
    assert code == 0 and [(a["alias"], a["target"]) for a in json.loads(out)] == [(DEPLOYMENT, "gpt-4o")]
    code, out, _ = run(capsys, "models", "--aliases")
    assert code == 0 and out.splitlines()[2].split()[:3] == [DEPLOYMENT, "gpt-4o", "local:admin"]
    code, _, err = run(capsys, "models", "alias", "gpt-4o", "o3")
    assert code == 1 and err.startswith("tokenledger: alias: 'gpt-4o' is not allowed")
    code, _, err = run(capsys, "models", "alias", DEPLOYMENT)
    assert code == 1 and "NAME TARGET" in err
    code, out, _ = run(capsys, "models", "unalias", DEPLOYMENT)
    assert (code, out) == (0, f"removed alias {DEPLOYMENT} (was gpt-4o)\n")
    code, _, err = run(capsys, "prices", DEPLOYMENT)
    assert code == 1 and f"model: '{DEPLOYMENT}' is not allowed; unknown model; closest known: gpt-" in err
    code, out, _ = run(capsys, "models", "claude", "opus", "--limit", "1")  # words of a query, as before
    assert code == 0 and "claude" in out and "opus" in out
