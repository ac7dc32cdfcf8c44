"""The image lifecycle: every status change refuses what the table does not allow, and the
claim, the requeue and giving up decide from the database alone."""

from __future__ import annotations

import uuid
from collections.abc import Callable
from datetime import UTC, datetime, timedelta
from pathlib import Path

import pytest
import sqlalchemy as sa
from image_rows import add_images
from sqlalchemy.orm import Session, sessionmaker

from db import lifecycle
from db.lifecycle import (
    CLAIMABLE,
    FINISHED,
    PENDING,
    Failure,
    ImageStatus,
    ReasonCode,
    allowed_from,
    may_change,
)
from db.models import Batch, Image, utcnow
from db.session import session_factory
from mdf.imaging import Rejection

MAX_ATTEMPTS = 3
LEASE_S = 300
TOKEN = "the-test's-claim"


@pytest.fixture
def sessions(database_url: str) -> sessionmaker[Session]:
    return session_factory(database_url)


def add(
    sessions: sessionmaker[Session],
    *statuses: ImageStatus,
    attempts: int = 0,
    batch: str = "night",
    age_s: float = 0,
) -> list[int]:
    """One image per status, in ``batch``, its status last changed ``age_s`` ago."""
    return [
        image_id
        for status in statuses
        for image_id in add_images(
            sessions,
            [Path(f"/inbox/{uuid.uuid4().hex}.jpg")],
            status=status,
            attempts=attempts,
            batch_name=batch,
            age_s=age_s,
        )
    ]


def aware(moment: datetime | None) -> datetime:
    """SQLite gives back naive UTC times, PostgreSQL aware ones."""
    assert moment is not None
    return moment if moment.tzinfo else moment.replace(tzinfo=UTC)


def row(sessions: sessionmaker[Session], image_id: int) -> Image:
    with sessions() as session:
        return session.get_one(Image, image_id)


def test_the_table_allows_only_forward_changes() -> None:
    assert may_change(None, ImageStatus.REGISTERED) and may_change(None, ImageStatus.REJECTED)
    assert not may_change(None, ImageStatus.DONE)
    assert may_change(ImageStatus.QUEUED, ImageStatus.PROCESSING)
    assert may_change(ImageStatus.FAILED, ImageStatus.DONE)  # a late result still counts
    for finished in (ImageStatus.DONE, ImageStatus.REJECTED):
        assert not any(may_change(finished, target) for target in ImageStatus)
    assert not may_change(ImageStatus.REGISTERED, ImageStatus.PROCESSING)  # never sent
    assert not may_change(ImageStatus.FAILED, ImageStatus.QUEUED)
    assert set(PENDING) | set(FINISHED) == set(ImageStatus)
    assert not set(PENDING) & set(FINISHED)
    assert CLAIMABLE == (ImageStatus.QUEUED, ImageStatus.PROCESSING)


def _queue(session: Session, ids: list[int]) -> None:
    lifecycle.mark_queued(session, ids)


def _claim(session: Session, ids: list[int]) -> None:
    lifecycle.claim(session, ids, max_attempts=MAX_ATTEMPTS, lease_s=LEASE_S)


def _held(session: Session, ids: list[int], token: str = TOKEN) -> None:
    """Give ``ids`` to the claim ``token``, whatever their status, as a worker's claim would."""
    session.execute(sa.update(Image).where(Image.id.in_(ids)).values(claim_token=token))


def _done(session: Session, ids: list[int]) -> None:
    _held(session, ids)
    lifecycle.mark_done(session, ids, TOKEN)


def _fail(session: Session, ids: list[int]) -> None:
    _held(session, ids)
    failures = dict.fromkeys(ids, Failure(ReasonCode.DECODE_ERROR, "no"))
    lifecycle.mark_failed(session, failures, TOKEN)


@pytest.mark.parametrize(
    ("change", "target"),
    [
        (_queue, ImageStatus.QUEUED),
        (_claim, ImageStatus.PROCESSING),
        (_done, ImageStatus.DONE),
        (_fail, ImageStatus.FAILED),
    ],
    ids=["queue", "claim", "done", "fail"],
)
def test_a_change_the_table_refuses_leaves_the_image_as_it_is(
    sessions: sessionmaker[Session],
    change: Callable[[Session, list[int]], None],
    target: ImageStatus,
) -> None:
    ids = add(sessions, *ImageStatus)
    with sessions.begin() as session:
        change(session, ids)
    after = {status: row(sessions, i).status for status, i in zip(ImageStatus, ids, strict=True)}
    assert after == {s: target if s in allowed_from(target) else s for s in ImageStatus}


