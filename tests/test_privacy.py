"""Privacy: pseudonyms of user ids for viewers (reports in every view and format, exports, the dashboard,
scheduled reports, chargeback by user) when the tenant's setting is on; prompt hashes keyed per tenant."""

from __future__ import annotations

import hashlib
import json
import re
from datetime import UTC, datetime, timedelta
from decimal import Decimal
from pathlib import Path
from typing import Any, get_args

import pytest

from tokenledger import dashboard, digest, notices, privacy, reports
from tokenledger.cli import main
from tokenledger.errors import InvalidInput, PermissionDenied
from tokenledger.integrations import SyncLedger
from tokenledger.ledger import TENANT_SECRET_TTL_SECONDS, Ledger
from tokenledger.reports import ReportQuery
from tokenledger.schedules import Delivery
from tokenledger.types import BudgetSpec, CheckRequest, Principal, TrackRequest

pytestmark = pytest.mark.anyio

ALICE, BOB = "alice@example.com", "bob.jones"
ADMIN = Principal()
VIEWER = Principal(role="viewer")
MEMBER = Principal(role="member", user=ALICE)
PSEUDONYM = re.compile(r"user-[0-9a-f]{12}")
WHEN = datetime.now(UTC) - timedelta(minutes=10)
PERIOD = reports.current_month(WHEN, "UTC")
# Every report view, with the grouping that puts users in it where it has one.
VIEWS: list[dict[str, Any]] = [
    {"view": "summary"},
    {"view": "usage", "group_by": ["user", "model"]},
    {"view": "timeseries", "group_by": ["user"], "bucket": "day"},
    {"view": "budgets"},
    {"view": "forecast"},
    {"view": "top"},
    {"view": "recommendations"},
    {"view": "accuracy"},
    {"view": "chargeback", "by": "user", "period": PERIOD},
]


async def seed(ledger: Ledger, tenant: str = "default") -> None:
    """Usage of two users, a budget scoped to one of them, and a denial of hers."""
    admin = Principal(tenant_id=tenant)
    await ledger.set_budget(
        BudgetSpec(name="cap-1", scope=f"user:{ALICE}", limit=Decimal(100_000), period="month"), admin
    )
    for user, model in ((ALICE, "gpt-4o"), (ALICE, "gpt-4o-mini"), (BOB, "gpt-4o")):
        await ledger.track_usage(
            TrackRequest(
                model=model, user=user, team="search", input_tokens=900, output_tokens=90, occurred_at=WHEN
            ),
            admin,
        )
    denied = await ledger.check_budget(
        CheckRequest(model="gpt-4o", user=ALICE, input_tokens=200_000, max_output_tokens=10), admin
    )
    assert denied.decision == "deny"


async def pseudonymize(ledger: Ledger, on: bool = True, tenant: str = "default") -> None:
    await ledger.set_tenant_setting("pseudonymize_users", on, Principal(tenant_id=tenant))


async def every_view(ledger: Ledger, principal: Principal) -> str:
    """What `principal` reads in every view, as json, markdown and csv, all together."""
    texts = []
    for fields in VIEWS:
        report = await ledger.report(ReportQuery.model_validate(fields), principal)
        for fmt in get_args(reports.Format):
            shown = reports.formatted(report, fmt)
            texts += [shown.model_dump_json(), shown.text or ""]
    return "\n".join(texts)


def users_of(report: reports.Report) -> list[Any]:
    return sorted(str(row["user"]) for row in report.rows)


# --- who sees what -------------------------------------------------------------------------------


