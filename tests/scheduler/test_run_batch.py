"""``mdf run-batch`` as a screening program runs it: a subprocess, with real workers and Redis."""

from __future__ import annotations

import io
import json
import os
import re
import signal
import subprocess
import sys
import time
import uuid
from pathlib import Path

import pytest
import redis
from sqlalchemy import select
from sqlalchemy.orm import Session

from db.models import Image, ImageStatus, ModelVersion, Prediction
from db.session import session_factory
from mdf.celery_app import create_app
from mdf.settings import Settings
from mdf.synthetic.bad_files import BAD_FILES, write_bad_files
from mdf.synthetic.delivery import write_dataset
from scheduler.batch_progress import Progress, ProgressDisplay
from scheduler.run_batch import serving_workers
from scheduler.service import Scheduler

NIGHT_IMAGES = 6
sqlite_only = pytest.mark.parametrize("database_url", ["sqlite"], indirect=True)


@pytest.fixture
def night(tmp_path: Path) -> Path:
    """A small night: JPEG and DICOM, clinical text for some patients, and the bad files."""
    inbox = write_dataset(tmp_path / "inbox", NIGHT_IMAGES, seed=3, size=128, with_text=0.5)
    write_bad_files(inbox, size=128)
    return inbox


@pytest.fixture
def serving(
    settings: Settings, broker: redis.Redis, tiny_checkpoint: Path, monkeypatch: pytest.MonkeyPatch
) -> Settings:
    """The test's settings, serving the tiny checkpoint in chunks of four images."""
    monkeypatch.setenv("MDF_MODEL_DIR", str(tiny_checkpoint))
    monkeypatch.setenv("MDF_CHUNK_SIZE", "4")
    monkeypatch.setenv("OMP_NUM_THREADS", "1")
    return Settings()


def mdf(*args: str, **env: str) -> subprocess.Popen[str]:
    return subprocess.Popen(
        [sys.executable, "-m", "mdf.cli", *args],
        env={**os.environ, **env},
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )


def run_batch(folder: Path, *args: str, **env: str) -> tuple[int, str, str]:
    process = mdf("run-batch", str(folder), "--batch", "night", *args, **env)
    stdout, stderr = process.communicate(timeout=240)
    return process.returncode, stdout, stderr


def events(stderr: str, name: str) -> list[dict]:
    return [json.loads(line) for line in stderr.splitlines() if f'"event": "{name}"' in line]


def assert_stopped(pids: list[int]) -> None:
    for pid in pids:
        assert not Path(f"/proc/{pid}").exists(), f"worker {pid} was left running"


def batch_images(session: Session) -> list[Image]:
    return list(session.scalars(select(Image).order_by(Image.id)))


def confusion_by_hand(images: list[Image], referable: set[str]) -> dict[str, list[int]]:
    """[TP, FN, FP, TN] per eye and per patient, from the images alone: an eye is truly
    referable when a label of it is, and referred when a gradable image is referable or
    none is gradable (a missing eye refers its patient); a patient likewise over its eyes."""
    eyes: dict[tuple[int, str], list[Image]] = {}
    for image in images:
        if image.study_id is not None and image.label is not None:
            eyes.setdefault((image.study_id, image.laterality or "-"), []).append(image)
    assert eyes and all(side in "RL" for _, side in eyes)  # every delivered file had an eye

    def gradable(image: Image) -> bool:
        (prediction,) = image.predictions or [None]
        return prediction is not None and prediction.gradable is not False

    def referred(shots: list[Image]) -> bool:
        good = [shot for shot in shots if gradable(shot)]
        return not good or any(shot.predictions[0].referable for shot in good)

    def cells(pairs: list[tuple[bool, bool]]) -> list[int]:
        order = ((True, True), (True, False), (False, True), (False, False))  # TP FN FP TN
        return [pairs.count(cell) for cell in order]

    eye_pairs = {
        key: (any(s.label in referable for s in shots), referred(shots))
        for key, shots in eyes.items()
    }
    studies = {study for study, _ in eyes}
    patient_pairs = [
        (
            any(eye_pairs.get((study, side), (False, False))[0] for side in "RL"),
            any((study, side) not in eye_pairs or eye_pairs[study, side][1] for side in "RL"),
        )
        for study in studies
    ]
    return {"eyes": cells(list(eye_pairs.values())), "patients": cells(patient_pairs)}