def test_a_claim_holds_a_lease_and_start_counts_the_attempt(
    sessions: sessionmaker[Session],
) -> None:
    queued = add(sessions, ImageStatus.QUEUED)
    stalled = add(sessions, ImageStatus.PROCESSING, attempts=1)  # claimed before leases
    before = utcnow()
    with sessions.begin() as session:
        claim = lifecycle.claim(
            session, [*stalled, *queued, *queued], max_attempts=MAX_ATTEMPTS, lease_s=LEASE_S
        )
    assert [image.id for image in claim.images] == sorted(queued + stalled)
    assert claim.skipped == [] and claim.exhausted == []
    for image_id, attempts in ((queued[0], 0), (stalled[0], 1)):  # a claim counts nothing
        image = row(sessions, image_id)
        assert image.status is ImageStatus.PROCESSING
        assert image.attempts == attempts
        assert image.started_at is not None
        assert image.claim_token == claim.token
        lease = aware(image.lease_expires_at)
        assert before + timedelta(seconds=LEASE_S) <= lease <= utcnow() + timedelta(seconds=LEASE_S)
    with sessions.begin() as session:
        assert lifecycle.start(session, queued, claim.token) == queued
        assert lifecycle.start(session, stalled, "another claim") == []
    assert (row(sessions, queued[0]).attempts, row(sessions, stalled[0]).attempts) == (1, 1)


def _expire(sessions: sessionmaker[Session], ids: list[int]) -> None:
    """The lease on ``ids`` lapsed a second ago: their worker stopped renewing it."""
    with sessions.begin() as session:
        session.execute(
            sa.update(Image)
            .where(Image.id.in_(ids))
            .values(lease_expires_at=utcnow() - timedelta(seconds=1))
        )


def test_a_live_claim_is_left_alone_and_a_lapsed_one_is_taken_over(
    sessions: sessionmaker[Session],
) -> None:
    ids = add(sessions, ImageStatus.QUEUED, ImageStatus.QUEUED)
    with sessions.begin() as session:
        first = lifecycle.claim(session, ids, max_attempts=MAX_ATTEMPTS, lease_s=LEASE_S)
    with sessions.begin() as session:  # another delivery of the chunk, while it runs
        second = lifecycle.claim(session, ids, max_attempts=MAX_ATTEMPTS, lease_s=LEASE_S)
        again = lifecycle.claim(
            session, ids, max_attempts=MAX_ATTEMPTS, lease_s=LEASE_S, token=first.token
        )
    assert second.images == [] and second.skipped == ids
    assert [image.id for image in again.images] == ids  # the task's own retry takes them back
    _expire(sessions, ids[:1])
    with sessions.begin() as session:
        taker = lifecycle.claim(session, ids, max_attempts=MAX_ATTEMPTS, lease_s=LEASE_S)
    assert [image.id for image in taker.images] == ids[:1] and taker.skipped == ids[1:]
    with sessions.begin() as session:
        assert lifecycle.renew(session, ids, first.token, LEASE_S) == ids[1:]
        assert lifecycle.mark_done(session, ids, first.token) == ids[1:]
        lifecycle.mark_failed(
            session, {ids[0]: Failure(ReasonCode.DECODE_ERROR, "late")}, first.token
        )
    assert row(sessions, ids[0]).status is ImageStatus.PROCESSING  # the taker's, untouched
    assert row(sessions, ids[0]).claim_token == taker.token
    assert row(sessions, ids[1]).status is ImageStatus.DONE
    assert row(sessions, ids[1]).lease_expires_at is None


def test_renew_extends_the_lease_of_the_images_still_held(
    sessions: sessionmaker[Session],
) -> None:
    ids = add(sessions, ImageStatus.QUEUED, ImageStatus.QUEUED)
    with sessions.begin() as session:
        claim = lifecycle.claim(session, ids, max_attempts=MAX_ATTEMPTS, lease_s=10)
    short = aware(row(sessions, ids[0]).lease_expires_at)
    with sessions.begin() as session:
        lifecycle.mark_done(session, ids[1:], claim.token)
        assert lifecycle.renew(session, ids, claim.token, LEASE_S) == ids[:1]
        assert lifecycle.renew(session, ids, "someone else", LEASE_S) == []
    renewed = aware(row(sessions, ids[0]).lease_expires_at)
    assert renewed >= short + timedelta(seconds=LEASE_S - 10)


