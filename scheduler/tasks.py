"""Celery tasks run by the scheduler process (beat plus a worker on the ``intake`` queue)."""

from __future__ import annotations

from celery import Task, shared_task

from mdf.celery_app import (
    QUEUE_UNDELIVERED,
    REQUEUE_EXPIRED,
    REQUEUE_STALLED,
    SCAN_INBOXES,
    app_settings,
)
from scheduler.service import Scheduler


def _scheduler(task: Task) -> Scheduler:
    """The scheduler of the app that runs ``task``, with that app's settings."""
    return Scheduler(app_settings(task.app), app=task.app)


@shared_task(bind=True, name=SCAN_INBOXES)
def scan_inboxes(self: Task) -> int:
    return sum(report.files for report in _scheduler(self).scan_inboxes())


@shared_task(bind=True, name=REQUEUE_STALLED)
def requeue_stalled(self: Task) -> int:
    return _scheduler(self).requeue()[0]


@shared_task(bind=True, name=REQUEUE_EXPIRED)
def requeue_expired_claims(self: Task) -> int:
    return _scheduler(self).requeue_expired()[0]


@shared_task(bind=True, name=QUEUE_UNDELIVERED)
def queue_undelivered_studies(self: Task) -> int:
    return _scheduler(self).queue_undelivered()
