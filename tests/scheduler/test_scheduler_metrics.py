"""`mdf scheduler` serves the service's numbers at /metrics: a real process, scraped over
HTTP, every number compared with the database and the broker it reads them from."""

from __future__ import annotations

import signal
import subprocess
import sys
from pathlib import Path

import pytest
import redis
import sqlalchemy as sa
from image_rows import add_images
from scraped import by_label, free_port, scrape

from db.lifecycle import ImageStatus
from db.models import Image
from db.session import session_factory
from mdf.celery_app import DELIVER_QUEUE, INFERENCE_QUEUE, INTAKE_QUEUE, TRAINING_QUEUE
from mdf.settings import Settings


def test_the_scheduler_serves_image_counts_and_queue_depths_as_stored(
    settings: Settings, broker: redis.Redis, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    sessions = session_factory(settings.resolved_database_url)
    add_images(sessions, [tmp_path / f"q{i}.png" for i in range(3)])
    add_images(sessions, [tmp_path / f"d{i}.png" for i in range(2)], status=ImageStatus.DONE)
    rejected = add_images(
        sessions, [tmp_path / f"r{i}.png" for i in range(3)], status=ImageStatus.REJECTED
    )
    with sessions.begin() as session:
        session.execute(
            sa.update(Image).where(Image.id.in_(rejected[:2])).values(reason_code="empty_file")
        )
        session.execute(
            sa.update(Image).where(Image.id == rejected[2]).values(reason_code="not_an_image")
        )
    broker.lpush(INFERENCE_QUEUE, "a", "b", "c", "d")  # depth is read, never consumed
    broker.lpush(TRAINING_QUEUE, "e")
    port = free_port()
    monkeypatch.setenv("MDF_METRICS_PORT", str(port))
    process = subprocess.Popen(
        [sys.executable, "-m", "mdf.cli", "scheduler"],
        cwd=tmp_path,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    try:
        samples = scrape(port)
    finally:
        process.send_signal(signal.SIGTERM)
        process.wait(timeout=30)

    with sessions() as session:
        stored = session.execute(
            sa.select(Image.status, Image.reason_code, sa.func.count()).group_by(
                Image.status, Image.reason_code
            )
        ).all()
    served = {
        (labels[1][1], labels[0][1]): value  # (status, reason_code)
        for (name, labels), value in samples.items()
        if name == "mdf_images" and value
    }
    assert served == {(status.value, code or ""): count for status, code, count in stored}
    assert served == {
        ("queued", ""): 3,
        ("done", ""): 2,
        ("rejected", "empty_file"): 2,
        ("rejected", "not_an_image"): 1,
    }
    for status in ImageStatus:  # every status shows, 0 included
        assert ("mdf_images", (("reason_code", ""), ("status", status.value))) in samples
    assert by_label(samples, "mdf_queue_depth", "queue") == {
        INFERENCE_QUEUE: 4,
        TRAINING_QUEUE: 1,
        INTAKE_QUEUE: 0,
        DELIVER_QUEUE: 0,
    }
    # add_images finishes the done and rejected rows now: five in the last minute
    assert samples["mdf_images_per_second", ()] == pytest.approx(5 / 60)
