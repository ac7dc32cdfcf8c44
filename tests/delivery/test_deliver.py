"""Results delivered to a real Orthanc PACS on loopback: by STOW-RS and C-STORE, by hand and
by the deliver queue, once each however often they are sent, and after an outage."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
from collections import Counter
from collections.abc import Iterator
from datetime import datetime
from pathlib import Path

import pytest
import redis
import sqlalchemy as sa
from dicomweb_client.api import DICOMwebClient
from pydicom.uid import Comprehensive3DSRStorage, SegmentationStorage

from db.models import Delivery, DeliveryStatus, Image, ImageStatus
from db.session import session_factory
from mdf.celery_app import DELIVER_STUDY, QUEUE_UNDELIVERED, create_app
from mdf.imaging.dicom_writer import write_dicom_op
from mdf.settings import Settings
from mdf.synthetic.fundus import generate_case
from tests.delivery.classified import PATIENT_ID, PATIENT_NAME, classified_study
from tests.delivery.dciodvfy import dciodvfy
from tests.dicom_peers import Orthanc, listener, need, wait_for
from tests.in_process import mdf_command
from tests.worker.worker_processes import WorkerProcess

STUDY = "1.2.826.0.1.3680043.8.498.4242"
KINDS = {Comprehensive3DSRStorage: "SR", SegmentationStorage: "SEG"}


@pytest.fixture
def orthanc(tmp_path: Path) -> Iterator[Orthanc]:
    pacs = Orthanc(tmp_path / "orthanc")
    pacs.start()
    yield pacs
    pacs.stop()


def stored(pacs: Orthanc, study_uid: str) -> Counter[str]:
    """The study's instances in the PACS per SOP class (SR, SEG, or the class UID), by QIDO-RS."""
    found = DICOMwebClient(pacs.dicomweb).search_for_instances(study_uid)
    classes = [str(item["00080016"]["Value"][0]) for item in found]
    return Counter(KINDS.get(uid, uid) for uid in classes)


def deliveries(settings: Settings) -> list[Delivery]:
    with session_factory(settings.resolved_database_url)() as session:
        return list(session.scalars(sa.select(Delivery).order_by(Delivery.id)))


