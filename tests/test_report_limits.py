"""Report windows are bounded: durations, timestamps, and every view at the widest window allowed."""

from __future__ import annotations

import logging
from datetime import UTC, datetime
from decimal import Decimal

import pytest
from mcp import Client
from mcp_types import CallToolResult
from pydantic import ValidationError

from tokenledger import reports
from tokenledger.cli import main
from tokenledger.errors import InvalidInput
from tokenledger.ledger import Ledger
from tokenledger.mcp import build_server
from tokenledger.reports import ReportQuery
from tokenledger.types import (
    BudgetSpec,
    Principal,
    TrackRequest,
    explain_validation_error,
)

pytestmark = pytest.mark.anyio

ADMIN = Principal()
MODEL = "gpt-4o-mini"
REPORTS_APP = "tokenledger-reports"  # the application_name of report connections
TEST_TIMEOUT = 60


# --- helpers -----------------------------------------------------------------------------------


def text_of(result: CallToolResult) -> str:
    return " ".join(getattr(block, "text", "") for block in result.content)


# --- windows: bounded before anything runs -----------------------------------------------------


@pytest.mark.parametrize(
    ("since", "accepted"),
    [
        ("36525d", True),  # 100 years back: the longest duration
        ("36526d", False),
        ("999999d", False),
        ("999999w", False),
        ("1900-01-01T00:00:00+00:00", True),
        ("1899-12-31T23:59:59+00:00", False),
        ("0001-01-01T00:00:00Z", False),
        ("9999-01-01T00:00:00+00:00", True),
        ("9999-01-01T00:00:01+00:00", False),
        ("9999-12-31T23:00:00-05:00", False),  # past year 9999 once in UTC
    ],
)
def test_durations_and_timestamps_are_bounded(since: str, accepted: bool) -> None:
    if accepted:
        assert ReportQuery.model_validate({"since": since}).since is not None
        return
    with pytest.raises(ValidationError) as refused:
        ReportQuery.model_validate({"since": since})
    message = explain_validation_error(refused.value)
    assert message.startswith(f"since: got {since!r}; allowed: ") and "\n" not in message
    assert "36525d (100 years)" in message or "between 1900-01-01 and 9999-01-01 (UTC)" in message


async def test_since_999999d_is_one_clear_line_on_every_surface(
    ledger: Ledger,
    dsn: str,
    monkeypatch: pytest.MonkeyPatch,
    capsys: pytest.CaptureFixture[str],
    caplog: pytest.LogCaptureFixture,
) -> None:
    expected = "since: got '999999d'; allowed: a duration back from now of at most 36525d (100 years)"
    with pytest.raises(ValidationError) as library:
        ReportQuery.model_validate({"view": "summary", "since": "999999d"})
    assert explain_validation_error(library.value) == expected

    caplog.set_level(logging.DEBUG)
    async with Client(build_server(ledger, default_principal=ADMIN)) as client:
        result = await client.call_tool("report", {"view": "timeseries", "since": "999999d"})
    assert result.is_error and text_of(result) == f"Error executing tool report: {expected}"
    assert not [r for r in caplog.records if r.levelno >= logging.ERROR or r.exc_info], "no traceback logged"

    monkeypatch.setenv("TOKENLEDGER_DATABASE_URL", dsn)
    assert main(["report", "--since", "999999d"]) == 1
    assert capsys.readouterr().err == f"tokenledger: {expected}\n"


async def test_every_view_answers_or_refuses_at_the_extremes(ledger: Ledger) -> None:
    """The widest windows allowed reach no overflow and no internal error: an answer or a clear refusal."""
    # A total budget nearly used up: over a window ending in 9998 its run-out moment would be past 9999.
    await ledger.set_budget(BudgetSpec(name="total", limit=Decimal(1000), period="total"))
    await ledger.track_usage(TrackRequest(model=MODEL, input_tokens=999, output_tokens=0))
    earliest, latest = datetime(1900, 1, 1, tzinfo=UTC), datetime(9999, 1, 1, tzinfo=UTC)
    windows = [
        {"since": earliest, "until": latest},
        {"since": earliest},
        {"until": earliest},
        {"since": datetime(9998, 12, 31, tzinfo=UTC), "until": latest},
        {"since": "36525d"},
    ]
    for window in windows:
        for view in reports.View.__args__:  # type: ignore[attr-defined]
            for bucket in (None, "month"):
                query = ReportQuery.model_validate({"view": view, "bucket": bucket, **window})
                try:
                    report = await ledger.report(query)
                except InvalidInput as error:
                    assert error.field == "bucket", f"{view} {window}: {error}"
                else:
                    assert report.view == view
    forecast = await ledger.report(ReportQuery(view="forecast", since=earliest, until=latest))
    assert forecast.rows[0]["runs_out_at"] is None  # past the calendar: not a moment
