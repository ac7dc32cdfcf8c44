"""`mdf worker` serves its own numbers at /metrics: a real worker serving the tiny model,
scraped over HTTP once its night is over, compared with what it wrote to the database."""

from __future__ import annotations

from pathlib import Path

import pytest
import sqlalchemy as sa
from scraped import by_label, free_port, scrape
from sqlalchemy.orm import Session, sessionmaker
from worker_processes import wait_for

from db.lifecycle import ImageStatus
from db.models import Image, ModelVersion, Prediction
from mdf.settings import Settings
from mdf.synthetic.delivery import write_dataset
from scheduler.service import Scheduler

pytestmark = [
    pytest.mark.slow,
    pytest.mark.parametrize("database_url", ["postgresql"], indirect=True),
]


def test_a_worker_serves_its_chunks_and_model_as_the_database_records_them(
    worker_settings: Settings,
    sessions: sessionmaker[Session],
    start_worker,
    tmp_path: Path,
) -> None:
    inbox = write_dataset(tmp_path / "inbox", 6, seed=0, size=96, write_masks=False)
    port = free_port()
    worker = start_worker("metrics", MDF_METRICS_PORT=str(port))
    worker.wait_ready(timeout=120)
    _, queued = Scheduler(worker_settings).ingest(inbox)
    assert queued == 6  # two chunks: four images, then two

    def finished() -> int:
        with sessions() as session:
            return session.scalar(
                sa.select(sa.func.count()).where(
                    Image.status.in_([ImageStatus.DONE, ImageStatus.FAILED])
                )
            )

    wait_for(lambda: finished() == 6, timeout=180, what="six images to finish")
    chunks = wait_for(lambda: len(worker.events("chunk_finished")) == 2, timeout=30, what="logs")
    assert chunks
    samples = scrape(port)
    with sessions() as session:
        predictions = session.scalar(sa.select(sa.func.count()).select_from(Prediction))
        failed = session.scalar(
            sa.select(sa.func.count()).where(Image.status == ImageStatus.FAILED)
        )
        (version,) = session.scalars(sa.select(ModelVersion.name)).all()
    outcomes = by_label(samples, "mdf_chunk_images_total", "outcome")
    assert (outcomes["written"], outcomes["failed"]) == (predictions, failed) == (6, 0)
    assert samples["mdf_chunk_seconds_count", ()] == 2
    assert 0 < samples["mdf_chunk_seconds_sum", ()] < 180
    assert by_label(samples, "mdf_model_info", "version") == {version: 1}
    assert not any(name == "mdf_gpu_memory_bytes" for name, _ in samples)  # on the CPU