def test_mdf_deliver_files_the_results_in_the_study_and_a_resend_duplicates_nothing(
    settings: Settings, orthanc: Orthanc, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    camera = tmp_path / "camera"
    image_ids = classified_study(settings, camera)
    orthanc.upload(sorted(camera.glob("*.dcm")))
    to = f"dicomweb:{orthanc.dicomweb}"
    sessions = session_factory(settings.resolved_database_url)
    with sessions.begin() as session:
        session.get(Image, image_ids[0]).status = ImageStatus.QUEUED
    with mdf_command(capsys) as mdf:
        code, out, err = mdf("deliver", "--to", to)
        assert code == 0, err
        assert "0 finished DICOM studies" in out  # a study waits for its last image
        with sessions.begin() as session:
            session.get(Image, image_ids[0]).status = ImageStatus.DONE

        code, out, err = mdf("deliver", "--to", to, "--batch", "night")
        assert code == 0, err
        assert "1 finished DICOM studies" in out and "4 objects sent, 0 already sent" in out
        assert stored(orthanc, STUDY) == Counter(
            {"SR": 1, "SEG": 3, "1.2.840.10008.5.1.4.1.1.77.1.5.1": 3}
        )
        first = deliveries(settings)
        assert [(row.status, row.attempts) for row in first] == [(DeliveryStatus.SENT, 1)] * 4
        assert {row.destination for row in first} == {f"dicomweb:{orthanc.dicomweb}"}
        held = set(orthanc.instances())

        code, out, err = mdf("deliver", "--to", to)
        assert code == 0, err
        assert "0 objects sent, 4 already sent" in out

        code, out, err = mdf("deliver", "--to", to, "--resend")
        assert code == 0, err
        assert "4 objects sent" in out
    assert set(orthanc.instances()) == held  # the same UIDs: replaced, not doubled
    again = deliveries(settings)
    assert [row.sop_instance_uid for row in again] == [row.sop_instance_uid for row in first]
    assert [row.attempts for row in again] == [2] * 4


def test_c_store_delivers_to_a_dicom_node(
    settings: Settings, orthanc: Orthanc, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    classified_study(settings, tmp_path / "camera", count=2)
    with mdf_command(capsys) as mdf:
        code, out, err = mdf("deliver", "--to", f"dicom:ORTHANC@127.0.0.1:{orthanc.dicom_port}")
    assert code == 0, err
    assert "3 objects sent" in out
    assert stored(orthanc, STUDY) == Counter({"SR": 1, "SEG": 2})


def test_a_destination_that_cannot_be_reached_fails_with_its_reason(
    settings: Settings,
    tmp_path: Path,
    capsys: pytest.CaptureFixture[str],
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    classified_study(settings, tmp_path / "camera", count=1)
    nobody = Orthanc(tmp_path / "orthanc")  # configured, never started
    monkeypatch.setenv("MDF_DICOMWEB_RETRIES", "0")
    with mdf_command(capsys) as mdf:
        code, out, err = mdf("deliver", "--to", f"dicomweb:{nobody.dicomweb}")
        assert code == 1, err
        assert "0 objects sent" in out and "2 failed" in out
        assert "failed (2): ConnectionError" in out
        node = f"dicom:ORTHANC@127.0.0.1:{nobody.dicom_port}"
        code, out, err = mdf("deliver", "--to", node)
        assert code == 1, err
        assert f"failed (2): association aborted by {node}" in out
        code, _, err = mdf("deliver", "--to", "ftp://pacs")
        assert code == 2 and "expected dicomweb:URL or dicom:AET@HOST:PORT" in err
    rows = deliveries(settings)
    assert [(row.status, row.attempts) for row in rows] == [(DeliveryStatus.FAILED, 1)] * 4
    stow, c_store = rows[:2], rows[2:]
    assert all(row.reason.startswith("ConnectionError") for row in stow)
    assert {row.destination for row in c_store} == {node}


def fundus_study(folder: Path, study: str) -> list[Path]:
    """Two gradable fundus photographs (right and left eye) of one study, as OP files."""
    return [
        write_dicom_op(
            folder / f"{i}",
            generate_case(i, size=160).image,
            study_uid=study,
            series_uid=f"{study}.1",
            sop_uid=f"{study}.1.{i + 1}",
            laterality="RL"[i],
            patient_id=PATIENT_ID,
            patient_name=PATIENT_NAME,
            acquired=datetime(2026, 3, 10, 9, 30),
        )
        for i in range(2)
    ]


def start_worker(tmp_path: Path, name: str, queues: str, **env: str) -> WorkerProcess:
    environment = {**os.environ, "OMP_NUM_THREADS": "1", **env}
    worker = WorkerProcess(name, tmp_path / f"{name}.log", environment, ["--queues", queues])
    worker.wait_ready()
    return worker


@pytest.mark.slow
@pytest.mark.parametrize(
    "database_url", ["postgresql"], indirect=True
)  # one engine: the end-to-end runs share the other's
def test_orthanc_down_during_delivery_then_up_gets_each_object_once(
    settings: Settings, broker: redis.Redis, tmp_path: Path
) -> None:
    classified_study(settings, tmp_path / "camera", count=2)
    pacs = Orthanc(tmp_path / "orthanc")  # down when the study is delivered
    worker = start_worker(
        tmp_path,
        "deliver",
        "deliver",
        MDF_RESULTS_DESTINATIONS=f"dicomweb:{pacs.dicomweb}",
        MDF_RESULTS_BACKOFF_S="3",
        MDF_DICOMWEB_RETRIES="0",
    )
    try:
        with session_factory(settings.resolved_database_url)() as session:
            (study_id,) = session.scalars(sa.select(Image.study_id).distinct())
        create_app(settings).send_task(DELIVER_STUDY, kwargs={"study_id": study_id})
        failed = lambda: [r for r in deliveries(settings) if r.status == DeliveryStatus.FAILED]  # noqa: E731
        wait_for(lambda: len(failed()) == 3, 60, "the first attempt to fail")
        pacs.start()
        sent = lambda: all(r.status == DeliveryStatus.SENT for r in deliveries(settings))  # noqa: E731
        wait_for(sent, 120, "the retry to deliver")
        in_pacs = stored(pacs, STUDY)
        log = worker.log()
    finally:
        worker.stop()
        pacs.stop()
    assert in_pacs == Counter({"SR": 1, "SEG": 2})  # exactly once each
    rows = deliveries(settings)
    assert len(rows) == 3 and all(row.attempts >= 2 for row in rows)
    assert all(row.reason.startswith("ConnectionError") for row in rows)  # the failure kept
    assert '"event": "delivery_retry"' in log
    assert not [text for text in (PATIENT_ID, "Doe", STUDY) if text in log]


@pytest.mark.slow
@pytest.mark.parametrize(
    "database_url", ["sqlite"], indirect=True
)  # one engine: the end-to-end runs share the other's
def test_a_study_no_worker_sent_is_delivered_by_the_scheduler_sweep(
    settings: Settings,
    broker: redis.Redis,
    orthanc: Orthanc,
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """A study finished while the broker was away (no message ever sent): ``mdf scheduler``
    runs the sweep beat sends every five minutes, and a deliver worker files its results."""
    classified_study(settings, tmp_path / "camera", count=2)
    destination = f"dicom:ORTHANC@127.0.0.1:{orthanc.dicom_port}"
    monkeypatch.setenv("MDF_RESULTS_DESTINATIONS", destination)
    worker = start_worker(tmp_path, "deliver", "deliver")
    with (tmp_path / "scheduler.log").open("wb") as log:
        scheduler = subprocess.Popen(
            [sys.executable, "-m", "mdf.cli", "scheduler"],
            cwd=tmp_path,
            stdout=log,
            stderr=subprocess.STDOUT,
        )
    try:
        create_app(settings).send_task(QUEUE_UNDELIVERED)
        wait_for(lambda: stored(orthanc, STUDY)["SEG"] == 2, 120, "the swept study's results")
    finally:
        scheduler.send_signal(signal.SIGTERM)
        scheduler.wait(timeout=30)
        worker.stop()
    assert stored(orthanc, STUDY) == Counter({"SR": 1, "SEG": 2})
    rows = deliveries(settings)
    assert {(row.status, row.destination) for row in rows} == {(DeliveryStatus.SENT, destination)}
    assert '"event": "undelivered_studies_queued"' in (tmp_path / "scheduler.log").read_text()


@pytest.mark.slow
@pytest.mark.parametrize(
    "database_url", ["sqlite"], indirect=True
)  # one engine: the end-to-end runs share the other's
def test_pull_classify_and_the_results_come_back_to_the_pacs(
    settings: Settings,
    broker: redis.Redis,
    orthanc: Orthanc,
    tiny_checkpoint: Path,
    tmp_path: Path,
    capsys: pytest.CaptureFixture[str],
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """Instances stored into Orthanc, ``mdf pull``, a real worker with the tiny model, and the
    SR and SEG found back in the same study, sent by the deliver queue on its own."""
    study = "1.2.826.0.1.3680043.8.498.5151"
    files = fundus_study(tmp_path / "camera", study)
    orthanc.upload(files)
    destination = f"dicomweb:{orthanc.dicomweb}"
    for name, value in {
        "MDF_MODEL_DIR": str(tiny_checkpoint),
        "MDF_RESULTS_DESTINATIONS": destination,
    }.items():
        monkeypatch.setenv(name, value)
    with mdf_command(capsys) as mdf:
        code, out, err = mdf("pull", "--dicomweb", orthanc.dicomweb, "--since", "2026-03-10")
    assert code == 0 and "2 retrieved" in out, err
    worker = start_worker(tmp_path, "e2e", "inference,deliver")
    try:
        wait_for(lambda: stored(orthanc, study)["SEG"] == 2, 240, "the SR and SEG in the PACS")
        log = worker.log()
    finally:
        worker.stop()
    assert stored(orthanc, study) == Counter(
        {"SR": 1, "SEG": 2, "1.2.840.10008.5.1.4.1.1.77.1.5.1": 2}
    )
    rows = deliveries(settings)
    assert sorted(row.kind for row in rows) == ["seg", "seg", "sr"]
    assert {(row.status, row.destination) for row in rows} == {(DeliveryStatus.SENT, destination)}
    assert not [text for text in (PATIENT_ID, "Doe", study) if text in log]
    client = DICOMwebClient(orthanc.dicomweb)
    for row in rows:  # as the PACS holds them, from the real model's answers and masks
        found = client.search_for_instances(
            study, search_filters={"SOPInstanceUID": row.sop_instance_uid}
        )
        series = found[0]["0020000E"]["Value"][0]
        dataset = client.retrieve_instance(study, series, row.sop_instance_uid)
        assert (dataset.PatientID, dataset.StudyInstanceUID) == (PATIENT_ID, study)
        report, errors = dciodvfy(dataset, tmp_path / f"{row.kind}-{row.id}.dcm")
        assert not errors, report


@pytest.mark.slow
@pytest.mark.parametrize(
    "database_url", ["postgresql"], indirect=True
)  # one engine: the end-to-end runs share the other's
def test_a_camera_sends_to_the_listener_and_the_results_go_to_a_dicom_node(
    settings: Settings,
    broker: redis.Redis,
    orthanc: Orthanc,
    tiny_checkpoint: Path,
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """storescu (a camera) into ``mdf dicom listen``, a real worker, and the SR and SEG stored
    by C-STORE into the PACS, in the photographs' study."""
    storescu = need("storescu", "dcmtk")
    study = "1.2.826.0.1.3680043.8.498.6161"
    files = fundus_study(tmp_path / "camera", study)
    settings_env = {
        "MDF_MODEL_DIR": str(tiny_checkpoint),
        "MDF_RESULTS_DESTINATIONS": f"dicom:ORTHANC@127.0.0.1:{orthanc.dicom_port}",
        "MDF_DICOM_ALLOWED_AES": "CAMERA",
        "MDF_DICOM_STUDY_QUIET_S": "0.5",
    }
    for name, value in settings_env.items():
        monkeypatch.setenv(name, value)
    worker = start_worker(tmp_path, "camera", "inference,deliver")
    try:
        with listener(tmp_path) as running:
            command = [storescu, "-aet", "CAMERA", "-aec", "MDF", "127.0.0.1", str(running.port)]
            sent = subprocess.run([*command, *map(str, files)], capture_output=True, timeout=60)
            assert sent.returncode == 0, sent.stderr
            wait_for(lambda: stored(orthanc, study)["SEG"] == 2, 240, "the SR and SEG in the PACS")
            listen_log = running.log.read_text()
        log = worker.log()
    finally:
        worker.stop()
    assert stored(orthanc, study) == Counter({"SR": 1, "SEG": 2})
    rows = deliveries(settings)
    assert {row.status for row in rows} == {DeliveryStatus.SENT} and len(rows) == 3
    assert {row.destination for row in rows} == {settings_env["MDF_RESULTS_DESTINATIONS"]}
    assert not [text for text in (PATIENT_ID, "Doe", study) if text in log + listen_log]
