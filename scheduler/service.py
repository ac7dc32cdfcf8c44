"""The scheduler's jobs as plain functions: the CLI and the Celery tasks are thin shells."""

from __future__ import annotations

from datetime import date
from pathlib import Path

import structlog
from celery import Celery
from sqlalchemy.orm import Session, sessionmaker

from db.deliveries import destination_name, undelivered_studies
from db.session import session_factory
from mdf.celery_app import DELIVER_QUEUE, DELIVER_STUDY, create_app
from mdf.logs import summarise_error
from mdf.settings import Settings
from scheduler.dispatch import enqueue_registered, requeue_expired, requeue_stalled
from scheduler.intake import IngestReport, ingest
from scheduler.pull import Puller, PullReport, batch_name, default_window, source_name

log = structlog.get_logger(__name__)

#: Studies one sweep sends to the deliver queue at most; the next sweep sends more once the
#: queue has drained.
UNDELIVERED_PER_SWEEP = 1000


class Scheduler:
    """Intake and dispatch against one database and one broker."""

    def __init__(self, settings: Settings, app: Celery | None = None):
        self.settings = settings
        self.sessions: sessionmaker[Session] = session_factory(settings.resolved_database_url)
        self._app = app

    @property
    def app(self) -> Celery:
        if self._app is None:
            self._app = create_app(self.settings)
        return self._app

    def ingest(self, folder: Path, batch_name: str | None = None) -> tuple[IngestReport, int]:
        report = ingest(
            folder, settings=self.settings, sessions=self.sessions, batch_name=batch_name
        )
        queued = enqueue_registered(
            self.app, self.sessions, self.settings.chunk_size, batch_id=report.batch_id
        )
        return report, queued

    def pull(
        self,
        url: str,
        window: tuple[date, date],
        modalities: list[str],
        batch: str | None = None,
    ) -> tuple[PullReport, IngestReport, int]:
        """Fetch a DICOMweb source's new instances of ``window`` and take its folder in."""
        puller = Puller(url, self.settings)
        pulled = puller.pull(*window, modalities)
        report, queued = self.ingest(puller.folder, batch or batch_name(url))
        return pulled, report, queued

    def pull_sources(self) -> list[IngestReport]:
        """The nightly pull of every configured source; one failing stops no other."""
        reports = []
        window = default_window(self.settings)
        for url in self.settings.dicomweb_sources:
            try:
                reports.append(self.pull(url, window, self.settings.dicomweb_modalities)[1])
            except Exception as error:
                error_text = summarise_error(error)
                log.error("dicomweb_pull_failed", dicomweb=source_name(url), error=error_text)
        return reports

    def scan_inboxes(self) -> list[IngestReport]:
        """Pull the DICOMweb sources first, then take in each inbox."""
        reports = self.pull_sources()
        for inbox in self.settings.inboxes:
            if not inbox.is_dir():
                log.warning("inbox_missing", inbox=str(inbox))
                continue
            reports.append(self.ingest(inbox)[0])
        return reports

    def requeue(self, older_than_s: float | None = None) -> tuple[int, int]:
        return requeue_stalled(
            self.app,
            self.sessions,
            chunk_size=self.settings.chunk_size,
            older_than_s=self.settings.requeue_after_s if older_than_s is None else older_than_s,
            max_attempts=self.settings.max_attempts,
        )

    def requeue_expired(self) -> tuple[int, int]:
        """Re-send the images whose worker stopped renewing its claim; (requeued, failed)."""
        return requeue_expired(
            self.app,
            self.sessions,
            chunk_size=self.settings.chunk_size,
            max_attempts=self.settings.max_attempts,
        )

    def queue_undelivered(self) -> int:
        """Send ``mdf.deliver_study`` for the finished DICOM studies a configured destination
        has no row of: the worker's own message never reached the deliver queue for them
        (their last image given up on, or finished while the broker was away). Nothing is
        sent while messages wait in that queue: they may be these very studies, and a
        deliver worker that is down must not find a copy of each per sweep."""
        if not self.settings.results_destinations:
            return 0
        with self.app.connection_for_read() as connection:
            waiting = connection.default_channel.queue_declare(queue=DELIVER_QUEUE).message_count
        if waiting:
            log.info("undelivered_sweep_skipped", deliver_queue_waiting=waiting)
            return 0
        names = [destination_name(text) for text in self.settings.results_destinations]
        with self.sessions() as session:
            studies = undelivered_studies(session, names, limit=UNDELIVERED_PER_SWEEP)
        for study_id in studies:
            self.app.send_task(DELIVER_STUDY, kwargs={"study_id": study_id})
        if studies:
            log.info("undelivered_studies_queued", studies=len(studies))
        return len(studies)
