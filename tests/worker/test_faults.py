"""Faults with real processes: workers are ``mdf worker`` subprocesses serving the tiny model,
PostgreSQL is real, and Redis is a real server private to each test.

Each test breaks something in the middle of a batch (a worker killed, the broker
restarted empty, the database cut off, a poisoned image, one that kills its worker, a
second worker racing the first) and then requires every image to end with exactly one
prediction or a reason.
"""

from __future__ import annotations

import signal
import time
from collections import Counter
from pathlib import Path

import numpy as np
import pytest
import sqlalchemy as sa
from image_rows import predictions_per_image, statuses
from PIL import Image as PILImage
from sqlalchemy.orm import Session, sessionmaker
from worker_processes import RedisServer, TcpProxy, run_mdf, wait_for

from db.lifecycle import ImageStatus
from db.models import Image, Prediction
from mdf.celery_app import INFERENCE_QUEUE
from mdf.settings import Settings
from scheduler.dispatch import send_chunks
from scheduler.intake import ingest
from scheduler.service import Scheduler

pytestmark = [
    pytest.mark.slow,
    pytest.mark.parametrize("database_url", ["postgresql"], indirect=True),
]

READY_S = 120  # a cold start imports torch and transformers on a busy two-core machine
FINISH_S = 180
LEASE_S = "10"  # the shortest claim lease allowed: a dead worker's chunk lapses quickly
#: On a worker's PYTHONPATH: its decoder kills it on a file holding ``POISON``.
CRASHING_DECODER = Path(__file__).parent / "crashing_decoder"
POISON = b"mdf-test: this file kills the decoder"


@pytest.fixture
def redis_url(own_redis: RedisServer) -> str:
    return own_redis.url


def _inbox(directory: Path, n: int, *, seed: int = 0) -> Path:
    from mdf.synthetic.delivery import write_dataset

    return write_dataset(directory, n, seed=seed, size=96, dicom_fraction=0.25, write_masks=False)


def _with(monkeypatch: pytest.MonkeyPatch, **env: str) -> Settings:
    for name, value in env.items():
        monkeypatch.setenv(name, value)
    return Settings()


def _count(sessions: sessionmaker[Session], *wanted: ImageStatus) -> int:
    return sum(1 for status in statuses(sessions).values() if status in wanted)


def _all_done(sessions: sessionmaker[Session], n: int) -> bool:
    return _count(sessions, ImageStatus.DONE) == n


def _assert_one_prediction_each(sessions: sessionmaker[Session], n: int) -> None:
    assert Counter(statuses(sessions).values()) == {ImageStatus.DONE: n}
    per_image = predictions_per_image(sessions)
    assert sorted(per_image) == sorted(statuses(sessions))
    assert set(per_image.values()) == {1}


def _waiting_on_predictions(engine: sa.Engine) -> int:
    """How many sessions of this database wait for a lock on the predictions table."""
    with engine.connect() as connection:
        return int(
            connection.scalar(
                sa.text(
                    "SELECT count(*) FROM pg_locks AS l JOIN pg_class AS c ON c.oid = l.relation "
                    "WHERE c.relname = 'predictions' AND NOT l.granted AND l.database = "
                    "(SELECT oid FROM pg_database WHERE datname = current_database())"
                )
            )
        )


def _all_resent(
    scheduler: Scheduler, sessions: sessionmaker[Session], *, unclaimed: bool = False
) -> tuple[int, int]:
    """What the scheduler's requeue re-sent and gave up on, once every claim of a dead worker
    lapsed (each in its turn); with ``unclaimed``, the queued images too, as it does after
    MDF_REQUEUE_AFTER_S."""
    total = [0, 0]

    def lapsed() -> bool:
        requeued, failed = scheduler.requeue()
        total[0] += requeued
        total[1] += failed
        return total != [0, 0] and _count(sessions, ImageStatus.PROCESSING) == 0

    wait_for(lapsed, timeout=30, what="the dead worker's claims to lapse")
    if unclaimed:
        total[0] += scheduler.requeue(older_than_s=0)[0]
    return total[0], total[1]


def _resent(scheduler: Scheduler) -> tuple[int, int] | None:
    """What the scheduler's requeue re-sent or gave up on (requeue_after_s not elapsed)."""
    requeued, failed = scheduler.requeue()
    return (requeued, failed) if requeued or failed else None


