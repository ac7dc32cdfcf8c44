"""Commands that pseudonymise refuse a guessable key: exit 2, one line on stderr, and
nothing written to the database or the broker (a refused night can simply be re-run)."""

from __future__ import annotations

import os
import secrets
import stat
import subprocess
import sys
from pathlib import Path

import pytest
import redis
import sqlalchemy as sa
from PIL import Image as PILImage

from mdf.settings import Settings

GENERATE_HINT = 'generate one with: python -c "import secrets; print(secrets.token_hex(32))"'


@pytest.fixture
def inbox(tmp_path: Path) -> Path:
    folder = tmp_path / "inbox"
    folder.mkdir()
    for i in range(3):
        PILImage.new("RGB", (96, 96), (180, 60 + i, 30)).save(folder / f"{i}.png")
    return folder


def run(*args: str, cwd: Path, **env: str | None) -> subprocess.CompletedProcess[str]:
    """``mdf ARGS`` in a new process: the test's MDF_ variables, changed by ``env``
    (None removes one)."""
    environment = {**os.environ, **{k: v for k, v in env.items() if v is not None}}
    for name in [name for name, value in env.items() if value is None]:
        environment.pop(name, None)
    return subprocess.run(
        [sys.executable, "-m", "mdf.cli", *args],
        env=environment,
        cwd=cwd,
        capture_output=True,
        text=True,
        timeout=120,
    )


def batches(settings: Settings) -> int:
    engine = sa.create_engine(settings.resolved_database_url)
    try:
        with engine.connect() as connection:
            return connection.execute(sa.text("SELECT count(*) FROM batches")).scalar_one()
    finally:
        engine.dispose()


def assert_refused(
    result: subprocess.CompletedProcess[str], command: str, message: str, *secrets: str
) -> None:
    assert (result.returncode, result.stdout) == (2, "")
    assert result.stderr.startswith(f"mdf {command}: {message}"), result.stderr
    assert result.stderr.count("\n") == 1 and "Traceback" not in result.stderr
    for secret in filter(None, secrets):
        assert secret not in result.stderr


REFUSED = {
    "empty": ({"MDF_PSEUDONYM_KEY": ""}, "MDF_PSEUDONYM_KEY is empty: refused"),
    "short": ({"MDF_PSEUDONYM_KEY": "3f9a1c07d2"}, "MDF_PSEUDONYM_KEY is shorter than 32 bytes"),
    "env-example": ({"MDF_PSEUDONYM_KEY": "change-me"}, "MDF_PSEUDONYM_KEY is a placeholder"),
    "long-placeholder": (
        {"MDF_PSEUDONYM_KEY": "change-me-" * 4},
        "MDF_PSEUDONYM_KEY is a placeholder",
    ),
    "repeated": ({"MDF_PSEUDONYM_KEY": "0" * 64}, "MDF_PSEUDONYM_KEY is a repeated pattern"),
}
SETTINGS_ERROR = "invalid settings: MDF_PSEUDONYM_KEY_FILE: Value error, secret file"
FILE_REFUSED = {  # content of the key file (None: no file), start and end of the message
    "empty-key-file": ("\n", SETTINGS_ERROR, "pseudonym_key is empty"),
    "missing-key-file": (None, SETTINGS_ERROR, "pseudonym_key does not exist"),
    "placeholder-key-file": (
        "please-change-me\n",
        "MDF_PSEUDONYM_KEY_FILE is a placeholder",
        GENERATE_HINT,
    ),
}


@pytest.mark.parametrize("database_url", ["sqlite"], indirect=True)
@pytest.mark.parametrize("case", sorted(REFUSED))
def test_ingest_refuses_a_guessable_key_before_the_database(
    settings: Settings, broker: redis.Redis, inbox: Path, tmp_path: Path, case: str
) -> None:
    env, message = REFUSED[case]
    result = run("ingest", str(inbox), cwd=tmp_path, **env)
    assert_refused(result, "ingest", message, *filter(None, env.values()))
    assert GENERATE_HINT in result.stderr
    assert batches(settings) == 0 and broker.dbsize() == 0