@pytest.mark.slow
def test_a_night_ends_with_every_file_classified_or_rejected_with_its_reason(
    serving: Settings, night: Path
) -> None:
    code, stdout, stderr = run_batch(night)

    assert code == 0, stderr[-3000:]
    with session_factory(serving.resolved_database_url)() as session:
        images = batch_images(session)
        predicted = dict(session.execute(select(Prediction.image_id, Prediction.worker)).all())
        versions = set(session.scalars(select(ModelVersion.name)))
    rejected = {
        Path(image.source_path).relative_to(night).as_posix(): image.reason_code
        for image in images
        if image.status == ImageStatus.REJECTED
    }
    assert rejected == BAD_FILES
    assert all(image.reason for image in images if image.status == ImageStatus.REJECTED)
    done = [image.id for image in images if image.status == ImageStatus.DONE]
    assert len(done) == NIGHT_IMAGES and sorted(predicted) == done
    assert all(worker.startswith("run-batch-1-") for worker in predicted.values())

    assert f"{NIGHT_IMAGES} classified, {len(BAD_FILES)} rejected, 0 failed" in stdout
    label_rows = re.findall(r"^  (\w+) +(\d+)  (\S+)$", stdout, flags=re.MULTILINE)
    assert sum(int(n) for _, n, _ in label_rows) == NIGHT_IMAGES
    assert {version for _, _, version in label_rows} == versions
    for name, reason_code in BAD_FILES.items():
        assert re.search(rf"^  rejected +{re.escape(name)} +{reason_code} +\S", stdout, re.M)
    assert "mdf results --batch night" in stdout
    (started,) = events(stderr, "local_workers_started")
    assert_stopped(started["pids"])

    # the manifest carries labels: a validation night, checked against a matrix by hand
    with session_factory(serving.resolved_database_url)() as session:
        expected = confusion_by_hand(batch_images(session), set(serving.referable_labels))
    assert "validation against the manifest's labels (referable: inherited;" in stdout
    for name, (tp, fn, fp, tn) in expected.items():
        (row,) = re.findall(
            rf"^  {name} +(\d+) +(\S+) +\S+ +\S+ +(\d+) +(\d+) +(\d+) +(\d+)$", stdout, re.M
        )
        n, accuracy, *matrix = row
        assert [int(cell) for cell in matrix] == [tp, fn, fp, tn], name
        assert (
            int(n) == tp + fn + fp + tn == (NIGHT_IMAGES if name == "eyes" else NIGHT_IMAGES // 2)
        )
        assert float(accuracy) == pytest.approx((tp + tn) / int(n), abs=5e-4)


@pytest.mark.slow
@sqlite_only
def test_a_running_fleet_is_used_and_work_lost_from_the_queue_is_sent_again(
    serving: Settings, broker: redis.Redis, night: Path, tmp_path: Path
) -> None:
    Scheduler(serving).ingest(night, "night")
    broker.flushdb()  # a broker restarted without persistence: the images wait in the database
    name = f"fleet-{uuid.uuid4().hex[:8]}"
    with (tmp_path / "fleet.log").open("w") as log:
        fleet = subprocess.Popen(
            [sys.executable, "-m", "mdf.cli", "worker", "--hostname", f"{name}@%h"],
            stdout=log,
            stderr=subprocess.STDOUT,
        )
    try:
        app = create_app(serving)
        deadline = time.monotonic() + 120
        while not any(worker.startswith(name) for worker in serving_workers(app, 1.0)):
            assert fleet.poll() is None and time.monotonic() < deadline, "the fleet did not start"
        code, stdout, stderr = run_batch(night, MDF_REQUEUE_AFTER_S="3")
    finally:
        fleet.send_signal(signal.SIGTERM)
        fleet.wait(30)

    assert code == 0, stderr[-3000:]
    assert not events(stderr, "local_workers_started")
    assert f"by the running fleet ({name}@" in stdout
    assert events(stderr, "batch_stalled") and events(stderr, "stalled_requeued")
    with session_factory(serving.resolved_database_url)() as session:
        workers = set(session.scalars(select(Prediction.worker)))
        statuses = {image.status for image in batch_images(session)}
    assert statuses == {ImageStatus.DONE, ImageStatus.REJECTED}
    assert {worker.split("@")[0] for worker in workers} == {name}


@pytest.mark.slow
@sqlite_only
def test_timing_out_exits_non_zero_with_the_reason_and_stops_the_workers_it_started(
    serving: Settings, night: Path
) -> None:
    code, stdout, stderr = run_batch(night, "--timeout", "1")

    assert code == 1
    assert re.search(
        r"^mdf run-batch: timed out after 1 s with \d+ images unfinished", stderr, re.M
    )
    assert "0 classified, 5 rejected" in stdout
    (started,) = events(stderr, "local_workers_started")
    assert_stopped(started["pids"])


def start_run_batch(folder: Path) -> tuple[subprocess.Popen[str], list[int]]:
    """``mdf run-batch`` in the background, once it has started its workers; and their pids."""
    process = mdf("run-batch", str(folder), "--batch", "night")
    assert process.stderr is not None
    while not (started := events(line := process.stderr.readline(), "local_workers_started")):
        assert line, "run-batch ended before starting its workers"
    return process, started[0]["pids"]


@pytest.mark.slow
@sqlite_only
def test_a_worker_that_dies_ends_the_run_with_the_reason(serving: Settings, night: Path) -> None:
    process, pids = start_run_batch(night)
    os.kill(pids[0], signal.SIGKILL)  # as the kernel's OOM killer would
    _, stderr = process.communicate(timeout=60)

    assert process.returncode == 1
    assert (
        "mdf run-batch: the local workers exited (status [-9]) with 6 images unfinished" in stderr
    )


@pytest.mark.slow
@sqlite_only
def test_ctrl_c_stops_the_workers_it_started(serving: Settings, night: Path) -> None:
    process, pids = start_run_batch(night)
    process.send_signal(signal.SIGINT)
    _, stderr = process.communicate(timeout=60)

    assert process.returncode == 130
    assert "mdf run-batch: interrupted" in stderr
    assert_stopped(pids)


def test_progress_shows_rate_and_time_left_on_one_terminal_line() -> None:
    counts = {status.value: 0 for status in ImageStatus}
    counts.update(queued=6, processing=2, done=8, rejected=3)
    progress = Progress(counts, finished_since_start=8, elapsed_s=4.0)
    terminal = io.StringIO()
    ProgressDisplay("night", terminal).show(progress)
    finished = counts | {"queued": 0, "processing": 0, "done": 16}
    ProgressDisplay("night", terminal).show(Progress(finished, 16, 8.0), final=True)

    first, final = terminal.getvalue().split("\r")[1:]
    assert (
        first == "night: 8/19 classified, 3 rejected, 0 failed, 2.0 images/s, about 4 s left\x1b[K"
    )
    assert (
        final
        == "night: 16/19 classified, 3 rejected, 0 failed, 2.0 images/s, finished in 8 s\x1b[K\n"
    )
