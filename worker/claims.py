"""Claiming a chunk's images, and failing them: UPDATE statements checked by what they return.

A chunk can be delivered more than once (a worker killed mid-chunk, the scheduler
re-sending stalled work, a broker restart), so the claim decides what is still to
do from the database, never from the message: an image that is ``queued`` or
``processing`` is (re)claimed and its ``attempts`` counted; one that is done,
failed or rejected is skipped; one already started ``max_attempts`` times is
marked failed instead of being tried again, as it is most likely what kills its
workers. The scheduler's ``requeue_stalled`` applies the same rule
(``db.models.gave_up``).
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from dataclasses import dataclass

from sqlalchemy import bindparam, or_, update
from sqlalchemy.orm import Session

from db.models import Image, ImageStatus, gave_up, utcnow

CLAIMABLE = (ImageStatus.QUEUED, ImageStatus.PROCESSING)


@dataclass(frozen=True)
class ClaimedImage:
    """What the worker needs to process one image; no ORM object leaves the transaction."""

    id: int
    batch_id: int
    source_path: str
    frame: int
    clinical_text: str | None
    attempts: int


@dataclass(frozen=True)
class Failure:
    """Why one image failed: a stable code for counting and a reason for people."""

    code: str
    reason: str


@dataclass(frozen=True)
class Claim:
    images: list[ClaimedImage]
    exhausted: list[int]  # marked failed: started max_attempts times already
    skipped: list[int]  # done, failed, rejected or unknown: nothing to do


def claim_images(session: Session, image_ids: Iterable[int], *, max_attempts: int) -> Claim:
    """Mark the chunk's unfinished images ``processing`` and count the attempt."""
    ids = sorted(set(image_ids))
    now = utcnow()
    claimable = Image.id.in_(ids) & Image.status.in_(CLAIMABLE)
    exhausted = session.scalars(
        update(Image)
        .where(claimable & (Image.attempts >= max_attempts))
        .values(gave_up(max_attempts))
        .returning(Image.id)
        .execution_options(synchronize_session=False)
    ).all()
    rows = session.execute(
        update(Image)
        .where(claimable)
        .values(
            status=ImageStatus.PROCESSING,
            started_at=now,
            status_changed_at=now,
            attempts=Image.attempts + 1,
        )
        .returning(
            Image.id,
            Image.batch_id,
            Image.source_path,
            Image.frame,
            Image.clinical_text,
            Image.attempts,
        )
        .execution_options(synchronize_session=False)
    ).all()
    images = sorted((ClaimedImage(*row) for row in rows), key=lambda image: image.id)
    taken = {image.id for image in images} | set(exhausted)
    return Claim(images, sorted(exhausted), [i for i in ids if i not in taken])


def mark_failed(session: Session, failures: Mapping[int, Failure]) -> None:
    """Fail images with their own reasons; an image finished meanwhile stays as it is."""
    if not failures:
        return
    now = utcnow()
    images = Image.__table__
    session.execute(
        update(images)
        .where(
            images.c.id == bindparam("failed_id"),
            # IN () cannot be combined with executemany: spell it out
            or_(*(images.c.status == status for status in CLAIMABLE)),
        )
        .values(
            status=ImageStatus.FAILED,
            reason_code=bindparam("failed_code"),
            reason=bindparam("failed_reason"),
            finished_at=now,
            status_changed_at=now,
        ),
        [
            {"failed_id": image_id, "failed_code": f.code, "failed_reason": f.reason}
            for image_id, f in sorted(failures.items())
        ],
    )