@pytest.mark.parametrize("database_url", ["sqlite"], indirect=True)
@pytest.mark.parametrize("case", sorted(FILE_REFUSED))
def test_ingest_refuses_an_unusable_key_file_before_the_database(
    settings: Settings, broker: redis.Redis, inbox: Path, tmp_path: Path, case: str
) -> None:
    content, message, ending = FILE_REFUSED[case]
    key_file = tmp_path / "pseudonym_key"
    if content is not None:
        key_file.write_text(content)
    result = run(
        "ingest",
        str(inbox),
        cwd=tmp_path,
        MDF_PSEUDONYM_KEY=None,
        MDF_PSEUDONYM_KEY_FILE=str(key_file),
    )
    assert_refused(result, "ingest", message, *([content.strip()] if content else []))
    assert result.stderr.endswith(f"{ending}\n")
    assert batches(settings) == 0 and broker.dbsize() == 0


def test_a_refused_key_leaves_a_new_data_dir_uncreated(inbox: Path, tmp_path: Path) -> None:
    data_dir = tmp_path / "data"
    result = run(
        "ingest",
        str(inbox),
        cwd=tmp_path,
        MDF_DATA_DIR=str(data_dir),
        MDF_DATABASE_URL=None,
        MDF_PSEUDONYM_KEY="change-me",
    )
    assert_refused(result, "ingest", "MDF_PSEUDONYM_KEY is a placeholder", "change-me")
    assert not data_dir.exists()  # no SQLite file, no key file


@pytest.mark.parametrize("database_url", ["postgresql"], indirect=True)
@pytest.mark.parametrize("command", ["ingest", "run-batch"])
def test_postgresql_without_a_configured_key_is_refused(
    settings: Settings, broker: redis.Redis, inbox: Path, tmp_path: Path, command: str
) -> None:
    result = run(command, str(inbox), cwd=tmp_path, MDF_PSEUDONYM_KEY=None)
    assert_refused(
        result, command, "MDF_PSEUDONYM_KEY or MDF_PSEUDONYM_KEY_FILE must be set with a database"
    )
    assert batches(settings) == 0 and broker.dbsize() == 0
    assert not (settings.data_dir / "pseudonym.key").exists()


@pytest.mark.parametrize("database_url", ["sqlite"], indirect=True)
def test_run_batch_and_the_scheduler_refuse_to_start_with_a_placeholder(
    settings: Settings, broker: redis.Redis, inbox: Path, tmp_path: Path
) -> None:
    key = "changeme-changeme-changeme-changeme"
    for command in (("run-batch", str(inbox)), ("scheduler",)):
        result = run(*command, cwd=tmp_path, MDF_PSEUDONYM_KEY=key, MDF_INBOXES=str(inbox))
        assert_refused(result, command[0], "MDF_PSEUDONYM_KEY is a placeholder", key)
    assert batches(settings) == 0 and broker.dbsize() == 0


@pytest.mark.parametrize("database_url", ["sqlite"], indirect=True)
def test_with_sqlite_and_no_key_the_embedded_key_serves_every_night(
    settings: Settings, broker: redis.Redis, inbox: Path, tmp_path: Path
) -> None:
    key_file = settings.data_dir / "pseudonym.key"
    first = run("ingest", str(inbox), "--batch", "one", cwd=tmp_path, MDF_PSEUDONYM_KEY=None)
    assert first.returncode == 0, first.stderr
    key = key_file.read_text()
    assert stat.S_IMODE(key_file.stat().st_mode) == 0o600 and len(key.strip()) == 64
    second = run("ingest", str(inbox), "--batch", "two", cwd=tmp_path, MDF_PSEUDONYM_KEY=None)
    assert second.returncode == 0, second.stderr
    assert key_file.read_text() == key and batches(settings) == 2
    assert key.strip() not in first.stdout + first.stderr + second.stdout + second.stderr


@pytest.mark.parametrize("database_url", ["sqlite"], indirect=True)
def test_a_good_key_file_serves_and_never_shows(
    settings: Settings, broker: redis.Redis, inbox: Path, tmp_path: Path
) -> None:
    key = secrets.token_hex(32)
    (tmp_path / "pseudonym_key").write_text(key + "\n")
    result = run(
        "ingest",
        str(inbox),
        cwd=tmp_path,
        MDF_PSEUDONYM_KEY=None,
        MDF_PSEUDONYM_KEY_FILE=str(tmp_path / "pseudonym_key"),
        MDF_LOG_LEVEL="DEBUG",
    )
    assert result.returncode == 0, result.stderr
    assert "3 new images" in result.stdout and batches(settings) == 1
    assert key not in result.stdout + result.stderr
