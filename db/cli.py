"""``mdf db``: schema migrations."""

from __future__ import annotations

import argparse
import logging
from collections.abc import Callable

import sqlalchemy as sa
import structlog
from alembic import command, util
from alembic.runtime.migration import MigrationContext

from db.identifying import ANALYST_VIEWS
from db.session import alembic_config, head_revision, make_engine
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


def grant_analyst_views(url: str, role: str) -> bool:
    """Create ``role`` if missing (NOLOGIN: an operator grants it to login roles) and let it
    SELECT the analysts' views, and no table: the views carry no identifying column.

    A view reads its tables with its owner's rights, so the role needs none on them. Below
    the head revision the views may be older ones that still show file names: the role
    then gets nothing. SQLite has no roles: whoever opens the file reads it all (False).
    """
    engine = make_engine(url)
    try:
        if engine.dialect.name != "postgresql":
            return False
        with engine.begin() as connection:
            quoted = connection.dialect.identifier_preparer.quote(role)
            connection.execute(
                sa.text(
                    f"DO $$ BEGIN CREATE ROLE {quoted} NOLOGIN; "
                    "EXCEPTION WHEN duplicate_object THEN NULL; END $$"
                )
            )
            connection.execute(sa.text(f"REVOKE ALL ON ALL TABLES IN SCHEMA public FROM {quoted}"))
            connection.execute(
                sa.text(f"REVOKE ALL ON ALL SEQUENCES IN SCHEMA public FROM {quoted}")
            )
            connection.execute(sa.text(f"GRANT USAGE ON SCHEMA public TO {quoted}"))
            current = MigrationContext.configure(connection).get_current_revision()
            # alembic_version too: the analysts' commands check the schema's revision.
            for view in ("alembic_version", *ANALYST_VIEWS) if current == head_revision() else ():
                connection.execute(sa.text(f"GRANT SELECT ON {view} TO {quoted}"))
        return True
    finally:
        engine.dispose()


def _upgrade(args: argparse.Namespace, settings: Settings) -> int:
    # Show each migration as it runs, unless the log level asks for less.
    logging.getLogger("alembic").setLevel(logging.getLogger().level)
    _migrate(command.upgrade, settings, args.revision)
    if grant_analyst_views(settings.resolved_database_url, settings.analyst_role):
        log.info("analyst_role_granted", role=settings.analyst_role, views=list(ANALYST_VIEWS))
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