async def test_a_viewer_reads_pseudonyms_in_every_view_and_format_when_the_setting_is_on(
    ledger: Ledger,
) -> None:
    await seed(ledger)
    before = await every_view(ledger, VIEWER)
    assert ALICE in before and BOB in before  # off (the default): real ids, as before
    elsewhere = Ledger(ledger.store)  # another server process: its settings cache has "off"
    assert ALICE in await every_view(elsewhere, VIEWER)
    await pseudonymize(ledger)
    assert ALICE not in await every_view(elsewhere, VIEWER)  # at once, not when its cache expires
    after = await every_view(ledger, VIEWER)
    assert ALICE not in after and BOB not in after and "alice" not in after
    alice = await ledger.shown_user(VIEWER, ALICE)
    assert alice is not None and PSEUDONYM.fullmatch(alice) and f"user:{alice}" in after
    usage = await ledger.report(ReportQuery(view="usage", group_by=["user"]), VIEWER)
    assert users_of(usage) == sorted([alice, str(await ledger.shown_user(VIEWER, BOB))])
    chargeback = await ledger.report(ReportQuery(view="chargeback", by="user", period=PERIOD), VIEWER)
    bob = await ledger.shown_user(VIEWER, BOB)
    assert {row["cost_centre"] for row in chargeback.rows} == {alice, bob, None}  # None: the total
    [budget] = await ledger.list_budgets(VIEWER)
    assert budget.spec.scope == budget.state.scope == f"user:{alice}"
    assert (await ledger.get_budget("cap-1", VIEWER)).spec.scope == f"user:{alice}"


async def test_admins_see_real_ids_and_members_their_own(ledger: Ledger) -> None:
    await seed(ledger)
    await pseudonymize(ledger)
    admin_view = await every_view(ledger, ADMIN)
    assert ALICE in admin_view and BOB in admin_view
    mine = await ledger.report(ReportQuery(view="usage", group_by=["user"]), MEMBER)
    assert users_of(mine) == [ALICE]
    assert (await ledger.get_budget("cap-1", MEMBER)).spec.scope == f"user:{ALICE}"
    assert await ledger.shown_user(ADMIN, ALICE) == ALICE == await ledger.shown_user(MEMBER, ALICE)


async def test_pseudonyms_are_stable_and_differ_across_tenants(ledger: Ledger) -> None:
    await seed(ledger)
    await seed(ledger, "acme")
    await pseudonymize(ledger)
    await pseudonymize(ledger, tenant="acme")
    query = ReportQuery(view="usage", group_by=["user"])
    first = users_of(await ledger.report(query, VIEWER))
    assert first == users_of(await ledger.report(query, VIEWER))  # stable across calls
    ledger._keys.clear()  # and across processes: the secret is stored, not made per process
    assert first == users_of(await ledger.report(query, VIEWER))
    other = users_of(await ledger.report(query, Principal(tenant_id="acme", role="viewer")))
    assert len(other) == 2 and not set(first) & set(other)


async def test_a_viewer_filters_by_pseudonym_and_never_by_a_real_id(ledger: Ledger) -> None:
    await seed(ledger)
    await pseudonymize(ledger)
    alice = await ledger.shown_user(VIEWER, ALICE)
    assert alice is not None
    hers = await ledger.report(ReportQuery(view="usage", group_by=["user"], user=alice), VIEWER)
    assert [(row["user"], row["requests"]) for row in hers.rows] == [(alice, 2)]
    top = await ledger.report(ReportQuery(view="top", user=alice), VIEWER)
    assert [row["user"] for row in top.rows] == [alice, alice]
    # A pseudonym of nobody (or of no usage in the window) finds nothing, as an unknown id does for an admin.
    nobody = await ledger.report(ReportQuery(view="top", user="user-000000000000"), VIEWER)
    assert nobody.rows == [] and nobody.totals == {"requests": 0, "cost_usd": "0"}
    with pytest.raises(InvalidInput) as error:  # a real id would tell a viewer whose pseudonym it is
        await ledger.report(ReportQuery(view="top", user=ALICE), VIEWER)
    assert error.value.field == "user" and "pseudonym" in str(error.value)


async def test_the_dashboard_shows_a_viewer_pseudonyms(ledger: Ledger) -> None:
    await seed(ledger)
    page = dashboard.render(await ledger.dashboard(VIEWER))
    assert ALICE in page  # off
    await pseudonymize(ledger)
    data = await ledger.dashboard(VIEWER)
    page = dashboard.render(data)
    alice = await ledger.shown_user(VIEWER, ALICE)
    assert ALICE not in page and BOB not in page and str(alice) in page
    assert [d.user for d in data.decisions] == [alice]
    assert ALICE in dashboard.render(await ledger.dashboard(ADMIN))


def delivery(view: str, by: str | None) -> Delivery:
    now = datetime.now(UTC)
    return Delivery.model_validate(
        {"tenant_id": "default", "schedule": "daily", "run_id": 1, "occurrence": now, "kind": "scheduled",
         "since": now - timedelta(days=1), "until": now, "sink": "email:x", "attempt": 1, "view": view,
         "every": "day", "at": "08:00", "timezone": "UTC", "destination": "email", "by": by}
    )  # fmt: skip