def test_a_worker_killed_mid_chunk_is_replaced_without_double_results(
    worker_settings: Settings, sessions: sessionmaker[Session], start_worker, tmp_path: Path
) -> None:
    scheduler = Scheduler(worker_settings)
    scheduler.ingest(_inbox(tmp_path / "inbox", 8))  # two chunks of four
    engine = sa.create_engine(worker_settings.database_url)
    with engine.connect() as blocker:
        # Hold the predictions table: the worker claims and classifies its first chunk,
        # then waits to write it. That is where it dies.
        blocker.execute(sa.text("LOCK TABLE predictions IN SHARE ROW EXCLUSIVE MODE"))
        first = start_worker("first", MDF_CLAIM_LEASE_S=LEASE_S)
        wait_for(
            lambda: _waiting_on_predictions(engine),
            timeout=READY_S,
            what="the first worker to be writing its first chunk",
            interval=0.2,
        )
        first.kill()
        claimed = [i for i, s in statuses(sessions).items() if s is ImageStatus.PROCESSING]
        assert len(claimed) == 4
        blocker.rollback()
    engine.dispose()
    assert predictions_per_image(sessions) == {}

    # Its claim lapses within the lease, and the scheduler's requeue re-sends the chunk
    # then, without waiting requeue_after_s (an hour).
    assert worker_settings.requeue_after_s == 3600
    resent = wait_for(
        lambda: _resent(scheduler), timeout=30, what="the dead worker's claim to lapse"
    )
    assert resent == (4, 0)
    second = start_worker("second", "--burst")
    assert second.process.wait(FINISH_S) == 0, second.log()[-3000:]
    _assert_one_prediction_each(sessions, 8)
    with sessions() as session:
        attempts = dict(session.execute(sa.select(Image.id, Image.attempts)).all())
    assert {attempts[i] for i in claimed} == {2}


def test_a_worker_killed_with_two_chunks_in_flight_is_replaced_without_double_results(
    worker_settings: Settings, sessions: sessionmaker[Session], start_worker, tmp_path: Path
) -> None:
    """Chunks in flight run in the threads of Celery's pool: both are classified and wait
    to write when the worker dies; the next worker, two in flight too, writes each once."""
    scheduler = Scheduler(worker_settings)
    scheduler.ingest(_inbox(tmp_path / "inbox", 8))  # two chunks of four
    engine = sa.create_engine(worker_settings.database_url)
    with engine.connect() as blocker:
        blocker.execute(sa.text("LOCK TABLE predictions IN SHARE ROW EXCLUSIVE MODE"))
        first = start_worker("first", MDF_CLAIM_LEASE_S=LEASE_S, MDF_CHUNKS_IN_FLIGHT="2")
        wait_for(
            lambda: _waiting_on_predictions(engine) == 2,
            timeout=READY_S,
            what="the first worker to be writing both chunks",
            interval=0.2,
        )
        first.kill()
        assert Counter(statuses(sessions).values()) == {ImageStatus.PROCESSING: 8}
        blocker.rollback()
    engine.dispose()
    (ready,) = first.events("worker_ready")
    assert ready["chunks_in_flight"] == 2

    assert _all_resent(scheduler, sessions) == (8, 0)
    second = start_worker("second", "--burst", MDF_CHUNKS_IN_FLIGHT="2")
    assert second.process.wait(FINISH_S) == 0, second.log()[-3000:]
    _assert_one_prediction_each(sessions, 8)
    assert len(second.events("chunk_finished")) == 2


