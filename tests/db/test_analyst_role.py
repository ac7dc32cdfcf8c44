"""On PostgreSQL, ``mdf db upgrade`` makes an analyst role that reads the analysts' views
and no table; a login role granted it runs ``mdf results`` and cannot read paths."""

from __future__ import annotations

import json
import uuid
from collections.abc import Iterator
from pathlib import Path

import pytest
import sqlalchemy as sa
from analyst_rows import add_nights
from in_process import Mdf, mdf_command

from db.session import make_engine, session_factory


@pytest.fixture
def mdf(capsys: pytest.CaptureFixture[str]) -> Iterator[Mdf]:
    with mdf_command(capsys) as run:
        yield run


@pytest.fixture
def analyst(database_url: str, monkeypatch: pytest.MonkeyPatch) -> Iterator[tuple[str, str]]:
    """(analyst role name, URL of a login role that is a member of it); dropped after."""
    if not database_url.startswith("postgresql"):
        pytest.skip("SQLite has no roles")
    role, login = f"mdf_analyst_{uuid.uuid4().hex[:8]}", f"alice_{uuid.uuid4().hex[:8]}"
    monkeypatch.setenv("MDF_DATABASE_URL", database_url)
    monkeypatch.setenv("MDF_ANALYST_ROLE", role)
    url = sa.make_url(database_url).set(username=login, password="pw")
    yield role, url.render_as_string(hide_password=False)
    engine = make_engine(database_url)
    with engine.begin() as connection:
        for name in (login, role):
            if connection.scalar(sa.text(f"SELECT 1 FROM pg_roles WHERE rolname = '{name}'")):
                connection.execute(sa.text(f"DROP OWNED BY {name}"))
                connection.execute(sa.text(f"DROP ROLE {name}"))
    engine.dispose()


def _select(url: str, table: str) -> int:
    engine = make_engine(url)
    try:
        with engine.connect() as connection:
            return len(connection.execute(sa.text(f"SELECT * FROM {table}")).all())
    finally:
        engine.dispose()


def test_analyst_role_reads_only_the_views(
    database_url: str, analyst: tuple[str, str], tmp_path: Path, mdf: Mdf
) -> None:
    role, analyst_url = analyst
    ids = add_nights(session_factory(database_url), tmp_path)
    code, _, err = mdf("db", "upgrade")
    assert code == 0 and f'"role": "{role}"' in err
    engine = make_engine(database_url)
    with engine.begin() as connection:
        login = sa.make_url(analyst_url).username
        connection.execute(sa.text(f"CREATE ROLE {login} LOGIN PASSWORD 'pw' IN ROLE {role}"))
    engine.dispose()

    assert _select(analyst_url, "study_results") == len(ids)
    assert _select(analyst_url, "study_rollup") == 4
    for table in ("images", "image_paths", "batches", "studies", "predictions"):
        with pytest.raises(sa.exc.ProgrammingError, match="permission denied"):
            _select(analyst_url, table)

    # The analysts' command reads the view only, so it runs as the analyst.
    with pytest.MonkeyPatch.context() as env:
        env.setenv("MDF_DATABASE_URL", analyst_url)
        code, out, err = mdf("results", "--format", "json")
    assert code == 0, err
    assert sorted(row["image_id"] for row in json.loads(out)) == sorted(ids.values())

    # A downgrade recreates older views, which show paths: the role may not read them,
    # even after an upgrade to that revision, until the head is reached again.
    assert mdf("db", "downgrade", "0003")[0] == 0
    assert mdf("db", "upgrade", "0003")[0] == 0
    with pytest.raises(sa.exc.ProgrammingError, match="permission denied"):
        _select(analyst_url, "study_results")
    assert mdf("db", "upgrade")[0] == 0
    assert _select(analyst_url, "study_results") == len(ids)
