"""Configuration, read once from the environment into a settings object that is passed down."""

from __future__ import annotations

import os
from dataclasses import dataclass, field
from pathlib import Path

from tokenledger.secrets import VaultConfig

DEFAULT_HOME = Path("~/.local/share/tokenledger")


@dataclass(frozen=True)
class Settings:
    home: Path
    database_url: str | None  # None: the embedded PostgreSQL under `home`
    pool_min_size: int = 1
    pool_max_size: int = 10
    stdio_tenant: str = "default"
    stdio_role: str = "admin"
    stdio_user: str | None = None
    extra: dict[str, str] = field(default_factory=dict)
    vault: VaultConfig = field(default_factory=VaultConfig)  # how `vault:` references are read

    @classmethod
    def from_env(cls, environ: dict[str, str] | None = None) -> Settings:
        env = dict(os.environ if environ is None else environ)
        home = Path(env.get("TOKENLEDGER_HOME") or DEFAULT_HOME).expanduser()
        return cls(
            home=home,
            database_url=env.get("TOKENLEDGER_DATABASE_URL") or None,
            pool_min_size=int(env.get("TOKENLEDGER_POOL_MIN", "1")),
            pool_max_size=int(env.get("TOKENLEDGER_POOL_MAX", "10")),
            stdio_tenant=env.get("TOKENLEDGER_TENANT", "default"),
            stdio_role=env.get("TOKENLEDGER_ROLE", "admin"),
            stdio_user=env.get("TOKENLEDGER_USER") or None,
            vault=VaultConfig.from_env(env),
        )
