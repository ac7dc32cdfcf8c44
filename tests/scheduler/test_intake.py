"""Intake end to end on a real database and a real Redis: registration, rejection, queueing."""

from __future__ import annotations

import csv
import hashlib
import json
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import redis
from PIL import Image as PILImage
from sqlalchemy import select, text, update

from db.lifecycle import ImageStatus
from db.models import Image, ImagePath, Study
from db.session import make_engine
from mdf.celery_app import INFERENCE_QUEUE
from mdf.imaging.dicom_writer import write_dicom_op
from mdf.settings import Settings
from scheduler.service import Scheduler

RAW_PATIENT = "PATIENT-0042-SECRET"
RAW_NAME = "Doe^Jane"


def fundus(seed: int, size: int = 96) -> np.ndarray:
    rng = np.random.default_rng(seed)
    image = np.zeros((size, size, 3), np.uint8)
    image[..., 0] = 150 + rng.integers(0, 60)
    image[..., 1] = 60
    image += rng.integers(0, 20, image.shape, dtype=np.uint8)
    return image


def write_manifest(folder: Path, rows: list[dict[str, str]]) -> None:
    with (folder / "manifest.csv").open("w", newline="") as handle:
        writer = csv.DictWriter(handle, fieldnames=list(rows[0]))
        writer.writeheader()
        writer.writerows(rows)


@pytest.fixture
def inbox(tmp_path: Path) -> Path:
    """A small night: JPEG, PNG, two DICOM OP (one multi-frame), a duplicate, a manifest."""
    folder = tmp_path / "inbox"
    (folder / "site-a").mkdir(parents=True)
    PILImage.fromarray(fundus(1)).save(folder / "site-a" / "left.jpg", quality=95)
    PILImage.fromarray(fundus(2)).save(folder / "site-a" / "right.png")
    (folder / "site-a" / "copy-of-left.jpg").write_bytes(
        (folder / "site-a" / "left.jpg").read_bytes()
    )
    write_dicom_op(
        folder / "op-single",
        fundus(3),
        patient_id=RAW_PATIENT,
        patient_name=RAW_NAME,
        study_uid="1.2.826.0.1.3680043.10.1.1",
        laterality="R",
        extension=False,
    )
    write_dicom_op(
        folder / "op-multi.dcm",
        np.stack([fundus(4), fundus(5), fundus(6)]),
        patient_id=RAW_PATIENT,
        study_uid="1.2.826.0.1.3680043.10.1.1",
        laterality="L",
        transfer_syntax="rle",
    )
    write_manifest(
        folder / "site-a",
        [
            {"file": "left.jpg", "patient_id": RAW_PATIENT, "study_id": "S1", "laterality": "left",
             "clinical_text": "62-year-old, diabetic for 15 years", "label": "acquired",
             "source": "site-a"},
            {"file": "missing.jpg", "patient_id": "", "study_id": "", "laterality": "",
             "clinical_text": "", "label": "", "source": ""},
            {"file": "../../outside.jpg", "patient_id": "", "study_id": "", "laterality": "",
             "clinical_text": "", "label": "", "source": ""},
        ],
    )  # fmt: skip
    return folder


def snapshot(folder: Path) -> dict[str, tuple[str, int]]:
    return {
        str(p): (hashlib.sha256(p.read_bytes()).hexdigest(), p.stat().st_mtime_ns)
        for p in sorted(folder.rglob("*"))
        if p.is_file()
    }


def queued_ids(broker: redis.Redis) -> list[int]:
    ids = []
    for raw in broker.lrange(INFERENCE_QUEUE, 0, -1):
        message = json.loads(raw)
        body = json.loads(__import__("base64").b64decode(message["body"]))
        ids.extend(body[1]["image_ids"])
    return ids


def images(scheduler: Scheduler) -> list[Image]:
    with scheduler.sessions() as session:
        return list(session.scalars(select(Image).order_by(Image.id)))