def test_a_lapsed_claim_is_requeued_at_once_and_a_live_one_never(
    sessions: sessionmaker[Session],
) -> None:
    ids = add(sessions, ImageStatus.QUEUED, ImageStatus.QUEUED, ImageStatus.QUEUED)
    (queued,) = add(sessions, ImageStatus.QUEUED)  # sent a moment ago: not stalled
    with sessions.begin() as session:
        claim = lifecycle.claim(session, ids, max_attempts=MAX_ATTEMPTS, lease_s=LEASE_S)
        lifecycle.start(session, ids, claim.token)
    with sessions.begin() as session:  # a live claim, however old, is left to its worker
        session.execute(
            sa.update(Image)
            .values(status_changed_at=utcnow() - timedelta(days=1))
            .where(Image.id.in_(ids))
        )
        assert lifecycle.requeue_stalled(session, older_than_s=60, max_attempts=MAX_ATTEMPTS) == (
            [],
            [],
        )
    _expire(sessions, ids[:2])
    with sessions.begin() as session:
        session.execute(sa.update(Image).where(Image.id == ids[1]).values(attempts=MAX_ATTEMPTS))
        assert lifecycle.requeue_expired(session, max_attempts=MAX_ATTEMPTS) == (
            [ids[0]],
            [ids[1]],
        )
    assert row(sessions, ids[0]).status is ImageStatus.QUEUED
    assert row(sessions, ids[0]).lease_expires_at is None
    assert row(sessions, ids[1]).reason_code == ReasonCode.TOO_MANY_ATTEMPTS
    assert [row(sessions, i).status for i in (ids[2], queued)] == [
        ImageStatus.PROCESSING,
        ImageStatus.QUEUED,
    ]
    _expire(sessions, ids[2:])
    with sessions.begin() as session:  # the regular requeue takes lapsed claims too
        assert lifecycle.requeue_stalled(session, older_than_s=3600, max_attempts=MAX_ATTEMPTS) == (
            [ids[2]],
            [],
        )
    assert row(sessions, ids[2]).claim_token is None  # the lapsed claim is void
    with sessions.begin() as session:
        # The worker whose claim was re-sent can no longer finish those images; the one
        # given up on is still its own: a late result counts.
        assert lifecycle.mark_done(session, ids, claim.token) == [ids[1]]


def test_finished_registered_and_unknown_images_are_skipped(
    sessions: sessionmaker[Session],
) -> None:
    ids = add(
        sessions, ImageStatus.DONE, ImageStatus.FAILED, ImageStatus.REJECTED, ImageStatus.REGISTERED
    )
    with sessions.begin() as session:
        claim = lifecycle.claim(
            session, [*ids, 999_999], max_attempts=MAX_ATTEMPTS, lease_s=LEASE_S
        )
    assert claim.images == [] and claim.exhausted == []
    assert claim.skipped == [*ids, 999_999]
    with sessions() as session:
        assert session.scalar(sa.select(sa.func.sum(Image.attempts))) == 0


def test_an_image_started_max_attempts_times_is_failed_not_retried(
    sessions: sessionmaker[Session],
) -> None:
    (worn,) = add(sessions, ImageStatus.PROCESSING, attempts=MAX_ATTEMPTS)
    (fresh,) = add(sessions, ImageStatus.QUEUED, attempts=MAX_ATTEMPTS - 1)
    with sessions.begin() as session:
        claim = lifecycle.claim(session, [worn, fresh], max_attempts=MAX_ATTEMPTS, lease_s=LEASE_S)
    assert claim.exhausted == [worn]
    assert [image.id for image in claim.images] == [fresh]
    image = row(sessions, worn)
    assert image.status is ImageStatus.FAILED
    assert image.reason_code == "too_many_attempts"
    assert "3 attempts" in (image.reason or "")
    assert image.attempts == 3 and image.finished_at is not None


def test_mark_failed_keeps_each_reason_and_spares_finished_images(
    sessions: sessionmaker[Session],
) -> None:
    first, second = add(sessions, ImageStatus.QUEUED, ImageStatus.QUEUED)
    (done,) = add(sessions, ImageStatus.DONE)
    with sessions.begin() as session:
        _held(session, [first, second, done])
        lifecycle.mark_failed(
            session,
            {
                first: Failure(ReasonCode.DECODE_ERROR, "JPEG pixels cannot be decoded"),
                second: Failure(ReasonCode.UNUSABLE_IMAGE, "no retina visible"),
                done: Failure(ReasonCode.UNUSABLE_IMAGE, "too late"),
            },
            TOKEN,
        )
    assert (row(sessions, first).reason_code, row(sessions, first).status) == (
        "decode_error",
        ImageStatus.FAILED,
    )
    assert row(sessions, second).reason == "no retina visible"
    assert row(sessions, done).status is ImageStatus.DONE
    assert row(sessions, done).reason is None


