"""The Celery application: every queue, route, schedule and reliability setting in one place.

The scheduler and the workers meet only through the task names below and the
database: the scheduler sends ``CLASSIFY_CHUNK`` by name and never imports the
model. Each process builds its app with :func:`create_app` and imports the task
module it serves (``scheduler.tasks``, ``worker.tasks`` or ``training.tasks``); a task
reads the settings of the app that runs it with :func:`app_settings`.
"""

from __future__ import annotations

from celery import Celery
from celery.schedules import crontab

from mdf.broker import broker_url
from mdf.settings import Settings

INFERENCE_QUEUE = "inference"
INTAKE_QUEUE = "intake"
TRAINING_QUEUE = "training"
DELIVER_QUEUE = "deliver"

CLASSIFY_CHUNK = "mdf.classify_chunk"
SCAN_INBOXES = "mdf.scan_inboxes"
REQUEUE_STALLED = "mdf.requeue_stalled"
REQUEUE_EXPIRED = "mdf.requeue_expired_claims"
TRAIN = "mdf.train"
DELIVER_STUDY = "mdf.deliver_study"  # a finished study's SR and SEG, sent to the PACS
QUEUE_UNDELIVERED = "mdf.queue_undelivered_studies"  # DELIVER_STUDY for studies it never reached

#: The key of ``app.conf`` that holds the settings the app was built from.
SETTINGS_KEY = "mdf_settings"


def create_app(settings: Settings) -> Celery:
    app = Celery("mdf", set_as_current=True)
    app.conf.update(
        broker_url=broker_url(settings),
        broker_connection_retry_on_startup=True,
        # Long GPU tasks: the broker must not hand a running chunk to another worker.
        broker_transport_options={"visibility_timeout": settings.visibility_timeout_s},
        task_ignore_result=True,  # results live in the database
        task_serializer="json",
        accept_content=["json"],
        # At-least-once: a chunk is acknowledged only when done, and re-delivered
        # when its worker dies; the database makes the writes idempotent.
        task_acks_late=True,
        task_reject_on_worker_lost=True,
        worker_prefetch_multiplier=1,
        task_routes={
            CLASSIFY_CHUNK: {"queue": INFERENCE_QUEUE},
            SCAN_INBOXES: {"queue": INTAKE_QUEUE},
            REQUEUE_STALLED: {"queue": INTAKE_QUEUE},
            REQUEUE_EXPIRED: {"queue": INTAKE_QUEUE},
            QUEUE_UNDELIVERED: {"queue": INTAKE_QUEUE},
            TRAIN: {"queue": TRAINING_QUEUE},
            DELIVER_STUDY: {"queue": DELIVER_QUEUE},
        },
        task_default_queue=INTAKE_QUEUE,
        # Events let Flower show the fleet.
        worker_send_task_events=True,
        task_send_sent_event=True,
        worker_hijack_root_logger=False,
        timezone="UTC",
        beat_schedule=_beat_schedule(settings),
        beat_schedule_filename=str(settings.data_dir / "celerybeat-schedule"),
    )
    app.conf[SETTINGS_KEY] = settings
    return app


def _beat_schedule(settings: Settings) -> dict[str, dict[str, object]]:
    schedule: dict[str, dict[str, object]] = {
        "scan-inboxes": {
            "task": SCAN_INBOXES,
            "schedule": crontab.from_string(settings.scan_cron),
        },
        "requeue-stalled": {
            "task": REQUEUE_STALLED,
            "schedule": crontab.from_string(settings.requeue_cron),
        },
        # A lapsed claim (its worker died) is re-sent within a minute of lapsing; the
        # query only reads processing images whose lease ran out.
        "requeue-expired-claims": {"task": REQUEUE_EXPIRED, "schedule": crontab()},
        "train": {"task": TRAIN, "schedule": crontab.from_string(settings.train_cron)},
    }
    if settings.results_destinations:
        # A study whose last image was given up on, or that finished while the broker was
        # away, never got the worker's DELIVER_STUDY: the sweep sends it. It reads every
        # finished DICOM study, so every five minutes rather than every one.
        schedule["queue-undelivered-studies"] = {
            "task": QUEUE_UNDELIVERED,
            "schedule": crontab(minute="*/5"),
        }
    return schedule


def app_settings(app: Celery) -> Settings:
    """The settings ``app`` was built from: a task serves with its process's settings, which
    the command that started the worker built once (there is no global copy to go stale)."""
    return app.conf[SETTINGS_KEY]