def test_ingest_registers_rejects_and_queues(
    settings: Settings, broker: redis.Redis, inbox: Path
) -> None:
    before = snapshot(inbox)
    scheduler = Scheduler(settings)
    report, queued = scheduler.ingest(inbox, "night-1")

    rows = images(scheduler)
    registered = [r for r in rows if r.status is ImageStatus.QUEUED]
    rejected = {r.reason_code: r for r in rows if r.status is ImageStatus.REJECTED}
    # left.jpg (+ its copy), right.png, op-single, op-multi x3 frames.
    assert len(registered) == 6 and queued == 6
    assert sorted(queued_ids(broker)) == sorted(r.id for r in registered)
    assert set(rejected) == {"missing_file", "outside_inbox"}
    assert "does not exist" in rejected["missing_file"].reason
    assert report.duplicates == 1

    multi = [r for r in rows if r.source_path.endswith("op-multi.dcm")]
    assert sorted(r.frame for r in multi) == [0, 1, 2]
    assert {r.laterality for r in multi} == {"L"}
    left = next(r for r in rows if Path(r.source_path).name in ("left.jpg", "copy-of-left.jpg"))
    assert left.laterality == "L" and left.label == "acquired" and left.data_source == "site-a"
    assert left.clinical_text.startswith("62-year-old")
    assert all(r.queued_at is not None and r.registered_at is not None for r in registered)
    assert snapshot(inbox) == before  # inputs are never modified


def test_same_night_twice_adds_nothing(
    settings: Settings, broker: redis.Redis, inbox: Path
) -> None:
    scheduler = Scheduler(settings)
    scheduler.ingest(inbox, "night-1")
    first = [(r.id, r.status) for r in images(scheduler)]
    broker.delete(INFERENCE_QUEUE)

    report, queued = scheduler.ingest(inbox, "night-1")
    assert queued == 0 and report.images == 0 and report.rejected == 0
    assert [(r.id, r.status) for r in images(scheduler)] == first
    assert broker.llen(INFERENCE_QUEUE) == 0


def test_same_pixels_under_two_names_is_one_image(
    settings: Settings, broker: redis.Redis, inbox: Path
) -> None:
    scheduler = Scheduler(settings)
    scheduler.ingest(inbox, "night-1")
    with scheduler.sessions() as session:
        left = session.scalar(select(Image).where(Image.source_path.endswith("left.jpg")))
        paths = session.scalars(select(ImagePath.path).where(ImagePath.image_id == left.id))
        assert sorted(Path(p).name for p in paths) == ["copy-of-left.jpg", "left.jpg"]


def test_a_changed_file_is_read_again(settings: Settings, broker: redis.Redis, inbox: Path) -> None:
    scheduler = Scheduler(settings)
    scheduler.ingest(inbox, "night-1")
    PILImage.fromarray(fundus(99)).save(inbox / "site-a" / "right.png")
    report, queued = scheduler.ingest(inbox, "night-2")
    assert (report.files, report.images, queued) == (1, 1, 1)


def test_logs_name_no_path_which_may_carry_a_patient_id(
    settings: Settings, broker: redis.Redis, inbox: Path, capfd: pytest.CaptureFixture[str]
) -> None:
    folder = inbox / "Doe_Jane_PID7731"
    folder.mkdir()
    (folder / "empty.jpg").write_bytes(b"")
    (folder / "notes.txt").write_text("not an image")
    Scheduler(settings).ingest(inbox, "night-1")
    captured = capfd.readouterr()
    assert "file_rejected" in captured.out + captured.err
    assert "PID7731" not in captured.out + captured.err


def test_patient_identity_is_pseudonymised_everywhere(
    settings: Settings, broker: redis.Redis, inbox: Path, capfd: pytest.CaptureFixture[str]
) -> None:
    scheduler = Scheduler(settings)
    scheduler.ingest(inbox, "night-1")

    engine = make_engine(settings.resolved_database_url)
    with engine.connect() as connection:
        dump = "\n".join(
            repr(tuple(row))
            for table in ("images", "studies", "image_paths", "batches")
            for row in connection.execute(text(f"SELECT * FROM {table}"))
        )
    engine.dispose()
    assert RAW_PATIENT not in dump and "Doe" not in dump
    captured = capfd.readouterr()
    assert RAW_PATIENT not in captured.out + captured.err

    rows = images(scheduler)
    pseudonyms = {r.patient_pseudonym for r in rows if r.source_path.endswith((".dcm", "single"))}
    left = next(r for r in rows if Path(r.source_path).name in ("left.jpg", "copy-of-left.jpg"))
    # Manifest and DICOM header name the same patient: one pseudonym links them.
    assert pseudonyms == {left.patient_pseudonym} and len(left.patient_pseudonym) == 64
    with scheduler.sessions() as session:
        study = session.scalar(select(Study).where(Study.study_key == "1.2.826.0.1.3680043.10.1.1"))
        assert study.patient_pseudonym == left.patient_pseudonym


