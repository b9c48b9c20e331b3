"""Provider counting through the official SDKs (anthropic, google-genai) against a loopback stand-in that
speaks each token-counting API: the provider's count when asked, a cache hit for a repeat, the estimate
with a warning on a timeout or an error, and the key never in an answer, an error or a log line."""

from __future__ import annotations

import json
import logging
from collections.abc import AsyncIterator, Callable, Iterator

import pytest

from tests.openbao import OpenBao, openbao_fixture  # noqa: F401  (the `openbao` fixture)
from tests.provider_standin import ProviderStandin, api_key
from tokenledger.cli import main
from tokenledger.errors import InvalidInput, PermissionDenied
from tokenledger.ledger import Ledger
from tokenledger.provider_count import ProviderCounter
from tokenledger.secrets import Secret, VaultConfig
from tokenledger.settings import ProviderCounting, Settings
from tokenledger.types import CheckRequest, CountRequest, Principal, TrackRequest

pytestmark = pytest.mark.anyio

ANTHROPIC_KEY = "sk-ant-standin-0123456789abcdef"
GEMINI_KEY = "AIza-standin-0123456789abcdef"
CLAUDE = "claude-sonnet-4-5"
GEMINI = "gemini-2.5-flash"
TEXT = "The ledger reserves tokens before each call and settles them after."
OTHER_TENANT = Principal(tenant_id="other")


@pytest.fixture
def standin() -> Iterator[ProviderStandin]:
    with ProviderStandin() as provider:
        yield provider


Counting = Callable[..., ProviderCounter]


@pytest.fixture
async def counting(ledger: Ledger, standin: ProviderStandin) -> AsyncIterator[Counting]:
    """Gives the ledger a provider counter aimed at the stand-in (keys and timeout as changed)."""
    made: list[ProviderCounter] = []

    def use(**changes: object) -> ProviderCounter:
        config = ProviderCounting(
            anthropic_api_key=ANTHROPIC_KEY,
            anthropic_base_url=standin.anthropic_base_url,
            gemini_api_key=GEMINI_KEY,
            gemini_base_url=standin.base_url,
            timeout_seconds=2.0,
        )
        counter = ProviderCounter(ProviderCounting(**{**config.__dict__, **changes}))  # type: ignore[arg-type]
        ledger.provider_counter = counter
        made.append(counter)
        return counter

    yield use
    for counter in made:
        await counter.aclose()


def never_shows_key(*texts: str) -> None:
    for text in texts:
        assert ANTHROPIC_KEY not in text and GEMINI_KEY not in text


async def test_claude_counts_come_from_anthropic_and_repeats_from_the_cache(
    ledger: Ledger, standin: ProviderStandin, counting: Counting
) -> None:
    counting()
    standin.behaviour.count_tokens = 1234
    counted = await ledger.count_tokens(CountRequest(text=TEXT, model=CLAUDE, provider_count=True))
    assert (counted.tokens, counted.method, counted.error_band) == (1234, "provider", 0.01)
    assert counted.encoding == "anthropic:count_tokens" and counted.warnings == []
    [sent] = standin.requests
    assert sent.path == "/v1/messages/count_tokens" and api_key(sent.headers) == ANTHROPIC_KEY
    assert sent.body == {"model": CLAUDE, "messages": [{"role": "user", "content": TEXT}]}
    again = await ledger.count_tokens(CountRequest(text=TEXT, model=CLAUDE, provider_count=True))
    assert again.tokens == 1234 and len(standin.requests) == 1
    assert ledger.provider_counter.stats.cache_hits == 1
    # The cache is per tenant: another tenant's identical request is asked again.
    await ledger.count_tokens(CountRequest(text=TEXT, model=CLAUDE, provider_count=True), OTHER_TENANT)
    assert len(standin.requests) == 2


async def test_gemini_counts_come_from_count_tokens_through_google_genai(
    ledger: Ledger, standin: ProviderStandin, counting: Counting
) -> None:
    counting()
    standin.behaviour.count_tokens = 321
    messages = [{"role": "system", "content": "Be terse."}, {"role": "user", "content": TEXT}]
    counted = await ledger.count_tokens(
        CountRequest(messages=messages, model=GEMINI, provider_count=True)  # type: ignore[arg-type]
    )
    assert (counted.tokens, counted.method, counted.encoding) == (321, "provider", "gemini:countTokens")
    [sent] = standin.requests
    assert sent.path.endswith(f"/models/{GEMINI}:countTokens")  # /v1/ or /v1beta/, as the SDK chooses
    assert api_key(sent.headers) == GEMINI_KEY
    texts = [[part["text"] for part in content["parts"]] for content in sent.body["contents"]]
    assert texts == [["Be terse."], [TEXT]]