async def scheduled_email(ledger: Ledger, view: str, by: str | None) -> str:
    """The email (text and HTML) and webhook body a scheduled report's run sends."""
    run = delivery(view, by)
    notice = digest.report_notice(await ledger.scheduled_report(run), run)
    message = notices.email_message(notice, sender="ledger@example.test", recipients=["ops@example.test"])
    return message.as_string() + json.dumps(notice.slack()) + json.dumps(notice.webhook())


async def test_scheduled_reports_run_as_a_viewer_and_show_pseudonyms(ledger: Ledger) -> None:
    await seed(ledger)
    runs = [("usage", "user"), ("chargeback", "user"), ("budgets", None)]
    assert all([ALICE in await scheduled_email(ledger, view, by) for view, by in runs])
    await pseudonymize(ledger)
    alice = str(await ledger.shown_user(VIEWER, ALICE))
    for view, by in runs:
        sent = await scheduled_email(ledger, view, by)
        assert ALICE not in sent and BOB not in sent and alice in sent, view


def test_a_viewers_export_from_the_command_line(
    dsn: str, tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    monkeypatch.setenv("TOKENLEDGER_DATABASE_URL", dsn)
    with SyncLedger.open(dsn=dsn, migrate=False) as ledger:
        ledger.track_usage(TrackRequest(model="gpt-4o", user=ALICE, input_tokens=9, output_tokens=1))
    assert main(["settings", "set", "pseudonymize_users", "true"]) == 0
    monkeypatch.setenv("TOKENLEDGER_ROLE", "viewer")
    export = tmp_path / "usage.csv"
    args = ["report", "--view", "usage", "--group-by", "user", "--format", "csv", "--output", str(export)]
    assert main(args) == 0
    text = export.read_text()
    assert ALICE not in text and PSEUDONYM.search(text)
    monkeypatch.setenv("TOKENLEDGER_ROLE", "admin")
    assert main(args) == 0 and ALICE in export.read_text()
    capsys.readouterr()


async def test_the_setting_is_an_admins_boolean(ledger: Ledger) -> None:
    with pytest.raises(InvalidInput) as error:
        await ledger.set_tenant_setting("pseudonymize_users", "yes")
    assert error.value.field == "value"
    with pytest.raises(PermissionDenied):
        await ledger.set_tenant_setting("pseudonymize_users", True, VIEWER)
    assert (await ledger.tenant_settings()).pseudonymize_users is False


# --- keyed prompt hashes -------------------------------------------------------------------------


PROMPT = "yes"  # short: its plain SHA-256 is found by hashing guesses


async def stored_hashes(ledger: Ledger, table: str) -> dict[str, list[str]]:
    rows = await ledger.store._fetch_rows(
        f"select tenant_id, prompt_hash from {table} where prompt_hash is not null order by tenant_id", ()
    )
    found: dict[str, list[str]] = {}
    for row in rows:
        found.setdefault(row["tenant_id"], []).append(row["prompt_hash"])
    return found


async def test_prompt_hashes_are_keyed_per_tenant(ledger: Ledger) -> None:
    plain = hashlib.sha256(PROMPT.encode()).hexdigest()
    for tenant in ("default", "acme"):
        await ledger.check_budget(CheckRequest(model="gpt-4o", text=PROMPT), Principal(tenant_id=tenant))
    held = await stored_hashes(ledger, "tl_reservation")
    assert held["default"][0] != held["acme"][0] and plain not in (held["default"][0], held["acme"][0])
    # A client's own hash of the prompt (64 hex) is keyed the same way: it matches the ledger's.
    await ledger.track_usage(TrackRequest(model="gpt-4o", prompt_hash=plain, input_tokens=1, output_tokens=1))
    await ledger.track_usage(TrackRequest(model="gpt-4o", input_text=PROMPT, output_tokens=1))
    assert (await stored_hashes(ledger, "tl_usage"))["default"] == [held["default"][0]] * 2


async def repeats(ledger: Ledger) -> list[str]:
    report = await ledger.report(ReportQuery(view="recommendations"))
    return [str(row["evidence"]) for row in report.rows if row["kind"] == "repeated_prompts"]


async def test_repeated_prompts_are_still_found_and_old_plain_hashes_group_among_themselves(
    ledger: Ledger,
) -> None:
    for _ in range(2):
        await ledger.track_usage(TrackRequest(model="gpt-4o", input_text=PROMPT, output_tokens=10))
    [evidence] = await repeats(ledger)
    assert evidence.startswith("1 of 2 calls repeated one of 1 identical prompts")
    # Rows recorded before keyed hashes hold the plain SHA-256: they still group among themselves, and a
    # window over both counts the prompt twice (once per hash).
    plain = hashlib.sha256(PROMPT.encode()).hexdigest()
    async with ledger.store.pool.connection() as conn:
        await conn.execute("update tl_usage set prompt_hash = %s", (plain,))
    for _ in range(2):
        await ledger.track_usage(TrackRequest(model="gpt-4o", input_text=PROMPT, output_tokens=10))
    [evidence] = await repeats(ledger)
    assert evidence.startswith("2 of 4 calls repeated one of 2 identical prompts")


# --- the secret ----------------------------------------------------------------------------------


async def test_rotating_the_secret_changes_pseudonyms_and_new_prompt_hashes(
    ledger: Ledger, capsys: pytest.CaptureFixture[str]
) -> None:
    await seed(ledger)
    await pseudonymize(ledger)
    before = await ledger.shown_user(VIEWER, ALICE)
    await ledger.check_budget(CheckRequest(model="gpt-4o", text=PROMPT))
    [secret_before] = await ledger.store._fetch_rows("select secret from tl_tenant_secret", ())
    for role in ("viewer", "member"):
        with pytest.raises(PermissionDenied):
            await ledger.rotate_tenant_secret(Principal(role=role, user=ALICE))  # type: ignore[arg-type]
    rotated = await ledger.rotate_tenant_secret()
    assert set(rotated) == {"tenant", "rotated_at"}  # the secret is never returned
    after = await ledger.shown_user(VIEWER, ALICE)
    assert after != before and after is not None and PSEUDONYM.fullmatch(after)
    await ledger.check_budget(CheckRequest(model="gpt-4o", text=PROMPT))
    first, second = (await stored_hashes(ledger, "tl_reservation"))["default"]
    assert first != second
    [audit] = [a for a in await ledger.store.audit_log(tenant="default") if a["action"] == "rotate"]
    assert audit["before"] is None and set(audit["after"]) == {"rotated_at"}
    [secret_after] = await ledger.store._fetch_rows("select secret from tl_tenant_secret", ())
    assert len(secret_after["secret"]) == privacy.SECRET_BYTES and secret_after != secret_before
    assert TENANT_SECRET_TTL_SECONDS == 30  # other processes take the new secret within this, as documented


def test_the_command_line_rotates_the_secret(
    dsn: str, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    monkeypatch.setenv("TOKENLEDGER_DATABASE_URL", dsn)
    assert main(["settings", "rotate-secret"]) == 0
    assert "secret rotated" in capsys.readouterr().out
    monkeypatch.setenv("TOKENLEDGER_ROLE", "viewer")
    assert main(["settings", "rotate-secret"]) == 1
    assert "cannot rotate" in capsys.readouterr().err


def test_keys_never_show_in_a_repr_and_pseudonyms_take_only_their_shape() -> None:
    keys = privacy.TenantKeys.from_secret(b"s" * privacy.SECRET_BYTES)
    mask = privacy.UserMask(keys)
    assert keys.pseudonym_key.hex() not in repr(keys) and "s" * 8 not in repr(mask)
    with pytest.raises(ValueError, match="32 bytes"):
        privacy.TenantKeys.from_secret(b"short")
    shown = mask.user(ALICE)
    assert shown == mask.user(ALICE) and shown != mask.user(BOB) and mask.user(None) is None
    assert mask.real_user(str(shown), [BOB, ALICE]) == ALICE and mask.real_user(str(shown), [BOB]) is None
    assert mask.scope("team:search") == "team:search" and mask.scope(f"user:{ALICE}") == f"user:{shown}"
    with pytest.raises(InvalidInput):
        mask.real_user(str(shown).upper(), [ALICE])
