"""The Celery shell and the command line: retry policy, start-up errors, logs without SQL,
and when a burst worker may stop."""

from __future__ import annotations

from pathlib import Path

import pytest
import sqlalchemy as sa
from image_rows import add_images
from sqlalchemy.orm import Session, sessionmaker
from worker_processes import RedisServer, run_mdf

from db.lifecycle import ImageStatus
from db.models import Image
from mdf.celery_app import CLASSIFY_CHUNK, INFERENCE_QUEUE, create_app
from mdf.logs import summarise_error
from mdf.settings import Settings
from worker.burst import is_idle, queued_messages
from worker.tasks import MAX_RETRIES, classify_chunk


def test_only_transient_errors_are_retried_with_bounded_backoff(settings: Settings) -> None:
    app = create_app(settings)
    task = app.tasks[CLASSIFY_CHUNK]
    assert task.name == classify_chunk.name == CLASSIFY_CHUNK
    assert sa.exc.OperationalError in task.autoretry_for
    assert not any(issubclass(ValueError, kind) for kind in task.autoretry_for)
    assert not any(issubclass(sa.exc.IntegrityError, kind) for kind in task.autoretry_for)
    assert task.retry_backoff and task.max_retries == MAX_RETRIES
    assert app.conf.task_acks_late and app.conf.task_reject_on_worker_lost
    assert app.conf.worker_prefetch_multiplier == 1


def test_a_database_error_is_described_without_its_statement_or_parameters() -> None:
    error = sa.exc.OperationalError(
        "UPDATE images SET reason=%(reason)s", {"reason": "/inbox/PATIENT-7/x.jpg"}, OSError("gone")
    )
    assert summarise_error(error) == "OperationalError/OSError: gone"
    assert summarise_error(RuntimeError("first line\nsecond")) == "RuntimeError: first line"


@pytest.mark.parametrize("database_url", ["sqlite"], indirect=True)
def test_a_worker_without_a_model_stops_at_once_saying_why(settings: Settings) -> None:
    result = run_mdf("worker")
    assert result.returncode == 2
    assert "no model version is promoted and MDF_MODEL_DIR is not set" in result.stderr


@pytest.mark.parametrize("database_url", ["sqlite"], indirect=True)
def test_a_worker_for_an_unknown_queue_is_refused(settings: Settings) -> None:
    result = run_mdf("worker", "--queues", "inference,gpu")
    assert result.returncode == 2
    assert "unknown queue(s) ['gpu']" in result.stderr


def test_a_burst_worker_waits_for_pending_images_and_queued_chunks(
    settings: Settings, sessions: sessionmaker[Session], own_redis: RedisServer, tmp_path: Path
) -> None:
    app = create_app(settings.model_copy(update={"broker_url": own_redis.url}))
    queues = [INFERENCE_QUEUE]
    assert is_idle(app, sessions, queues)
    (image,) = add_images(sessions, [tmp_path / "a.jpg"], status=ImageStatus.REGISTERED)
    assert not is_idle(app, sessions, queues)
    with sessions.begin() as session:
        session.execute(sa.update(Image).values(status=ImageStatus.DONE))
    assert is_idle(app, sessions, queues)
    app.send_task(CLASSIFY_CHUNK, kwargs={"image_ids": [image]})  # a duplicate, still to drain
    assert queued_messages(app, queues) == 1
    assert not is_idle(app, sessions, queues)
