"""The scheduler as operators run it: `mdf scheduler` (beat + intake queue) in a subprocess."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import redis
from celery.schedules import crontab
from PIL import Image as PILImage

from db.session import session_factory
from mdf.analysis.status import status_counts
from mdf.celery_app import (
    QUEUE_UNDELIVERED,
    REQUEUE_EXPIRED,
    REQUEUE_STALLED,
    SCAN_INBOXES,
    TRAIN,
    create_app,
)
from mdf.settings import Settings


def test_beat_schedule_comes_from_the_settings(settings: Settings) -> None:
    custom = settings.model_copy(update={"scan_cron": "30 2 * * 1-5", "train_cron": "0 4 1 * *"})
    schedule = create_app(custom).conf.beat_schedule
    assert {entry["task"] for entry in schedule.values()} == {
        SCAN_INBOXES,
        REQUEUE_STALLED,
        REQUEUE_EXPIRED,
        TRAIN,
    }
    scan = schedule["scan-inboxes"]["schedule"]
    assert scan == crontab(minute="30", hour="2", day_of_week="1-5")
    assert schedule["train"]["schedule"] == crontab(minute="0", hour="4", day_of_month="1")


def test_the_delivery_sweep_is_scheduled_only_where_results_have_a_destination(
    settings: Settings,
) -> None:
    delivering = settings.model_copy(update={"results_destinations": ["dicom:PACS@pacs:104"]})
    schedule = create_app(delivering).conf.beat_schedule
    assert schedule["queue-undelivered-studies"] == {
        "task": QUEUE_UNDELIVERED,
        "schedule": crontab(minute="*/5"),
    }
    assert QUEUE_UNDELIVERED not in {
        entry["task"] for entry in create_app(settings).conf.beat_schedule.values()
    }


def test_every_scheduled_task_has_a_handler(settings: Settings) -> None:
    import scheduler.tasks
    import training.tasks  # noqa: F401  (the training queue's worker serves TRAIN)

    # with a results destination, so that every entry beat may have is there
    delivering = settings.model_copy(update={"results_destinations": ["dicom:PACS@pacs:104"]})
    app = create_app(delivering)
    scheduled = {entry["task"] for entry in app.conf.beat_schedule.values()}
    assert QUEUE_UNDELIVERED in scheduled
    assert scheduled <= set(app.tasks), scheduled - set(app.tasks)
    assert scheduler.tasks.requeue_expired_claims.name == REQUEUE_EXPIRED
    assert scheduler.tasks.queue_undelivered_studies.name == QUEUE_UNDELIVERED


def test_unmigrated_database_is_refused_with_a_clear_message(tmp_path: Path) -> None:
    env = {**os.environ, "MDF_DATABASE_URL": f"sqlite:///{tmp_path / 'new.sqlite3'}"}
    result = subprocess.run(
        [sys.executable, "-m", "mdf.cli", "status"], env=env, capture_output=True, text=True
    )
    assert result.returncode == 2
    assert "run `mdf db upgrade` first" in result.stderr and "Traceback" not in result.stderr


def test_scheduler_process_scans_inboxes_on_request(
    settings: Settings, broker: redis.Redis, tmp_path: Path
) -> None:
    inbox = tmp_path / "inbox"
    inbox.mkdir()
    for i in range(3):
        PILImage.new("RGB", (96, 96), (180, 60 + i, 30)).save(inbox / f"{i}.png")
    env = {**os.environ, "MDF_INBOXES": str(inbox)}
    process = subprocess.Popen(
        [sys.executable, "-m", "mdf.cli", "scheduler"],
        env=env,
        cwd=tmp_path,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    try:
        create_app(settings).send_task(SCAN_INBOXES)
        sessions = session_factory(settings.resolved_database_url)
        deadline = time.monotonic() + 60
        counts: dict = {}
        while time.monotonic() < deadline:
            counts = status_counts(sessions)
            if sum(row["queued"] for row in counts.values()) == 3:
                break
            time.sleep(0.5)
        assert [row["queued"] for row in counts.values()] == [3]
    finally:
        process.send_signal(signal.SIGTERM)
        process.wait(timeout=30)