def test_requeue_resends_work_lost_with_the_queue(
    settings: Settings, broker: redis.Redis, inbox: Path
) -> None:
    scheduler = Scheduler(settings)
    scheduler.ingest(inbox, "night-1")
    expected = sorted(queued_ids(broker))
    broker.flushdb()  # the broker restarted empty

    assert scheduler.requeue(older_than_s=3600) == (0, 0)  # not stalled for long enough yet
    requeued, failed = scheduler.requeue(older_than_s=0)
    assert (requeued, failed) == (len(expected), 0)
    assert sorted(queued_ids(broker)) == expected


def test_requeue_gives_up_on_an_image_that_keeps_failing_its_worker(
    settings: Settings, broker: redis.Redis, inbox: Path
) -> None:
    scheduler = Scheduler(settings)
    scheduler.ingest(inbox, "night-1")
    victim = images(scheduler)[0].id
    with scheduler.sessions.begin() as session:
        session.execute(
            update(Image)
            .where(Image.id == victim)
            .values(status=ImageStatus.PROCESSING, attempts=settings.max_attempts)
        )
    scheduler.requeue(older_than_s=0)
    with scheduler.sessions() as session:
        image = session.get_one(Image, victim)
        assert image.status is ImageStatus.FAILED and image.reason_code == "too_many_attempts"
        assert image.finished_at is not None


def test_cli_ingest_and_status(settings: Settings, broker: redis.Redis, inbox: Path) -> None:
    def mdf(*args: str) -> str:
        result = subprocess.run(
            [sys.executable, "-m", "mdf.cli", *args], capture_output=True, text=True, check=True
        )
        assert RAW_PATIENT not in result.stdout + result.stderr
        return result.stdout

    mdf("ingest", str(inbox), "--batch", "cli-night")
    counts = json.loads(mdf("status", "--batch", "cli-night", "--json"))
    assert counts == {
        "cli-night": {
            "registered": 0, "queued": 6, "processing": 0, "done": 0, "rejected": 2, "failed": 0
        }
    }  # fmt: skip
    assert "cli-night" in mdf("status")


def test_every_corpus_file_ends_registered_or_rejected_with_its_reason(
    settings: Settings, broker: redis.Redis, tmp_path: Path
) -> None:
    from corpus import build_corpus, expected_images

    expected = build_corpus(tmp_path / "corpus")
    before = snapshot(tmp_path / "corpus")
    report, _ = Scheduler(settings).ingest(tmp_path / "corpus", "odd-night")

    assert report.files == len(expected)
    outcomes: dict[str, list[Image]] = {}
    for image in images(Scheduler(settings)):
        outcomes.setdefault(Path(image.source_path).name, []).append(image)
    for name, outcome in expected.items():
        rows = outcomes[name]
        if outcome.startswith("ok:"):
            assert len(rows) == expected_images(outcome), name
            assert {r.status for r in rows} == {ImageStatus.QUEUED}, name
        else:
            assert [(r.status, r.reason_code) for r in rows] == [(ImageStatus.REJECTED, outcome)], (
                name
            )
            assert rows[0].reason and rows[0].finished_at is not None
    assert snapshot(tmp_path / "corpus") == before


def test_pydicom_test_files_never_stop_a_batch(
    settings: Settings, broker: redis.Redis, tmp_path: Path
) -> None:
    from pydicom.data import get_testdata_files

    inbox = tmp_path / "vendors"
    inbox.mkdir()
    sources = [Path(p) for p in get_testdata_files() if Path(p).is_file()]
    for i, source in enumerate(sources):
        (inbox / f"{i:03d}-{source.name}").write_bytes(source.read_bytes())

    report, queued = Scheduler(settings).ingest(inbox, "vendors")
    assert report.files == len(sources) > 150
    rows = images(Scheduler(settings))
    seen = {Path(p.source_path).name for p in rows}
    with Scheduler(settings).sessions() as session:
        seen |= {Path(p).name for p in session.scalars(select(ImagePath.path))}
    assert seen == {p.name for p in inbox.iterdir()}  # every file has its row
    assert all(r.reason for r in rows if r.status is ImageStatus.REJECTED)
    assert queued == sum(r.status is ImageStatus.QUEUED for r in rows) > 10
