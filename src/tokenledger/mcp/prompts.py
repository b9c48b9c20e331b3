"""The Token Checker's three jobs as MCP prompts: usage analysis, cost-tracking set-up, budget enforcement.

Each prompt is a function of typed, bounded arguments (the client sends strings; they are validated and
converted before the text is made) that returns the instructions an agent follows with this server's
tools. The same jobs drive the Claude Code subagent and the KiloCode mode in `tokenledger/data/agents`.
"""

from __future__ import annotations

from decimal import Decimal
from typing import Annotated, Final

from pydantic import Field, StringConstraints

DIMENSIONS: Final = ("user", "session", "project", "team", "feature", "endpoint", "provider", "model")
_DIMENSION = "(" + "|".join(DIMENSIONS) + ")"

Window = Annotated[
    str,
    StringConstraints(
        pattern=r"^(\d{1,4}[mhdw]|\d{4}-\d{2}-\d{2}T[0-9:.]+(Z|[+-]\d{2}:\d{2}))$", max_length=40
    ),
    Field(description="How far back: 24h, 7d, 30d, or an ISO 8601 timestamp with its offset"),
]
Breakdown = Annotated[
    str,
    StringConstraints(pattern=rf"^{_DIMENSION}(,{_DIMENSION}){{0,3}}$"),
    Field(description=f"Up to four of {', '.join(DIMENSIONS)}, comma-separated (an agent is its feature)"),
]
Usd = Annotated[Decimal, Field(gt=0, le=10**9, max_digits=14, decimal_places=2)]
ModelName = Annotated[str, StringConstraints(min_length=1, max_length=120, pattern=r"^[\w.:/@-]+$")]
Feature = Annotated[
    str,
    StringConstraints(min_length=1, max_length=64, pattern=r"^[A-Za-z0-9][\w.:-]*$"),
    Field(description="The feature's identifier, as calls attribute it (feature=...)"),
]
Thresholds = Annotated[
    str,
    StringConstraints(pattern=r"^\d{1,3}(,\d{1,3}){0,9}$"),
    Field(description="Alert thresholds in percent of the limit, comma-separated"),
]
Scope = Annotated[
    str,
    StringConstraints(pattern=r"^(global|(team|project|user|session|feature|endpoint):[\w.:-]{1,64})$"),
    Field(description="global, or kind:value (team:search, feature:chat, ...)"),
]


def _lines(*lines: str) -> str:
    return "\n".join(lines)


def usage_analysis(
    period: Window = "7d",
    breakdown: Breakdown = "feature,user,model",
    monthly_budget_usd: Annotated[Usd | None, Field(description="A budget to forecast against")] = None,
    high_tokens: Annotated[
        int, Field(ge=1, le=10_000_000, description="A call over this many tokens is high-token")
    ] = 2000,
) -> str:
    """Analyse token usage and spend for a period: breakdowns, high-token calls, savings, a forecast."""
    dimensions = breakdown.split(",")
    budget = (
        f"Compare the forecast with the monthly budget of ${monthly_budget_usd}: when would it be reached?"
        if monthly_budget_usd is not None
        else "Compare the forecast with the budgets the `budgets` view lists."
    )
    return _lines(
        f"You are the Token Checker. Analyse our LLM token usage since {period}, with the tokenledger tools.",
        "",
        f'1. `report` view="summary" since="{period}": requests, tokens by type, cost, success rate.',
        "2. Breakdowns, one call each (an agent's usage is recorded under its feature):",
        *(f'   - `report` view="usage" since="{period}" group_by=["{name}"]' for name in dimensions),
        f'3. `report` view="top" since="{period}" limit=20: the costliest calls; those over '
        f"{high_tokens:,} tokens are the high-token operations.",
        f'4. `report` view="recommendations" since="{period}": savings with their evidence.',
        '5. `report` view="forecast" since="24h", then view="budgets": projected spend at each '
        f"period's end, and when budgets run out. {budget}",
        "",
        "Then write the analysis:",
        "- Totals: cost (USD), tokens (input, output, cache read, cache write, reasoning), requests, errors.",
        f"- One table per breakdown ({', '.join(dimensions)}), costliest first, with each row's share.",
        f"- High-token operations: the calls over {high_tokens:,} tokens with feature, user, model and cost,",
        "  and for each a concrete fix (trim context with `fit_messages`, cap `max_output_tokens`, a",
        "  cheaper model from `prices`).",
        "- Recommendations, with the dollars each saves over the period.",
        "- Forecast: spend by the month's end at the current rate; budgets at warning or over.",
        "Quote numbers exactly as the reports give them; never estimate what a report can tell.",
    )


