"""Counting in SQL: tokenledger's PL/Python `tiktoken_count`/`tiktoken_encode` equal the Python counter.

The pure-Python BPE they run is checked here against tiktoken; the SQL functions themselves run where
the server has PL/Python: CI's `make ledger-debian` run on Debian's PostgreSQL (with
postgresql-plpython3-NN, installed by .ci/run). There a missing plpython3u fails the test, never skips it.
"""

from __future__ import annotations

import os
from typing import Any

import psycopg
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from psycopg import conninfo, sql

from tokenledger import plpython_counting, tokens
from tokenledger.cli import main
from tokenledger.errors import NotFound, TokenLedgerError
from tokenledger.ledger import Ledger
from tokenledger.store import Store
from tokenledger.tokenizers import pure_bpe

from .test_tokens import CORPUS

pytestmark = pytest.mark.anyio

_built: dict[str, pure_bpe.Encoding] = {}


def pure(encoding: str) -> pure_bpe.Encoding:
    if encoding not in _built:
        rank_file, pattern = plpython_counting._specs()[encoding]
        _built[encoding] = pure_bpe.Encoding(pure_bpe.read_ranks(tokens.rank_file_bytes(rank_file)), pattern)
    return _built[encoding]


# --- the pure-Python BPE the SQL functions run ---------------------------------------------------


@pytest.mark.parametrize("encoding", ["o200k_base", "cl100k_base", "r50k_base"])
def test_pure_bpe_encodes_the_corpus_like_tiktoken(encoding: str) -> None:
    reference = tokens.get_encoding(encoding)
    for text in CORPUS:
        assert pure(encoding).encode_ordinary(text) == reference.encode_ordinary(text), text[:40]


# Characters this Python's Unicode database knows (tiktoken's may be newer), and the separators
# U+001C..U+001F where Python's `\s` and Rust's differ.
_TEXT = st.text(
    st.one_of(st.characters(exclude_categories=["Cn", "Cs"]), st.sampled_from("\x1c\x1d\x1e\x1f \n\r\t")),
    max_size=300,
)


@settings(max_examples=150, deadline=None)
@given(text=_TEXT, encoding=st.sampled_from(["o200k_base", "cl100k_base"]))
def test_pure_bpe_encodes_any_text_like_tiktoken(text: str, encoding: str) -> None:
    assert pure(encoding).encode_ordinary(text) == tokens.get_encoding(encoding).encode_ordinary(text)


def test_a_long_piece_merges_in_n_log_n() -> None:
    text = "x" * 50_000 + "é" * 20_000  # one regex piece each
    assert pure("o200k_base").count(text) == len(tokens.get_encoding("o200k_base").encode_ordinary(text))


# --- on the server ---------------------------------------------------------------------------------


async def _plpython_or_fail(ledger: Ledger, dsn: str) -> dict[str, Any]:
    """The server's counting support; a skip only where the test cannot apply (no PL/Python and not
    CI's Debian run), a failure where it must (TOKENLEDGER_TEST_DEBIAN_URL names this server)."""
    support = await ledger.counting_support()
    if support["plpython_available"]:
        return support
    debian = os.environ.get("TOKENLEDGER_TEST_DEBIAN_URL")
    testing = os.environ.get("TOKENLEDGER_TEST_DATABASE_URL")
    if debian and testing == debian:
        pytest.fail(
            f"Debian's PostgreSQL at {debian} has no plpython3u: .ci/run installs "
            f"{support['plpython_package']}",
            pytrace=False,
        )
    pytest.skip("needs PL/Python: runs on Debian's PostgreSQL in `make ledger-debian`")


async def test_install_counting_says_what_is_missing_or_installs(ledger: Ledger) -> None:
    support = await ledger.counting_support()
    assert support["backend"] is None
    with pytest.raises(NotFound, match="sql install-counting"):
        await ledger.count_in_database(["hello"])
    if support["plpython_available"]:  # Debian's server in CI: see the test below
        return
    with pytest.raises(TokenLedgerError) as refused:
        await ledger.install_counting()
    package = f"postgresql-plpython3-{support['major_version']}"
    assert f"apt-get install {package}" in str(refused.value) and "pg_tiktoken" in str(refused.value)
    assert (await ledger.counting_support())["backend"] is None  # nothing was created


