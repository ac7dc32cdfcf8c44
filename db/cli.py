"""``mdf db``: schema migrations."""

from __future__ import annotations

import argparse
import logging
from collections.abc import Callable

import structlog
from alembic import command, util

from db.session import alembic_config
from mdf.errors import CommandError
from mdf.settings import Settings

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


def _upgrade(args: argparse.Namespace, settings: Settings) -> int:
    # Show each migration as it runs, unless the log level asks for less.
    logging.getLogger("alembic").setLevel(logging.getLogger().level)
    _migrate(command.upgrade, settings, args.revision)
    log.info("database_upgraded", revision=args.revision)
    return 0


def _downgrade(args: argparse.Namespace, settings: Settings) -> int:
    _migrate(command.downgrade, settings, args.revision)
    log.info("database_downgraded", revision=args.revision)
    return 0


def _migrate(step: Callable[..., None], settings: Settings, revision: str) -> None:
    """Run an Alembic command; an unknown revision is the operator's to correct."""
    try:
        step(alembic_config(settings.resolved_database_url), revision)
    except util.CommandError as error:
        raise CommandError(str(error)) from error
