"""Putting registered images on the ``inference`` queue, and recovering lost work.

The database is the source of truth, the queue only a delivery mechanism: an
image is marked ``queued`` (``db.lifecycle``) in the same transaction that decides
to send it. ``requeue_stalled`` re-sends what has sat in ``queued`` too long (a
restarted Redis) and what a lapsed claim held (a killed or hung worker stopped
renewing its lease); ``requeue_expired`` re-sends only the latter, every minute, so
a dead worker's chunk waits minutes, not ``requeue_after_s``. Sending by task name
keeps the model out of the scheduler. Workers write predictions idempotently, so a
duplicate delivery costs time, never a second result.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence

import structlog
from celery import Celery
from sqlalchemy.orm import Session, sessionmaker

from db import lifecycle
from mdf.celery_app import CLASSIFY_CHUNK

log = structlog.get_logger(__name__)


def send_chunks(app: Celery, image_ids: Sequence[int], chunk_size: int) -> int:
    """Send ``image_ids`` as classify tasks of ``chunk_size`` images; returns the task count."""
    tasks = 0
    # One producer (and broker connection) for the whole night, not one per task.
    with app.producer_or_acquire() as producer:
        for start in range(0, len(image_ids), chunk_size):
            chunk = list(image_ids[start : start + chunk_size])
            app.send_task(CLASSIFY_CHUNK, kwargs={"image_ids": chunk}, producer=producer)
            tasks += 1
    return tasks


def enqueue_registered(
    app: Celery, sessions: sessionmaker[Session], chunk_size: int, batch_id: int | None = None
) -> int:
    """Queue every ``registered`` image (of one batch, or all); returns how many."""
    with sessions.begin() as session:
        image_ids = lifecycle.queue_registered(session, batch_id)
    tasks = send_chunks(app, image_ids, chunk_size)
    log.info("images_enqueued", images=len(image_ids), tasks=tasks, batch_id=batch_id)
    return len(image_ids)


def _resend(
    app: Celery,
    sessions: sessionmaker[Session],
    chunk_size: int,
    requeue: Callable[[Session], tuple[list[int], list[int]]],
) -> tuple[int, int]:
    with sessions.begin() as session:
        retry, failed = requeue(session)
    send_chunks(app, retry, chunk_size)
    log.info("stalled_requeued", requeued=len(retry), failed=len(failed))
    return len(retry), len(failed)


def requeue_stalled(
    app: Celery,
    sessions: sessionmaker[Session],
    *,
    chunk_size: int,
    older_than_s: float,
    max_attempts: int,
) -> tuple[int, int]:
    """Re-send images stuck in ``queued`` or held by a lapsed claim; give up on repeat offenders.

    Returns (requeued, failed). Images never queued (``registered``) are sent too.
    ``attempts`` counts the times a worker started on an image; one started
    ``max_attempts`` times without finishing is marked ``failed``: it is most likely
    what kills its worker, and the rest of the batch must go on.
    """
    return _resend(
        app,
        sessions,
        chunk_size,
        lambda session: lifecycle.requeue_stalled(
            session, older_than_s=older_than_s, max_attempts=max_attempts
        ),
    )


def requeue_expired(
    app: Celery, sessions: sessionmaker[Session], *, chunk_size: int, max_attempts: int
) -> tuple[int, int]:
    """Re-send only the images whose claim lapsed; returns (requeued, failed)."""
    return _resend(
        app,
        sessions,
        chunk_size,
        lambda session: lifecycle.requeue_expired(session, max_attempts=max_attempts),
    )