def test_redis_restarted_empty_mid_batch_is_recovered_by_requeue(
    worker_settings: Settings,
    sessions: sessionmaker[Session],
    start_worker,
    own_redis: RedisServer,
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    settings = _with(monkeypatch, MDF_CHUNK_SIZE="2")
    worker = start_worker("survivor")
    worker.wait_ready(READY_S)
    Scheduler(settings).ingest(_inbox(tmp_path / "inbox", 16))
    wait_for(lambda: _count(sessions, ImageStatus.DONE), timeout=FINISH_S, what="a first result")
    own_redis.restart()
    assert own_redis.client().llen(INFERENCE_QUEUE) == 0  # the queued chunks are gone
    assert _count(sessions, ImageStatus.QUEUED, ImageStatus.PROCESSING) > 0

    requeued, failed = Scheduler(settings).requeue(older_than_s=0)
    assert requeued > 0 and failed == 0
    wait_for(lambda: _all_done(sessions, 16), timeout=FINISH_S, what="the batch to finish")
    _assert_one_prediction_each(sessions, 16)


def test_tasks_retry_through_a_database_outage(
    worker_settings: Settings,
    sessions: sessionmaker[Session],
    start_worker,
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    settings = _with(monkeypatch, MDF_CHUNK_SIZE="2")
    url = sa.make_url(settings.database_url)
    proxy = TcpProxy(url.host or "127.0.0.1", url.port or 5432)
    proxy.open()
    try:
        through_proxy = url.set(host="127.0.0.1", port=proxy.port)
        worker = start_worker(
            "patient", MDF_DATABASE_URL=through_proxy.render_as_string(hide_password=False)
        )
        worker.wait_ready(READY_S)
        Scheduler(settings).ingest(_inbox(tmp_path / "inbox", 12))
        wait_for(
            lambda: _count(sessions, ImageStatus.DONE), timeout=FINISH_S, what="a first result"
        )
        proxy.close()
        assert _count(sessions, ImageStatus.QUEUED, ImageStatus.PROCESSING) > 0
        wait_for(
            lambda: '"event": "chunk_retry"' in worker.log(),
            timeout=60,
            what="a chunk to retry while the database is unreachable",
        )
        time.sleep(3)  # the outage lasts a few seconds longer: more retries pile up
        proxy.open()
        wait_for(lambda: _all_done(sessions, 12), timeout=FINISH_S, what="the batch to finish")
    finally:
        proxy.close()
    _assert_one_prediction_each(sessions, 12)
    assert '"event": "chunk_given_up"' not in worker.log()


def test_a_picture_the_model_refuses_is_ungradable_alone_and_its_chunk_mates_succeed(
    worker_settings: Settings,
    sessions: sessionmaker[Session],
    start_worker,
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    # Intake lets 24-pixel pictures through here, but the model needs 32: the file decodes,
    # is assessed ungradable, and the model refuses it. That is an outcome, not a failure:
    # done, ungradable, without an answer, while the rest of its chunk is classified.
    settings = _with(monkeypatch, MDF_MIN_IMAGE_SIDE="16")
    inbox = _inbox(tmp_path / "inbox", 3)
    poison = np.zeros((24, 24, 3), dtype=np.uint8)
    poison[..., 0] = 180
    PILImage.fromarray(poison).save(inbox / "tiny.jpg", quality=95)
    _, queued = Scheduler(settings).ingest(inbox)
    assert queued == 4  # one chunk

    worker = start_worker("burst", "--burst")
    assert worker.process.wait(FINISH_S) == 0, worker.log()[-3000:]
    with sessions() as session:
        rows = session.execute(
            sa.select(Image.source_path, Image.status, Prediction.gradable, Prediction.label).join(
                Prediction
            )
        ).all()
    outcome = {Path(path).name: tuple(rest) for path, *rest in rows}
    assert outcome.pop("tiny.jpg") == (ImageStatus.DONE, False, None)
    assert {status for status, _, _ in outcome.values()} == {ImageStatus.DONE}
    assert all(label is not None for _, _, label in outcome.values())
    (chunk,) = worker.events("chunk_finished")  # all four in one chunk, one forward pass
    assert (chunk["images"], chunk["written"], chunk["failed"]) == (4, 4, 0)
    (tiny,) = [e for e in worker.events("image_classified") if e["label"] is None]
    assert tiny["gradable"] is False and tiny["quality_reason"]


def test_two_workers_on_one_queue_never_predict_an_image_twice(
    worker_settings: Settings,
    sessions: sessionmaker[Session],
    start_worker,
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    settings = _with(monkeypatch, MDF_CHUNK_SIZE="2")
    assert run_mdf("ping", "--timeout", "1").returncode == 1
    workers = [start_worker("left"), start_worker("right")]
    for worker in workers:
        worker.wait_ready(READY_S)
    ping = run_mdf("ping", "--timeout", "2")  # the containers' health check
    assert ping.returncode == 0 and "left@" in ping.stdout and "right@" in ping.stdout
    scheduler = Scheduler(settings)
    ingest(_inbox(tmp_path / "inbox", 16), settings=settings, sessions=scheduler.sessions)
    with sessions.begin() as session:
        session.execute(sa.update(Image).values(status=ImageStatus.QUEUED))
        ids = list(session.scalars(sa.select(Image.id).order_by(Image.id)))
    for start in range(0, 16, 2):  # every chunk twice in a row: both workers get the same one
        for _ in range(2):
            send_chunks(scheduler.app, ids[start : start + 2], 2)
    wait_for(lambda: _all_done(sessions, 16), timeout=FINISH_S, what="the batch to finish")
    _assert_one_prediction_each(sessions, 16)
    wait_for(
        lambda: sum(len(w.events("chunk_finished")) for w in workers) == 16,
        timeout=60,
        what="the duplicate deliveries to be consumed",
    )
    for worker in workers:  # both took part, racing each other on the same chunks
        assert any(chunk["claimed"] for chunk in worker.events("chunk_finished")), worker.name
    chunks = [event for worker in workers for event in worker.events("chunk_finished")]
    # Each image was delivered twice: one delivery wrote it, the other found it done or
    # lost the race to write it (a duplicate the database refused).
    assert sum(chunk["written"] for chunk in chunks) == 16
    assert sum(chunk["skipped"] + chunk["duplicates"] for chunk in chunks) == 16
    # The later delivery of each chunk found it claimed or done: nothing processed twice.
    assert sum(chunk["duplicates"] + chunk["taken_over"] for chunk in chunks) == 0
    assert not any(worker.events("chunk_failed") for worker in workers)


@pytest.mark.parametrize("in_flight", [1, 2])
def test_an_image_that_kills_its_worker_fails_alone_and_its_chunk_mates_end_done(
    worker_settings: Settings,
    sessions: sessionmaker[Session],
    start_worker,
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
    in_flight: int,
) -> None:
    """One chunk of 16, or two of 8 in flight together. The first crash charges every image
    in flight; then each chunk, started before, runs alone and image by image, so the poison
    alone is charged again: the chunk beside it in flight is not."""
    settings = _with(monkeypatch, MDF_CHUNK_SIZE=str(16 // in_flight))
    inbox = _inbox(tmp_path / "inbox", 15)
    picture = np.full((96, 96, 3), (200, 60, 40), dtype=np.uint8)
    PILImage.fromarray(picture).save(inbox / "poison.jpg", comment=POISON)
    scheduler = Scheduler(settings)
    _, queued = scheduler.ingest(inbox)
    assert queued == 16
    with sessions() as session:
        poison = session.scalar(sa.select(Image.id).where(Image.source_path.endswith("poison.jpg")))
    crashing = {
        "PYTHONPATH": str(CRASHING_DECODER),
        "MDF_CLAIM_LEASE_S": LEASE_S,
        "MDF_CHUNKS_IN_FLIGHT": str(in_flight),
    }
    resent = []
    for attempt in range(settings.max_attempts):
        victim = start_worker(f"victim{attempt}", **crashing)
        assert victim.process.wait(READY_S + FINISH_S) == -signal.SIGKILL, victim.log()[-3000:]
        # A worker that dies within moments of its start may hold a chunk it did not claim
        # yet: queued, it is re-sent after MDF_REQUEUE_AFTER_S, here at once.
        resent.append(_all_resent(scheduler, sessions, unclaimed=in_flight > 1))
    # Three crashes: the first ran the chunks together, the next two image by image; then
    # the scheduler gave up on the poison alone and re-sent the rest.
    assert resent[-1][1] == 1
    if in_flight == 1:
        assert resent[0] == (16, 0)
    survivor = start_worker("survivor", "--burst", **crashing)
    assert survivor.process.wait(FINISH_S) == 0, survivor.log()[-3000:]
    with sessions() as session:
        rows = session.execute(sa.select(Image.id, Image.status, Image.reason_code, Image.attempts))
        outcome = {image_id: (status, code, attempts) for image_id, status, code, attempts in rows}
    assert outcome.pop(poison) == (ImageStatus.FAILED, "too_many_attempts", settings.max_attempts)
    assert {status for status, _, _ in outcome.values()} == {ImageStatus.DONE}
    assert max(attempts for _, _, attempts in outcome.values()) < settings.max_attempts
    assert set(predictions_per_image(sessions)) == set(outcome)
