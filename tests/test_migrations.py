"""A fresh install (schema.sql) and the numbered migrations applied one by one give the same schema."""

from __future__ import annotations

import os
from collections.abc import Iterator

import psycopg
import pytest

from tests.conftest import drop_database, with_database
from tokenledger.store import Store, migrations

pytestmark = pytest.mark.anyio


@pytest.fixture
def empty_databases(server_dsn: str) -> Iterator[tuple[str, str]]:
    names = (f"tl_fresh_install_{os.getpid()}", f"tl_stepwise_{os.getpid()}")  # one per pytest worker
    with psycopg.connect(server_dsn, autocommit=True) as conn:
        for name in names:
            conn.execute(f"drop database if exists {name} with (force)")
            conn.execute(f"create database {name}")
    yield with_database(server_dsn, names[0]), with_database(server_dsn, names[1])
    for name in names:
        drop_database(server_dsn, name)


async def test_fresh_install_equals_step_by_step(empty_databases: tuple[str, str]) -> None:
    fresh_dsn, stepwise_dsn = empty_databases
    fresh = await Store.open(fresh_dsn)  # takes schema.sql whole

    stepwise = await Store.open(stepwise_dsn, migrate=False)
    steps = migrations()
    assert len(steps) >= 2
    # Apply the first migration, then let migrate() bring the rest, as an upgrade would.
    async with stepwise.pool.connection() as conn, conn.transaction():
        await conn.execute(steps[0].path.read_text())
        await conn.execute(
            "create table tl_migrations (version text primary key, checksum text not null,"
            " applied_at timestamptz not null default now())"
        )
        await conn.execute(
            "insert into tl_migrations (version, checksum) values (%s, 'x')", (steps[0].version,)
        )
    applied = await stepwise.migrate()
    assert applied[: len(steps) - 1] == [m.version for m in steps[1:]]

    try:
        fresh_schema = await fresh.schema_signature()
        assert len(fresh_schema) > 50
        assert fresh_schema == await stepwise.schema_signature()
        assert await fresh.migrate() == [] and await stepwise.migrate() == []
    finally:
        await fresh.close()
        await stepwise.close()
