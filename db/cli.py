"""``mdf db``: schema migrations."""

from __future__ import annotations

import argparse
import logging

import structlog
from alembic import command

from db.session import alembic_config
from mdf.settings import get_settings

log = structlog.get_logger(__name__)


def add_commands(subparsers: argparse._SubParsersAction) -> None:
    db = subparsers.add_parser("db", help="database schema").add_subparsers(
        dest="db_command", required=True
    )
    upgrade = db.add_parser("upgrade", help="migrate the database to this code's schema")
    upgrade.add_argument("revision", nargs="?", default="head")
    upgrade.set_defaults(handler=_upgrade)
    downgrade = db.add_parser("downgrade", help="migrate the database back")
    downgrade.add_argument("revision")
    downgrade.set_defaults(handler=_downgrade)


def upgrade(url: str, revision: str = "head") -> None:
    command.upgrade(alembic_config(url), revision)


def _upgrade(args: argparse.Namespace) -> int:
    # Show each migration as it runs, unless the log level asks for less.
    logging.getLogger("alembic").setLevel(logging.getLogger().level)
    url = get_settings().resolved_database_url
    upgrade(url, args.revision)
    log.info("database_upgraded", revision=args.revision)
    return 0


def _downgrade(args: argparse.Namespace) -> int:
    command.downgrade(alembic_config(get_settings().resolved_database_url), args.revision)
    log.info("database_downgraded", revision=args.revision)
    return 0
