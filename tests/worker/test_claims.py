"""Claiming: what a (re)delivered chunk may work on, decided by the database alone."""

from __future__ import annotations

from pathlib import Path

import sqlalchemy as sa
from image_rows import add_images
from sqlalchemy.orm import Session, sessionmaker

from db.models import Image, ImageStatus
from worker.claims import Failure, claim_images, mark_failed


def _row(sessions: sessionmaker[Session], image_id: int) -> Image:
    with sessions() as session:
        return session.get_one(Image, image_id)


def test_claims_queued_and_processing_and_counts_the_attempt(
    sessions: sessionmaker[Session], tmp_path: Path
) -> None:
    queued = add_images(sessions, [tmp_path / "a.jpg"])
    stalled = add_images(sessions, [tmp_path / "b.jpg"], status=ImageStatus.PROCESSING, attempts=1)
    with sessions.begin() as session:
        claim = claim_images(session, [*stalled, *queued, *queued], max_attempts=3)
    assert [image.id for image in claim.images] == sorted(queued + stalled)
    assert claim.skipped == [] and claim.exhausted == []
    for image_id, attempts in ((queued[0], 1), (stalled[0], 2)):
        row = _row(sessions, image_id)
        assert row.status is ImageStatus.PROCESSING
        assert row.attempts == attempts
        assert row.started_at is not None


def test_finished_registered_and_unknown_images_are_skipped(
    sessions: sessionmaker[Session], tmp_path: Path
) -> None:
    ids = [
        *add_images(sessions, [tmp_path / "done.jpg"], status=ImageStatus.DONE),
        *add_images(sessions, [tmp_path / "failed.jpg"], status=ImageStatus.FAILED),
        *add_images(sessions, [tmp_path / "rejected.jpg"], status=ImageStatus.REJECTED),
        *add_images(sessions, [tmp_path / "new.jpg"], status=ImageStatus.REGISTERED),
    ]
    with sessions.begin() as session:
        claim = claim_images(session, [*ids, 999_999], max_attempts=3)
    assert claim.images == [] and claim.exhausted == []
    assert claim.skipped == [*ids, 999_999]
    with sessions() as session:
        assert session.scalar(sa.select(sa.func.sum(Image.attempts))) == 0


def test_an_image_started_max_attempts_times_is_failed_not_retried(
    sessions: sessionmaker[Session], tmp_path: Path
) -> None:
    (worn,) = add_images(
        sessions, [tmp_path / "worn.jpg"], status=ImageStatus.PROCESSING, attempts=3
    )
    (fresh,) = add_images(sessions, [tmp_path / "fresh.jpg"], attempts=2)
    with sessions.begin() as session:
        claim = claim_images(session, [worn, fresh], max_attempts=3)
    assert claim.exhausted == [worn]
    assert [image.id for image in claim.images] == [fresh]
    row = _row(sessions, worn)
    assert row.status is ImageStatus.FAILED
    assert row.reason_code == "too_many_attempts"
    assert "3 attempts" in (row.reason or "")
    assert row.attempts == 3 and row.finished_at is not None


def test_mark_failed_keeps_each_reason_and_spares_finished_images(
    sessions: sessionmaker[Session], tmp_path: Path
) -> None:
    first, second = add_images(sessions, [tmp_path / "1.jpg", tmp_path / "2.jpg"])
    (done,) = add_images(sessions, [tmp_path / "3.jpg"], status=ImageStatus.DONE)
    with sessions.begin() as session:
        mark_failed(
            session,
            {
                first: Failure("decode_error", "JPEG pixels cannot be decoded"),
                second: Failure("unusable_image", "no retina visible"),
                done: Failure("unusable_image", "too late"),
            },
        )
    assert (_row(sessions, first).reason_code, _row(sessions, first).status) == (
        "decode_error",
        ImageStatus.FAILED,
    )
    assert _row(sessions, second).reason == "no retina visible"
    assert _row(sessions, done).status is ImageStatus.DONE
    assert _row(sessions, done).reason is None
