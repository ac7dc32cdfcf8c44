"""Engines and sessions, and the guard that refuses an unmigrated database."""

from __future__ import annotations

from functools import cache
from pathlib import Path
from typing import Any

from alembic.config import Config
from alembic.runtime.migration import MigrationContext
from alembic.script import ScriptDirectory
from sqlalchemy import Engine, create_engine, event
from sqlalchemy.orm import Session, sessionmaker

from mdf.errors import CommandError

MIGRATIONS = Path(__file__).parent / "migrations"


class DatabaseNotMigrated(CommandError):
    """The database schema is older than this code (or absent): the operator migrates it."""


def alembic_config(url: str) -> Config:
    config = Config()
    config.set_main_option("script_location", str(MIGRATIONS))
    config.set_main_option("sqlalchemy.url", url.replace("%", "%%"))
    return config


def make_engine(url: str, **kwargs: Any) -> Engine:
    """An engine whose errors never show SQL parameters: they hold paths and clinical text."""
    if url.startswith("sqlite"):
        path = url.split("///", 1)[-1]
        if path and path != ":memory:":
            Path(path).parent.mkdir(parents=True, exist_ok=True)
        engine = create_engine(url, connect_args={"timeout": 30}, hide_parameters=True, **kwargs)
        event.listen(engine, "connect", _sqlite_pragmas)
        return engine
    return create_engine(url, pool_pre_ping=True, hide_parameters=True, **kwargs)


def _sqlite_pragmas(dbapi_connection: Any, _: Any) -> None:
    # WAL lets the scheduler and several workers read while one writes.
    cursor = dbapi_connection.cursor()
    cursor.execute("PRAGMA journal_mode=WAL")
    cursor.execute("PRAGMA foreign_keys=ON")
    cursor.execute("PRAGMA busy_timeout=30000")
    cursor.close()


def head_revision() -> str | None:
    return ScriptDirectory.from_config(alembic_config("sqlite://")).get_current_head()


def check_migrated(engine: Engine) -> None:
    with engine.connect() as connection:
        current = MigrationContext.configure(connection).get_current_revision()
    head = head_revision()
    if current != head:
        raise DatabaseNotMigrated(
            f"database {engine.url.render_as_string(hide_password=True)} is at schema revision "
            f"{current or 'none'}, this code needs {head}: run `mdf db upgrade` first"
        )


@cache
def _factory(url: str) -> sessionmaker[Session]:
    engine = make_engine(url)
    check_migrated(engine)
    return sessionmaker(engine, expire_on_commit=False)


def session_factory(url: str) -> sessionmaker[Session]:
    """A session factory for a migrated database (one engine per URL and process)."""
    return _factory(url)
