"""Fixtures for the worker tests: a fake or the tiny real model, a private Redis, workers."""

from __future__ import annotations

import os
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest
from fake_classifier import FakeLoader
from sqlalchemy.orm import Session, sessionmaker
from worker_processes import RedisServer, WorkerProcess

from db.session import session_factory
from mdf.settings import Settings


@pytest.fixture
def fake_loader() -> FakeLoader:
    return FakeLoader()


@pytest.fixture
def sessions(database_url: str) -> sessionmaker[Session]:
    return session_factory(database_url)


@pytest.fixture
def own_redis(tmp_path: Path) -> Iterator[RedisServer]:
    """A private redis-server for this test: it may be killed and restarted at will."""
    server = RedisServer(tmp_path)
    server.start()
    yield server
    server.kill()


@pytest.fixture
def worker_settings(
    settings: Settings, tiny_checkpoint: Path, monkeypatch: pytest.MonkeyPatch
) -> Settings:
    """The test's settings serving the tiny checkpoint, in chunks of four images."""
    monkeypatch.setenv("MDF_MODEL_DIR", str(tiny_checkpoint))
    monkeypatch.setenv("MDF_CHUNK_SIZE", "4")
    return Settings()


@pytest.fixture
def start_worker(
    worker_settings: Settings, tmp_path: Path
) -> Iterator[Callable[..., WorkerProcess]]:
    """Start ``mdf worker`` subprocesses with this test's settings; all stop at the end."""
    started: list[WorkerProcess] = []

    def start(name: str, *args: str, **env: str) -> WorkerProcess:
        environment = {**os.environ, "OMP_NUM_THREADS": "1", **env}
        worker = WorkerProcess(name, tmp_path / f"{name}.log", environment, list(args))
        started.append(worker)
        return worker

    yield start
    for worker in started:
        worker.stop()
