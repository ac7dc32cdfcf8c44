"""Shared fixtures: a migrated database on SQLite and PostgreSQL, a real Redis, settings.

PostgreSQL and Redis are real servers. ``MDF_TEST_POSTGRES_URL`` names an admin
URL of a PostgreSQL server (CI sets it). Without it the tests use a server that
answers as ``postgres`` on 127.0.0.1:5432, and skip the PostgreSQL variants when none
does (set the variable empty to skip them anyway). ``MDF_TEST_REDIS_URL`` names a
Redis server; without it each test run starts the embedded Redis in a temporary
folder.
"""

from __future__ import annotations

import os
import uuid
from collections.abc import Iterator
from pathlib import Path

import pytest
import redis
import sqlalchemy as sa

from db.cli import upgrade
from mdf.broker import ensure_embedded_redis, stop_embedded_redis
from mdf.settings import Settings

LOCAL_POSTGRES_URL = "postgresql+psycopg://postgres@127.0.0.1:5432/postgres"


def _postgres_admin_url() -> str | None:
    """The variable when it is set, else the local server when it answers."""
    if "MDF_TEST_POSTGRES_URL" in os.environ:
        return os.environ["MDF_TEST_POSTGRES_URL"] or None
    engine = sa.create_engine(LOCAL_POSTGRES_URL, connect_args={"connect_timeout": 2})
    try:
        with engine.connect():
            return LOCAL_POSTGRES_URL
    except sa.exc.OperationalError:
        return None
    finally:
        engine.dispose()


POSTGRES_ADMIN_URL = _postgres_admin_url()
# One template per test session: two sessions at once (a developer's and CI's) must not
# drop each other's.
TEMPLATE_DB = f"mdf_test_template_{uuid.uuid4().hex[:12]}"


def _postgres_admin() -> sa.Engine:
    assert POSTGRES_ADMIN_URL
    return sa.create_engine(POSTGRES_ADMIN_URL, isolation_level="AUTOCOMMIT")


@pytest.fixture(scope="session")
def postgres_template() -> Iterator[str]:
    """A migrated template database; each test gets a fresh copy of it."""
    if not POSTGRES_ADMIN_URL:
        pytest.skip("no PostgreSQL: MDF_TEST_POSTGRES_URL is empty or none answers locally")
    admin = _postgres_admin()
    with admin.connect() as connection:
        connection.execute(sa.text(f"DROP DATABASE IF EXISTS {TEMPLATE_DB} WITH (FORCE)"))
        connection.execute(sa.text(f"CREATE DATABASE {TEMPLATE_DB}"))
    url = sa.make_url(POSTGRES_ADMIN_URL).set(database=TEMPLATE_DB)
    upgrade(url.render_as_string(hide_password=False))
    yield TEMPLATE_DB
    with admin.connect() as connection:
        connection.execute(sa.text(f"DROP DATABASE IF EXISTS {TEMPLATE_DB} WITH (FORCE)"))
    admin.dispose()


@pytest.fixture(params=["sqlite", "postgresql"])
def database_url(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[str]:
    """A migrated, empty database of each kind."""
    if request.param == "sqlite":
        url = f"sqlite:///{tmp_path / 'mdf.sqlite3'}"
        upgrade(url)
        yield url
        return
    template = request.getfixturevalue("postgres_template")
    name = f"mdf_test_{uuid.uuid4().hex[:12]}"
    admin = _postgres_admin()
    with admin.connect() as connection:
        connection.execute(sa.text(f"CREATE DATABASE {name} TEMPLATE {template}"))
    yield sa.make_url(POSTGRES_ADMIN_URL).set(database=name).render_as_string(hide_password=False)
    with admin.connect() as connection:
        connection.execute(sa.text(f"DROP DATABASE IF EXISTS {name} WITH (FORCE)"))
    admin.dispose()


@pytest.fixture(scope="session")
def redis_url(tmp_path_factory: pytest.TempPathFactory) -> Iterator[str]:
    """A real Redis server: the one named by MDF_TEST_REDIS_URL, else an embedded one."""
    url = os.environ.get("MDF_TEST_REDIS_URL")
    if url:
        yield url
        return
    data_dir = tmp_path_factory.mktemp("redis")
    yield f"redis+socket://{ensure_embedded_redis(data_dir)}"
    stop_embedded_redis(data_dir)


def redis_client(url: str) -> redis.Redis:
    if url.startswith("redis+socket://"):
        return redis.Redis(unix_socket_path=url.removeprefix("redis+socket://"))
    return redis.Redis.from_url(url)


@pytest.fixture
def broker(redis_url: str) -> Iterator[redis.Redis]:
    """The broker's Redis, emptied before and after the test."""
    client = redis_client(redis_url)
    client.flushdb()
    yield client
    client.flushdb()


@pytest.fixture
def settings(
    tmp_path: Path, database_url: str, redis_url: str, monkeypatch: pytest.MonkeyPatch
) -> Settings:
    """Settings for one test, also exported as MDF_ variables for subprocesses."""
    values = {
        "MDF_DATA_DIR": str(tmp_path / "data"),
        "MDF_DATABASE_URL": database_url,
        "MDF_BROKER_URL": redis_url,
        "MDF_PSEUDONYM_KEY": "test-key-" + uuid.uuid4().hex,
        "MDF_LOG_FORMAT": "json",
    }
    for name, value in values.items():
        monkeypatch.setenv(name, value)
    return Settings()


@pytest.fixture(scope="session")
def tiny_checkpoint(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A tiny MDF-MLLM checkpoint, built once per test session (no weights downloaded)."""
    from mdf_model import build_tiny_checkpoint

    return Path(build_tiny_checkpoint(tmp_path_factory.mktemp("checkpoint") / "tiny", seed=0))
