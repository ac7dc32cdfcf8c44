"""``mdf worker --burst``: stop once there is nothing left to do (demos and benchmarks).

Nothing is left when no image waits in the database (registered, queued or
processing) and the worker's queues hold no message (duplicates included). The
worker is then stopped the way an operator would, with SIGTERM: a warm shutdown
that finishes the running task and exits 0.
"""

from __future__ import annotations

import os
import signal
import threading
import time
from collections.abc import Sequence

import structlog
from celery import Celery
from sqlalchemy import func, select
from sqlalchemy.orm import Session, sessionmaker

from db.lifecycle import PENDING
from db.models import Image

log = structlog.get_logger(__name__)


def pending_images(sessions: sessionmaker[Session]) -> int:
    with sessions() as session:
        return session.scalar(select(func.count(Image.id)).where(Image.status.in_(PENDING))) or 0


def queued_messages(app: Celery, queues: Sequence[str]) -> int:
    with app.connection_for_read() as connection:
        channel = connection.default_channel
        # Declaring is idempotent and, unlike a passive check, answers for an empty queue too.
        return sum(channel.queue_declare(queue).message_count for queue in queues)


def is_idle(app: Celery, sessions: sessionmaker[Session], queues: Sequence[str]) -> bool:
    return pending_images(sessions) == 0 and queued_messages(app, queues) == 0


def stop_when_idle(
    app: Celery,
    sessions: sessionmaker[Session],
    queues: Sequence[str],
    *,
    interval_s: float = 1.0,
) -> None:
    """Watch in a daemon thread; send this process SIGTERM once idle."""

    def watch() -> None:
        while True:
            time.sleep(interval_s)
            try:
                idle = is_idle(app, sessions, queues)
            except Exception as error:  # an outage is not idleness: look again later
                log.warning("burst_check_failed", error=type(error).__name__)
                continue
            if idle:
                log.info("burst_finished", queues=list(queues))
                os.kill(os.getpid(), signal.SIGTERM)
                return

    threading.Thread(target=watch, name="burst-watch", daemon=True).start()
