"""The scheduler's delivery sweep: a finished DICOM study that the worker's message never
reached goes to the deliver queue of a real Redis, once while the queue holds it, and only
while a configured destination has no row of it."""

from __future__ import annotations

import base64
import json
from pathlib import Path

import pytest
import redis
import sqlalchemy as sa

from db.deliveries import PlannedObject, destination_name, record, undelivered_studies
from db.models import Image, ImageStatus
from db.session import session_factory
from mdf.celery_app import DELIVER_QUEUE, DELIVER_STUDY
from mdf.settings import Settings
from scheduler.intake import ingest
from scheduler.service import Scheduler
from tests.delivery.classified import classified_study
from tests.dicom_peers import write_instances

DESTINATION = "dicomweb:https://mdf:s3cret@pacs.example.org/dicom-web"
RECORDED = "dicomweb:https://pacs.example.org/dicom-web"  # its name, without the password
OTHER = "dicom:PACS@10.0.0.5:104"


def study_of(settings: Settings, image_id: int) -> int:
    with session_factory(settings.resolved_database_url)() as session:
        return session.get(Image, image_id).study_id


def waiting(broker: redis.Redis) -> list[tuple[str, dict[str, int]]]:
    """The deliver queue's messages as the broker holds them: task name and keyword arguments."""
    found = []
    for raw in broker.lrange(DELIVER_QUEUE, 0, -1):
        message = json.loads(raw)
        _, kwargs, _ = json.loads(base64.b64decode(message["body"]))
        found.append((message["headers"]["task"], kwargs))
    return found


def test_the_sweep_finds_finished_answered_studies_a_destination_has_no_row_of(
    settings: Settings, tmp_path: Path
) -> None:
    sessions = session_factory(settings.resolved_database_url)
    finished = study_of(settings, classified_study(settings, tmp_path / "a")[0])
    pending = classified_study(settings, tmp_path / "b", study_uid="1.2.826.0.1.3680043.8.498.2")
    failed = tmp_path / "c"  # every image failed: nothing to deliver
    write_instances(failed, 2, study_uid="1.2.826.0.1.3680043.8.498.3")
    ingest(failed, settings=settings, sessions=sessions, batch_name="night-c")
    with sessions.begin() as session:
        session.get(Image, pending[0]).status = ImageStatus.QUEUED
        session.execute(
            sa.update(Image)
            .where(Image.status == ImageStatus.REGISTERED)
            .values(status=ImageStatus.FAILED)
        )
    assert destination_name(DESTINATION) == RECORDED
    with sessions() as session:
        assert undelivered_studies(session, [RECORDED], limit=10) == [finished]
        assert undelivered_studies(session, [RECORDED], limit=0) == []
        assert undelivered_studies(session, [], limit=10) == []
    with sessions.begin() as session:  # the deliverer recorded the study for one destination
        record(session, [PlannedObject("sr", "1.2.3.4", finished, 1, None)], RECORDED)
    with sessions() as session:
        assert undelivered_studies(session, [RECORDED], limit=10) == []
        assert undelivered_studies(session, [RECORDED, OTHER], limit=10) == [finished]


@pytest.mark.parametrize("database_url", ["sqlite"], indirect=True)
def test_a_sweep_queues_each_study_once_while_the_deliver_queue_holds_it(
    settings: Settings, broker: redis.Redis, tmp_path: Path
) -> None:
    study_id = study_of(settings, classified_study(settings, tmp_path / "camera")[0])
    assert Scheduler(settings).queue_undelivered() == 0  # no destination: no sweep
    assert waiting(broker) == []

    sweep = Scheduler(settings.model_copy(update={"results_destinations": [DESTINATION]}))
    assert sweep.queue_undelivered() == 1
    assert waiting(broker) == [(DELIVER_STUDY, {"study_id": study_id})]
    assert sweep.queue_undelivered() == 0  # the queue holds it: not doubled
    assert len(waiting(broker)) == 1

    broker.delete(DELIVER_QUEUE)  # taken and lost before the deliverer wrote a row
    assert sweep.queue_undelivered() == 1
    broker.delete(DELIVER_QUEUE)
    with session_factory(settings.resolved_database_url).begin() as session:
        record(session, [PlannedObject("sr", "1.2.3.4", study_id, 1, None)], RECORDED)
    assert sweep.queue_undelivered() == 0  # delivered (or being delivered): left alone
    assert waiting(broker) == []
