"""The inference worker's Celery task: a thin shell around ``worker.inference.Pipeline``.

Only transient errors are retried (exponential backoff with jitter, bounded): the
claim makes a retried or re-delivered chunk safe. When the retries run out the
images are still ``queued`` or ``processing`` in the database, where the
scheduler's ``requeue`` finds and re-sends them; the task says so in the log.
"""

from __future__ import annotations

import socket
import time
from typing import Any

import structlog
from celery import Task, shared_task

from db.deliveries import finished_dicom_studies
from db.session import session_factory
from mdf.celery_app import CLASSIFY_CHUNK, DELIVER_STUDY, app_settings
from mdf.logs import summarise_error
from mdf.metrics import observe_chunk
from worker.inference import TRANSIENT_ERRORS, Pipeline
from worker.serving import model_server

log = structlog.get_logger(__name__)

#: With backoff 1, 2, 4 ... 300 s (full jitter) this rides out an outage of ten minutes or so.
MAX_RETRIES = 12
RETRY_BACKOFF_MAX_S = 300


class ChunkTask(Task):
    """Logs every retry and every chunk given up, with its image ids."""

    def on_retry(self, exc: BaseException, task_id: str, args: Any, kwargs: Any, einfo: Any):
        log.warning(
            "chunk_retry",
            task_id=task_id,
            image_ids=kwargs.get("image_ids"),
            retries=self.request.retries,
            error=summarise_error(exc),
        )

    def on_failure(self, exc: BaseException, task_id: str, args: Any, kwargs: Any, einfo: Any):
        log.error(
            "chunk_given_up",
            task_id=task_id,
            image_ids=kwargs.get("image_ids"),
            retries=self.request.retries,
            error=summarise_error(exc),
            note="images left queued or processing are re-sent by the scheduler's requeue",
        )


@shared_task(
    bind=True,
    base=ChunkTask,
    name=CLASSIFY_CHUNK,
    autoretry_for=TRANSIENT_ERRORS,
    retry_backoff=True,
    retry_backoff_max=RETRY_BACKOFF_MAX_S,
    retry_jitter=True,
    max_retries=MAX_RETRIES,
)
def classify_chunk(self: Task, image_ids: list[int]) -> dict[str, int]:
    settings = app_settings(self.app)
    pipeline = Pipeline.from_settings(
        settings,
        sessions=session_factory(settings.resolved_database_url),
        server=model_server(
            settings.resolved_database_url,
            settings.model_dir,
            settings.device,
            settings.vision_tiles,
        ),
        worker=self.request.hostname or socket.gethostname(),
    )
    with structlog.contextvars.bound_contextvars(
        task_id=self.request.id, retries=self.request.retries
    ):
        # The task's id names the claim: a retry of this task takes its images back at once,
        # while another delivery of the same chunk leaves them to this one's live claim.
        started = time.perf_counter()
        counts = pipeline.run(image_ids, token=self.request.id).counts()
        observe_chunk(time.perf_counter() - started, counts)
        if settings.results_destinations:  # the chunk may have finished DICOM studies
            with pipeline.sessions() as session:
                finished = finished_dicom_studies(session, image_ids=image_ids)
            for study_id in finished:
                self.app.send_task(DELIVER_STUDY, kwargs={"study_id": study_id})
        return counts