async def test_the_tenant_setting_turns_it_on_for_checks_and_a_call_can_turn_it_off(
    ledger: Ledger, standin: ProviderStandin, counting: Counting
) -> None:
    counting()
    standin.behaviour.count_tokens = 40
    estimated = await ledger.check_budget(CheckRequest(model=CLAUDE, text=TEXT, reserve=False))
    assert estimated.method == "estimate" and estimated.error_band == 0.25 and standin.requests == []
    settings = await ledger.set_tenant_setting("provider_counting", True)
    assert settings.provider_counting is True
    checked = await ledger.check_budget(CheckRequest(model=CLAUDE, text=TEXT, max_output_tokens=10))
    assert (checked.method, checked.input_tokens, checked.error_band) == ("provider", 40, 0.01)
    assert len(standin.requests) == 1
    opted_out = await ledger.check_budget(CheckRequest(model=CLAUDE, text=TEXT, provider_count=False))
    assert opted_out.method == "estimate" and len(standin.requests) == 1
    # Another tenant did not opt in.
    theirs = await ledger.check_budget(CheckRequest(model=CLAUDE, text=TEXT, reserve=False), OTHER_TENANT)
    assert theirs.method == "estimate" and len(standin.requests) == 1
    # The reservation remembers how it was counted: the accuracy report shows the method.
    await ledger.track_usage(
        TrackRequest(model=CLAUDE, reservation_id=checked.reservation_id, input_tokens=42, output_tokens=5)
    )
    rows = (await ledger.report(_accuracy())).rows
    assert [(row["model"], row["method"], row["samples"]) for row in rows] == [(CLAUDE, "provider", 1)]


def _accuracy():  # type: ignore[no-untyped-def]
    from tokenledger.reports import ReportQuery

    return ReportQuery(view="accuracy", since="1h")


async def test_a_timeout_falls_back_to_the_calibrated_estimate_and_says_so(
    ledger: Ledger, standin: ProviderStandin, counting: Counting
) -> None:
    counting(timeout_seconds=0.2)
    standin.behaviour.count_delay = 1.0
    estimate = await ledger.check_budget(CheckRequest(model=CLAUDE, text=TEXT, reserve=False))
    checked = await ledger.check_budget(
        CheckRequest(model=CLAUDE, text=TEXT, reserve=False, provider_count=True)
    )
    assert (checked.method, checked.input_tokens) == ("estimate", estimate.input_tokens)
    assert "provider_count: anthropic did not answer within 0.2 s; estimated" in checked.warnings
    assert ledger.provider_counter.stats.timeouts == 1


async def test_an_error_falls_back_and_the_key_never_shows(
    ledger: Ledger, standin: ProviderStandin, counting: Counting, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.DEBUG)
    counting()
    standin.behaviour.count_status = 500  # the stand-in's error bodies echo the key
    for model in (CLAUDE, GEMINI):
        counted = await ledger.count_tokens(CountRequest(text=TEXT, model=model, provider_count=True))
        assert counted.method == "estimate" and counted.error_band > 0
        [warning] = counted.warnings
        assert "(HTTP 500); estimated" in warning, warning
        never_shows_key(counted.model_dump_json())
    assert ledger.provider_counter.stats.errors == 2
    never_shows_key(caplog.text, repr(ledger.provider_counter.config))
    assert {api_key(r.headers) for r in standin.requests} == {ANTHROPIC_KEY, GEMINI_KEY}


async def test_what_cannot_be_counted_by_the_provider_is_estimated_with_the_reason(
    ledger: Ledger, standin: ProviderStandin, counting: Counting
) -> None:
    counting(anthropic_api_key=None)
    unconfigured = await ledger.count_tokens(CountRequest(text=TEXT, model=CLAUDE, provider_count=True))
    assert unconfigured.method == "estimate"
    assert unconfigured.warnings == [
        f"provider_count: no anthropic count_tokens API key is configured for {CLAUDE}; estimated"
    ]
    tool_turn = [{"role": "user", "content": "hi"}, {"role": "tool", "content": "42", "tool_call_id": "c1"}]
    counted = await ledger.count_tokens(
        CountRequest(messages=tool_turn, model=GEMINI, provider_count=True)  # type: ignore[arg-type]
    )
    assert counted.method == "estimate" and "text turns only" in counted.warnings[0]
    assert standin.requests == []
    several = await ledger.count_tokens(CountRequest(texts=["a", "b"], model=CLAUDE, provider_count=True))
    assert several.method == "estimate" and "not texts" in several.warnings[0]
    # Exact models are never sent to a provider.
    exact = await ledger.count_tokens(CountRequest(text=TEXT, model="gpt-4o", provider_count=True))
    assert exact.method == "exact" and standin.requests == []


