"""The deliver queue's Celery task: a thin shell around ``delivery.service.Deliverer``.

The inference worker sends ``mdf.deliver_study`` by name when a chunk it wrote finished a
study that came as DICOM (``mdf worker --queues deliver`` serves it). A delivery that
failed to send is retried after ``MDF_RESULTS_BACKOFF_S``, doubled each time up to an hour,
``MDF_RESULTS_RETRIES`` times; every attempt is in the deliveries table, and what is left
unsent then waits for ``mdf deliver``. The database being away is retried with backoff
too. Sent objects are never sent again by a retry or a second message of the same study.
"""

from __future__ import annotations

import sqlalchemy.exc
import structlog
from celery import Task, shared_task

from db.session import session_factory
from delivery.service import Deliverer
from mdf.celery_app import DELIVER_STUDY, app_settings

log = structlog.get_logger(__name__)

#: The longest wait between two attempts at a study.
MAX_BACKOFF_S = 3600
DATABASE_AWAY = (
    sqlalchemy.exc.OperationalError,
    sqlalchemy.exc.InterfaceError,
    sqlalchemy.exc.DisconnectionError,
)


def backoff_s(first_s: int, retries: int) -> int:
    return min(first_s * 2**retries, MAX_BACKOFF_S)


@shared_task(
    bind=True,
    name=DELIVER_STUDY,
    autoretry_for=DATABASE_AWAY,
    retry_backoff=True,
    retry_backoff_max=300,
    retry_jitter=True,
    max_retries=12,  # the database away: with backoff up to 300 s, about an hour
)
def deliver_study(self: Task, study_id: int) -> dict[str, int]:
    settings = app_settings(self.app)
    deliverer = Deliverer(settings, session_factory(settings.resolved_database_url))
    report = deliverer.deliver(study_id)
    retries = self.request.retries
    if report.retry and retries < settings.results_retries:
        wait = backoff_s(settings.results_backoff_s, retries)
        log.warning("delivery_retry", study_id=study_id, retries=retries, in_s=wait)
        raise self.retry(countdown=wait, max_retries=settings.results_retries)
    if report.retry:
        log.error(
            "delivery_given_up",
            study_id=study_id,
            retries=retries,
            note="what is left unsent is in the deliveries table; mdf deliver sends it",
        )
    return {"sent": report.sent, "failed": sum(report.failed.values())}
