"""Every count says how sure it is: exact counts 0, estimates the spread this tenant's settled calls of the
model measured (the documented per-family default until there are enough of them)."""

from __future__ import annotations

import statistics

import pytest

from tokenledger import tokens
from tokenledger.ledger import CALIBRATION_MIN_CALLS, Ledger
from tokenledger.types import CheckRequest, CountRequest, Principal, TrackRequest

pytestmark = pytest.mark.anyio

CLAUDE = "claude-sonnet-4-5"
TEXT = "Summarise the quarterly report in three bullet points. " * 20


def p90(values: list[float]) -> float:
    return round(min(statistics.quantiles(values, n=10, method="inclusive")[8], 1.0), 3)


async def test_bands_come_from_the_tenants_settled_calls(ledger: Ledger) -> None:
    exact = await ledger.count_tokens(CountRequest(text=TEXT, model="gpt-4o"))
    assert (exact.method, exact.error_band) == ("exact", 0.0)
    first = await ledger.check_budget(CheckRequest(model=CLAUDE, text=TEXT, reserve=False))
    default = tokens.DEFAULT_ERROR_BANDS["anthropic"]
    assert first.error_band == default
    raw = first.input_tokens
    ratios = [2.0, 2.2, 1.8, 2.4, 2.0, 1.6]  # the provider reports about twice our estimate, give or take
    actuals = [round(raw * ratio) for ratio in ratios]
    assert len(actuals) > CALIBRATION_MIN_CALLS
    for actual in actuals:
        check = await ledger.check_budget(CheckRequest(model=CLAUDE, text=TEXT))
        await ledger.track_usage(
            TrackRequest(
                model=CLAUDE, reservation_id=check.reservation_id, input_tokens=actual, output_tokens=1
            )
        )
    fresh = Ledger(ledger.store)  # no cached calibration
    calibrated = await fresh.check_budget(CheckRequest(model=CLAUDE, text=TEXT, reserve=False))
    factor = calibrated.calibration_factor
    assert factor is not None and factor == pytest.approx(sum(actuals) / (raw * len(actuals)), abs=1e-4)
    observed = [actual / raw for actual in actuals]
    # A check presents the calibrated count: its band is the spread around the factor.
    assert calibrated.error_band == p90([abs(r / factor - 1) for r in observed])
    assert 0 < calibrated.error_band < default
    # count_tokens presents the uncalibrated estimate: its band is the spread around 1 (here capped at 100 %).
    counted = await fresh.count_tokens(CountRequest(text=TEXT, model=CLAUDE))
    assert counted.error_band == p90([abs(r - 1) for r in observed]) == 1.0
    # Another tenant has no calls of its own: the documented default.
    other = await fresh.count_tokens(CountRequest(text=TEXT, model=CLAUDE), Principal(tenant_id="other"))
    assert other.error_band == default


async def test_count_tokens_answers_with_the_default_band_while_the_database_is_away(ledger: Ledger) -> None:
    await ledger.store.close()
    counted = await ledger.count_tokens(CountRequest(text=TEXT, model=CLAUDE))
    assert (counted.method, counted.error_band) == ("estimate", tokens.DEFAULT_ERROR_BANDS["anthropic"])


# The README's counting table: the documented band of each family's estimates.
@pytest.mark.parametrize(
    ("provider", "band"),
    [
        ("anthropic", 0.25),
        ("google", 0.15),
        ("mistral", 0.15),
        ("deepseek", 0.15),
        ("cohere", 0.15),
        ("xai", 0.15),
        ("meta", 0.10),
        ("openai", 0.10),
    ],
)
def test_documented_default_bands(provider: str, band: float) -> None:
    from tokenledger.catalog import search

    estimated = [m for m in search(provider=provider, limit=1000) if m.count_method == "estimate"]
    assert estimated, provider
    for model in estimated:
        counted = tokens.count_text("hello world", model=model)
        assert counted.error_band == (0.0 if counted.method == "exact" else band), model.name


def test_the_count_command_shows_the_band_and_exact_mistral_counts(
    capsys: pytest.CaptureFixture[str],
) -> None:
    from tokenledger.cli import main

    assert main(["count", "--model", "claude-sonnet-4-5", "hello world"]) == 0
    assert "expected error: ±25% (the provider's count may differ by this much)" in capsys.readouterr().out
    assert main(["count", "--model", "open-mistral-nemo", "hello world"]) == 0
    lines = capsys.readouterr().out.splitlines()
    assert lines[0] == "2 tokens (exact, tekken_240718, open-mistral-nemo)"
    assert not any(line.startswith(("expected error", "warning")) for line in lines)
