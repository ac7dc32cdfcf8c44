"""Celery tasks run by the scheduler process (beat plus a worker on the ``intake`` queue)."""

from __future__ import annotations

from celery import current_app, shared_task

from mdf.celery_app import REQUEUE_STALLED, SCAN_INBOXES
from mdf.settings import get_settings
from scheduler.service import Scheduler


@shared_task(name=SCAN_INBOXES)
def scan_inboxes() -> int:
    return sum(report.files for report in Scheduler(get_settings(), app=current_app).scan_inboxes())


@shared_task(name=REQUEUE_STALLED)
def requeue_stalled() -> int:
    return Scheduler(get_settings(), app=current_app).requeue()[0]