async def test_a_vault_reference_key_is_resolved_once(
    ledger: Ledger, standin: ProviderStandin, counting: Counting, openbao: OpenBao
) -> None:
    openbao.write_secret("tokenledger/anthropic", {"key": ANTHROPIC_KEY})
    vault = VaultConfig(addr=openbao.addr, token=Secret(openbao.root_token))
    counting(anthropic_api_key="vault:secret/data/tokenledger/anthropic#key", vault=vault)
    for text in ("one", "two"):
        counted = await ledger.count_tokens(CountRequest(text=text, model=CLAUDE, provider_count=True))
        assert counted.method == "provider"
    assert [api_key(r.headers) for r in standin.requests] == [ANTHROPIC_KEY, ANTHROPIC_KEY]


async def test_tenant_settings_are_admin_only_validated_and_audited(ledger: Ledger) -> None:
    assert (await ledger.tenant_settings()).provider_counting is False
    with pytest.raises(PermissionDenied, match="admin"):
        await ledger.set_tenant_setting("provider_counting", True, Principal(role="member", user="ana"))
    with pytest.raises(PermissionDenied):
        await ledger.tenant_settings(Principal(role="viewer"))
    with pytest.raises(InvalidInput) as unknown:
        await ledger.set_tenant_setting("provider_countin", True)
    assert unknown.value.field == "key" and "provider_counting" in str(unknown.value)
    with pytest.raises(InvalidInput) as wrong:
        await ledger.set_tenant_setting("provider_counting", "yes")
    assert wrong.value.field == "value" and "boolean" in str(wrong.value)
    assert await ledger.store.tenant_settings(tenant="default") == {}  # nothing written by a refusal
    await ledger.set_tenant_setting("provider_counting", True)
    await ledger.set_tenant_setting("provider_counting", False)
    audit = [
        e for e in await ledger.store.audit_log(tenant="default") if e["object_kind"] == "tenant_setting"
    ]
    assert [(e["object_id"], e["before"], e["after"]) for e in audit] == [
        ("provider_counting", True, False),
        ("provider_counting", None, True),
    ]
    assert await ledger.store.tenant_settings(tenant="other") == {}
    assert json.dumps(audit[0]["actor"]) == '"local:admin"'


async def test_the_cache_is_bounded(ledger: Ledger, standin: ProviderStandin, counting: Counting) -> None:
    counter = counting()
    counter.max_entries = 2
    for text in ("one", "two", "three", "three", "one"):
        await ledger.count_tokens(CountRequest(text=text, model=CLAUDE, provider_count=True))
    # "one" was evicted by "three": asked again; the repeated "three" was a hit.
    assert len(standin.requests) == 4 and counter.stats.cache_hits == 1


@pytest.mark.parametrize("value", ["0.01", "31", "soon"])
def test_the_timeout_setting_is_bounded(value: str) -> None:
    with pytest.raises(
        ValueError, match=f"TOKENLEDGER_PROVIDER_COUNT_TIMEOUT='{value}': seconds, 0.05 to 30"
    ):
        Settings.from_env({"TOKENLEDGER_PROVIDER_COUNT_TIMEOUT": value})
    configured = Settings.from_env(
        {"TOKENLEDGER_PROVIDER_COUNT_TIMEOUT": "0.5", "GOOGLE_API_KEY": GEMINI_KEY}
    )
    assert configured.provider_counting.timeout_seconds == 0.5
    assert configured.provider_counting.gemini_api_key == GEMINI_KEY
    never_shows_key(repr(configured))


def test_settings_from_the_command_line(
    dsn: str, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    monkeypatch.setenv("TOKENLEDGER_DATABASE_URL", dsn)
    assert main(["settings", "set", "provider_counting", "true"]) == 0
    assert main(["settings", "list"]) == 0
    out = capsys.readouterr().out
    assert out == "provider_counting = true\nprovider_counting = true\npseudonymize_users = false\n"
    assert main(["settings", "set", "provider_counting", "maybe"]) == 1
    assert "value: 'maybe' is not allowed; a JSON value" in capsys.readouterr().err