def test_a_reason_that_quotes_a_value_is_stored_without_it(
    sessions: sessionmaker[Session],
) -> None:
    (image,) = add(sessions, ImageStatus.QUEUED)
    quoting = "DICOM header holds a malformed value (invalid PN value 'DOE^JANE')"
    with sessions.begin() as session:
        _held(session, [image])
        lifecycle.mark_failed(session, {image: Failure(ReasonCode.DECODE_ERROR, quoting)}, TOKEN)
    assert (
        row(sessions, image).reason == "DICOM header holds a malformed value (invalid PN value '…')"
    )
    assert "DOE^JANE" not in lifecycle.rejected(ReasonCode.DECODE_ERROR, quoting)["reason"]


def test_a_late_result_clears_the_failure(sessions: sessionmaker[Session]) -> None:
    (image,) = add(sessions, ImageStatus.PROCESSING, attempts=MAX_ATTEMPTS)
    with sessions.begin() as session:
        _held(session, [image])  # the claim of the worker still on it
        assert lifecycle.give_up(session, [image], MAX_ATTEMPTS) == [image]
        assert lifecycle.mark_done(session, [image], TOKEN) == [image]
    done = row(sessions, image)
    assert (done.status, done.reason_code, done.reason) == (ImageStatus.DONE, None, None)


def test_queue_registered_takes_one_batch_and_stamps_the_time(
    sessions: sessionmaker[Session],
) -> None:
    mine = add(sessions, ImageStatus.REGISTERED, ImageStatus.REGISTERED, ImageStatus.DONE)
    (other,) = add(sessions, ImageStatus.REGISTERED, batch="other")
    batch_id = row(sessions, mine[0]).batch_id
    with sessions.begin() as session:
        assert lifecycle.queue_registered(session, batch_id) == mine[:2]
    assert [row(sessions, i).status for i in [*mine, other]] == [
        ImageStatus.QUEUED,
        ImageStatus.QUEUED,
        ImageStatus.DONE,
        ImageStatus.REGISTERED,
    ]
    assert row(sessions, mine[0]).queued_at is not None
    with sessions.begin() as session:
        counts = lifecycle.status_counts(session, batch_id)
    assert counts == {
        "registered": 0,
        "queued": 2,
        "processing": 0,
        "done": 1,
        "rejected": 0,
        "failed": 0,
    }


def test_requeue_sends_stalled_and_registered_images_and_gives_up_on_worn_ones(
    sessions: sessionmaker[Session],
) -> None:
    stalled = add(sessions, ImageStatus.QUEUED, ImageStatus.PROCESSING, age_s=600)
    (registered,) = add(sessions, ImageStatus.REGISTERED)
    (worn,) = add(sessions, ImageStatus.PROCESSING, attempts=MAX_ATTEMPTS, age_s=600)
    moving = add(sessions, ImageStatus.PROCESSING, ImageStatus.DONE)
    with sessions.begin() as session:
        queued, failed = lifecycle.requeue_stalled(
            session, older_than_s=60, max_attempts=MAX_ATTEMPTS
        )
    assert (queued, failed) == (sorted([*stalled, registered]), [worn])
    assert row(sessions, worn).reason_code == ReasonCode.TOO_MANY_ATTEMPTS
    assert {row(sessions, i).status for i in queued} == {ImageStatus.QUEUED}
    assert [row(sessions, i).status for i in moving] == [ImageStatus.PROCESSING, ImageStatus.DONE]


def test_intake_arrivals_and_codes_are_stored_as_their_strings(
    sessions: sessionmaker[Session],
) -> None:
    rejection = Rejection(ReasonCode.TOO_SMALL, "32x32 pixels")
    with sessions.begin() as session:
        batch = Batch(name="night", source="/inbox")
        session.add(batch)
        session.flush()
        rows = [
            {"batch_id": batch.id, "sha256": "a" * 64, "source_path": "/inbox/a.jpg"}
            | lifecycle.registered(),
            {"batch_id": batch.id, "sha256": "b" * 64, "source_path": "/inbox/b.jpg"}
            | lifecycle.rejected(rejection.code, rejection.reason),
        ]
        session.execute(sa.insert(Image), rows)
    with sessions() as session:
        stored = session.execute(
            sa.select(Image.status, Image.reason_code, Image.finished_at).order_by(Image.sha256)
        ).all()
        raw = session.scalar(sa.text("SELECT reason_code FROM images WHERE sha256 LIKE 'b%'"))
    assert [(status, code) for status, code, _ in stored] == [
        (ImageStatus.REGISTERED, None),
        (ImageStatus.REJECTED, "too_small"),
    ]
    assert stored[1].finished_at is not None
    assert raw == "too_small" and type(raw) is str