@pytest.mark.ledger
async def test_sql_counting_equals_the_python_counter(ledger: Ledger, dsn: str) -> None:
    await _plpython_or_fail(ledger, dsn)
    installed = await ledger.install_counting()
    assert installed["backend"] == "plpython" and installed["plpython"]
    counter = tokens.TokenCounter()
    for encoding in ("o200k_base", "cl100k_base"):
        counted = await ledger.count_in_database(CORPUS, encoding)
        assert counted.method == "pg_tiktoken"
        assert counted.per_text == [counter.count_text(text, encoding=encoding).tokens for text in CORPUS]
    assert ledger.counter.stats()["methods"]["pg_tiktoken"]["calls"] == 2
    with psycopg.connect(dsn, autocommit=True) as conn:
        conn.execute("create table notes (body text)")
        conn.execute("insert into notes select unnest(%s::text[])", (CORPUS[:8],))
        total = conn.execute("select sum(tiktoken_count('o200k_base', body)) from notes").fetchone()
        assert total == (sum(counter.count_text(t).tokens for t in CORPUS[:8]),)
        text = CORPUS[3]
        encoded = conn.execute("select tiktoken_encode('cl100k_base', %s)", (text,)).fetchone()
        assert encoded == (tokens.get_encoding("cl100k_base").encode_ordinary(text),)
        assert conn.execute("select tiktoken_count('o200k_base', null)").fetchone() == (None,)
        with pytest.raises(psycopg.Error, match="unknown encoding; one of cl100k_base"):
            conn.execute("select tiktoken_count('o300k', 'hi')")


@pytest.mark.ledger
async def test_a_tampered_rank_file_is_refused(ledger: Ledger, dsn: str) -> None:
    await _plpython_or_fail(ledger, dsn)
    await ledger.install_counting()
    with psycopg.connect(dsn, autocommit=True) as conn:
        conn.execute(
            "update tiktoken_rank_file set contents = contents || 'x'::bytea where rank_file = 'r50k_base'"
        )
    with psycopg.connect(dsn, autocommit=True) as conn, pytest.raises(psycopg.Error, match="pinned SHA-256"):
        conn.execute("select tiktoken_count('r50k_base', 'hi')")


@pytest.mark.ledger
async def test_doctor_and_the_cli_report_sql_counting(
    ledger: Ledger, dsn: str, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    await _plpython_or_fail(ledger, dsn)
    monkeypatch.setenv("TOKENLEDGER_DATABASE_URL", dsn)
    assert await _cli(["doctor"]) == 0
    assert (
        "counting in SQL: PL/Python available: `tokenledger sql install-counting`" in capsys.readouterr().out
    )
    assert await _cli(["sql", "install-counting"]) == 0
    assert await _cli(["sql", "count", "hello world"]) == 0
    out = capsys.readouterr().out
    assert "self-test: tiktoken_count('o200k_base', ...)" in out and "2 tokens (o200k_base" in out
    assert await _cli(["doctor"]) == 0
    assert "tokenledger's PL/Python tiktoken_count installed" in capsys.readouterr().out


async def _cli(argv: list[str]) -> int:
    import anyio

    return await anyio.to_thread.run_sync(main, argv)


@pytest.mark.ledger
async def test_install_counting_needs_a_superuser(ledger: Ledger, dsn: str) -> None:
    await _plpython_or_fail(ledger, dsn)
    role = f"tl_not_super_{os.getpid()}"
    with psycopg.connect(dsn, autocommit=True) as conn:
        conn.execute(sql.SQL("create role {} login").format(sql.Identifier(role)))
    try:
        params = conninfo.conninfo_to_dict(dsn)
        params["user"] = role
        store = await Store.open(conninfo.make_conninfo("", **params), migrate=False)  # type: ignore[arg-type]
        try:
            with pytest.raises(TokenLedgerError, match="needs a superuser connection"):
                await Ledger(store).install_counting()
        finally:
            await store.close()
    finally:
        with psycopg.connect(dsn, autocommit=True) as conn:
            conn.execute(sql.SQL("drop role {}").format(sql.Identifier(role)))