def cost_tracking_setup(
    feature: Feature,
    expected_requests_per_day: Annotated[int, Field(ge=1, le=1_000_000_000, description="Calls a day")],
    monthly_budget_usd: Annotated[Usd, Field(description="What the feature may spend a month")],
    tokens_per_request: Annotated[
        int, Field(ge=1, le=10_000_000, description="Input + output tokens of a typical call")
    ] = 2000,
    model: Annotated[ModelName, Field(description="The model most calls use")] = "gpt-4o",
    cheaper_model: Annotated[
        ModelName | None, Field(description="A cheaper model for simple calls, if any")
    ] = None,
) -> str:
    """Set up cost tracking for a feature: budgets, alert thresholds, sinks, the dashboard, a projection."""
    daily_tokens = expected_requests_per_day * tokens_per_request
    per_minute = max(1, -(-expected_requests_per_day // 1440))
    cheaper = (
        [f'   Price `{cheaper_model}` too (`prices` action="get" model="{cheaper_model}") and give the '
         "monthly cost if the simple calls moved to it."]
        if cheaper_model
        else []
    )  # fmt: skip
    scope = f'scope="feature:{feature}"'
    return _lines(
        f"You are the Token Checker. Set up cost tracking for the feature `{feature}`: about "
        f"{expected_requests_per_day:,} calls a day of about {tokens_per_request:,} tokens on `{model}`, "
        f"with ${monthly_budget_usd} a month to spend.",
        "",
        f'1. Projection: `prices` action="get" model="{model}" for its prices. About {daily_tokens:,} '
        f"tokens a day, {daily_tokens * 30:,} a month: split them into input and output as the feature "
        "does (ask if unsure, else assume 3:1), give the cost a day and a month and its share of the budget.",
        *cheaper,
        '2. Budgets, with `manage_budget` action="set":',
        f'   - name="{feature}-monthly" {scope} unit="usd" limit={monthly_budget_usd} period="month" '
        'alert_thresholds=[50, 75, 90, 100] enforcement="hard";',
        f'   - name="{feature}-daily" {scope} unit="tokens" period="day", limit about 1.5 x '
        f'{daily_tokens:,} tokens, enforcement="soft" (a spike warns before the month is spent), and '
        f"requests_per_minute={per_minute * 3} (three times the average {per_minute} a minute).",
        '   Read them back with `lookup` what="budgets" and show them.',
        f'3. Tracking in code: before each model call `check_budget` with feature="{feature}" (and user, '
        "session) and its `max_output_tokens`; after it `track_usage` with the reservation_id and the "
        "usage the provider reported; `release` if the call is not made. Show these lines in the "
        "feature's language.",
        "4. Alerts: the ledger records each threshold crossing; sinks deliver them. Give the lines to set "
        "where `tokenledger serve` runs: TOKENLEDGER_ALERT_WEBHOOK, TOKENLEDGER_ALERT_SLACK_WEBHOOK or "
        "TOKENLEDGER_ALERT_SMTP.",
        "5. Dashboard: /dashboard on the HTTP server (sign in with a viewer key: `tokenledger keys create "
        '--role viewer`) shows the budgets, spend a day and top users; `report` view="usage" '
        'group_by=["feature"] gives the same here.',
        "End with the projection table (tokens and USD a day and a month, share of the budget) and what "
        "was created.",
    )


def budget_enforcement(
    monthly_limit_usd: Annotated[Usd, Field(description="The monthly budget")] = Decimal(1000),
    hard_limit_usd: Annotated[
        Usd, Field(description="Spend never goes past this (the overage allowed)")
    ] = Decimal(1200),
    alert_thresholds: Thresholds = "50,75,90,100",
    scope: Scope = "global",
    fallback_model: Annotated[
        ModelName, Field(description="The cheaper model to switch to when the budget is tight")
    ] = "gpt-4o-mini",
) -> str:
    """Enforce a monthly budget: a hard cap above it, alerts at thresholds, a cheaper-model fallback."""
    if hard_limit_usd < monthly_limit_usd:
        raise ValueError(
            f"hard_limit_usd: got {hard_limit_usd}; allowed: at least monthly_limit_usd ({monthly_limit_usd})"
        )
    thresholds = ", ".join(alert_thresholds.split(","))
    name = "monthly-usd" if scope == "global" else f"{scope.replace(':', '-')}-monthly-usd"
    fallback = f'model="{fallback_model}"'
    return _lines(
        f"You are the Token Checker. Enforce a monthly budget of ${monthly_limit_usd} on {scope} usage, "
        f"never past ${hard_limit_usd}.",
        "",
        f'1. `manage_budget` action="set" name="{name}" scope="{scope}" unit="usd" '
        f'limit={monthly_limit_usd} hard_limit={hard_limit_usd} period="month" enforcement="hard" '
        f'alert_thresholds=[{thresholds}] unpriced_policy="deny". Read it back (`lookup` what="budgets" '
        f'name="{name}"), show it.',
        f"   The ledger then refuses any call that would take spend past ${hard_limit_usd} (reservations "
        "hold even with many callers at once) and records one alert per threshold crossed "
        f"({thresholds} %).",
        f'2. Fallback: `prices` action="get" {fallback}, and for the models in use (`report` '
        'view="usage" group_by=["model"]). Write the rule the calling code follows:',
        '   - `check_budget` answers allowed=false, blocked_by.reason "limit": retry once with '
        f"{fallback} and a smaller max_output_tokens; if that is denied too, stop;",
        '   - while the budget\'s status is "warning", send simple calls to the fallback model first;',
        "   - a partial grant (a lower max_output_tokens in the answer) is used as given.",
        "   Show that code in the caller's language.",
        "3. Messages for users, from the denial's blocked_by (budget, reason, resets_at, "
        'retry_after_seconds): "The monthly AI budget is spent; it resets on <resets_at>."',
        "4. Alerts: where `tokenledger serve` runs, set TOKENLEDGER_ALERT_WEBHOOK, "
        "TOKENLEDGER_ALERT_SLACK_WEBHOOK or TOKENLEDGER_ALERT_SMTP (logs are on by default); admins see "
        "the budget on /dashboard.",
        '5. Check: `report` view="budgets" and view="forecast" since="24h"; at the current rate, when are '
        "the limit and the hard limit reached?",
    )
