"""`tokenledger db status | stop`: the embedded PostgreSQL, which outlives the commands that start it.

With no TOKENLEDGER_DATABASE_URL, the first command or server that needs the ledger starts a
PostgreSQL server under $TOKENLEDGER_HOME/pgdata and leaves it running, so that the next one (an IDE
starts and stops stdio servers all day) connects at once. `db status` shows it; `db stop` stops it.
"""

from __future__ import annotations

import argparse
import sys
from typing import Any

from tokenledger.errors import TokenLedgerError
from tokenledger.settings import Settings
from tokenledger.store import EmbeddedServer, embedded_status, shutdown_embedded


def register(subparsers: Any) -> None:
    db = subparsers.add_parser(
        "db",
        help="status or stop of the embedded PostgreSQL (it keeps running after servers stop)",
        description=(
            "The embedded PostgreSQL under $TOKENLEDGER_HOME/pgdata (used when TOKENLEDGER_DATABASE_URL "
            "is unset) keeps running after `tokenledger serve` and every other command exit, so the next "
            "start is fast. `db status` shows whether it runs; `db stop` stops it (the next command that "
            "needs it starts it again)."
        ),
    )
    actions = db.add_subparsers(dest="action", metavar="ACTION", required=True)
    status = actions.add_parser("status", help="whether it runs: data directory, socket or port, PID")
    status.set_defaults(handler=status_command)
    stop = actions.add_parser("stop", help="stop it cleanly (refused while tokenledger processes use it)")
    stop.add_argument(
        "--force", action="store_true", help="stop it even while tokenledger processes are connected"
    )
    stop.set_defaults(handler=stop_command)


def status_command(args: argparse.Namespace) -> int:
    """Print the embedded server's state; exit 0 if it runs, 3 if not (as `pg_ctl status` does)."""
    settings = _embedded_settings()
    server = embedded_status(settings.home)
    if server is None:
        print(f"embedded PostgreSQL: not created yet (it would live in {settings.home / 'pgdata'})")
        return 3
    print(f"embedded PostgreSQL: {'running' if server.running else 'stopped'}")
    print(f"  data directory: {server.data_dir}")
    if server.running:
        for label, value in _details(server):
            print(f"  {label}: {value}")
    return 0 if server.running else 3


def stop_command(args: argparse.Namespace) -> int:
    settings = _embedded_settings()
    server = embedded_status(settings.home)
    if server is None or not server.running:
        print(f"embedded PostgreSQL: not running ({settings.home / 'pgdata'})")
        return 0
    if server.users and not args.force:
        pids = ", ".join(str(pid) for pid in server.users)
        raise TokenLedgerError(
            f"the embedded PostgreSQL is in use by tokenledger process(es) {pids}: stop them first, "
            "or give --force (their calls then fail until it is started again)"
        )
    shutdown_embedded(settings.home)
    print(f"stopped the embedded PostgreSQL (PID {server.pid}, {server.data_dir})")
    return 0


def _embedded_settings() -> Settings:
    settings = Settings.from_env()
    if settings.database_url:
        print(
            "note: TOKENLEDGER_DATABASE_URL is set, so tokenledger uses that database, not this one",
            file=sys.stderr,
        )
    return settings


def _details(server: EmbeddedServer) -> list[tuple[str, str]]:
    listens = (
        f"Unix socket in {server.socket_dir} (port number {server.port}; no TCP address)"
        if server.socket_dir is not None
        else f"{server.host}:{server.port}"
    )
    users = ", ".join(str(pid) for pid in server.users) or "none"
    started = server.started_at.isoformat(timespec="seconds") if server.started_at else "-"
    return [("PID", str(server.pid)), ("listens on", listens), ("started", started), ("used by", users)]
