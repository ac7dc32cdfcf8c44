"""The life of an image: the contract between scheduler and worker, in one place.

Every status change goes through this module as an UPDATE that only touches rows
whose current status allows it (``TRANSITIONS``): an image finished meanwhile stays
as it is, however many deliveries of its chunk are under way.

- Intake inserts images ``registered`` or ``rejected`` (``registered``, ``rejected``).
- The scheduler marks them ``queued`` when it sends them (``queue_registered``), and
  queues again those that stopped moving (``requeue_stalled``).
- A worker claims ``queued`` or ``processing`` images (``claim``): a chunk can be
  delivered more than once (a worker killed mid-chunk, the scheduler re-sending
  stalled work, a broker restart), so what is still to do is decided here, never
  from the message. Each claim counts an attempt.
- The worker marks them ``done`` with their prediction (``mark_done``) or ``failed``
  with a reason (``mark_failed``).
- An image started ``max_attempts`` times without finishing is most likely what kills
  its workers: claim and requeue give up on it (``give_up``), so the batch goes on.

Why an image was rejected or failed is a ``ReasonCode``, stored as its string value.
"""

from __future__ import annotations

import enum
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass
from datetime import datetime, timedelta
from types import MappingProxyType
from typing import Any

from sqlalchemy import Update, bindparam, func, or_, select, update
from sqlalchemy.orm import Session

from db.models import Image, ImageStatus, utcnow

__all__ = [
    "CLAIMABLE",
    "FINISHED",
    "PENDING",
    "TRANSITIONS",
    "Claim",
    "ClaimedImage",
    "Failure",
    "ImageStatus",
    "ReasonCode",
    "allowed_from",
    "claim",
    "give_up",
    "mark_done",
    "mark_failed",
    "mark_queued",
    "may_change",
    "queue_registered",
    "registered",
    "rejected",
    "requeue_stalled",
    "status_counts",
]


class ReasonCode(enum.StrEnum):
    """Why an image was rejected or failed: stable values for machines and statistics."""

    # A file refused for its content (mdf.imaging's Rejection), at intake or by a worker
    # decoding it again.
    EMPTY_FILE = "empty_file"
    NOT_AN_IMAGE = "not_an_image"
    UNSUPPORTED_FORMAT = "unsupported_format"
    TRUNCATED = "truncated"
    NO_PIXEL_DATA = "no_pixel_data"
    UNSUPPORTED_MODALITY = "unsupported_modality"
    UNSUPPORTED_SOP_CLASS = "unsupported_sop_class"
    GRAYSCALE = "grayscale"
    UNSUPPORTED_TRANSFER_SYNTAX = "unsupported_transfer_syntax"
    TOO_LARGE = "too_large"
    TOO_SMALL = "too_small"
    DECODE_ERROR = "decode_error"
    # A file intake or a worker cannot read at all.
    UNREADABLE = "unreadable"
    # A manifest row that names no usable file.
    BAD_MANIFEST = "bad_manifest"
    OUTSIDE_INBOX = "outside_inbox"
    MISSING_FILE = "missing_file"
    # A worker's failures: the model refuses the picture, or preparing it, the forward
    # pass or the whole chunk raised.
    UNUSABLE_IMAGE = "unusable_image"
    PREPROCESS_ERROR = "preprocess_error"
    INFERENCE_ERROR = "inference_error"
    WORKER_ERROR = "worker_error"
    # Started max_attempts times and never finished (give_up).
    TOO_MANY_ATTEMPTS = "too_many_attempts"
    # A delivery entry that is not a regular file inside the inbox, or too big to read.
    SPECIAL_FILE = "special_file"
    OUTSIDE_INBOX_LINK = "outside_inbox_link"
    FILE_TOO_LARGE = "file_too_large"
    # A manifest that cannot be decoded or parsed, and single rows that cannot be applied.
    UNREADABLE_MANIFEST = "unreadable_manifest"
    FIELD_TOO_LONG = "field_too_long"
    UNKNOWN_LATERALITY = "unknown_laterality"
    METADATA_CONFLICT = "metadata_conflict"
    # A DICOM whose compressed frames contradict its header, or with too many frames.
    CODESTREAM_MISMATCH = "codestream_mismatch"
    TOO_MANY_FRAMES = "too_many_frames"
    # The bytes a worker reads are not the ones intake registered.
    CONTENT_CHANGED = "content_changed"


#: The allowed changes: each status, and those an image in it may change to (``None``:
#: an image not stored yet). The functions below change only rows this table allows.
TRANSITIONS: Mapping[ImageStatus | None, frozenset[ImageStatus]] = MappingProxyType(
    {
        # intake
        None: frozenset({ImageStatus.REGISTERED, ImageStatus.REJECTED}),
        # the scheduler sends it
        ImageStatus.REGISTERED: frozenset({ImageStatus.QUEUED}),
        # sent or started: the scheduler sends it again (requeue); a worker (re)claims it,
        # finishes it or fails it; claim and requeue give up on it
        ImageStatus.QUEUED: frozenset(
            {ImageStatus.QUEUED, ImageStatus.PROCESSING, ImageStatus.DONE, ImageStatus.FAILED}
        ),
        ImageStatus.PROCESSING: frozenset(
            {ImageStatus.QUEUED, ImageStatus.PROCESSING, ImageStatus.DONE, ImageStatus.FAILED}
        ),
        ImageStatus.DONE: frozenset(),
        ImageStatus.REJECTED: frozenset(),
        # given up on, or failed by one delivery, it may still be finished by another:
        # its prediction is written, so the image is done
        ImageStatus.FAILED: frozenset({ImageStatus.DONE}),
    }
)

#: The column each status stamps with the time an image entered it.
_STAMPS = {
    ImageStatus.REGISTERED: "registered_at",
    ImageStatus.QUEUED: "queued_at",
    ImageStatus.PROCESSING: "started_at",
    ImageStatus.DONE: "finished_at",
    ImageStatus.REJECTED: "finished_at",
    ImageStatus.FAILED: "finished_at",
}


def may_change(current: ImageStatus | None, target: ImageStatus) -> bool:
    """Whether an image in ``current`` (None: not stored yet) may change to ``target``."""
    return target in TRANSITIONS[current]


def allowed_from(target: ImageStatus) -> tuple[ImageStatus, ...]:
    """The statuses an image may change to ``target`` from."""
    return tuple(status for status in ImageStatus if may_change(status, target))


#: Not finished yet: a batch with any of these is still running.
PENDING = (ImageStatus.REGISTERED, ImageStatus.QUEUED, ImageStatus.PROCESSING)
#: Finished: a prediction, a rejection or a failure, each with its reason.
FINISHED = (ImageStatus.DONE, ImageStatus.REJECTED, ImageStatus.FAILED)
#: What a (re)delivered chunk may still work on: sent, or started and not finished.
CLAIMABLE = allowed_from(ImageStatus.PROCESSING)


@dataclass(frozen=True)
class Failure:
    """Why one image failed: a stable code for counting and a reason for people."""

    code: ReasonCode
    reason: str


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
class Claim:
    images: list[ClaimedImage]
    exhausted: list[int]  # given up: started max_attempts times already
    skipped: list[int]  # done, failed, rejected, registered or unknown: nothing to do


def _entering(target: ImageStatus, now: datetime) -> dict[str, Any]:
    return {"status": target, "status_changed_at": now, _STAMPS[target]: now}


def _change(target: ImageStatus, *where: Any, **values: Any) -> Update:
    """UPDATE the images matching ``where`` whose status may change to ``target``."""
    return (
        update(Image)
        .where(*where, Image.status.in_(allowed_from(target)))
        .values(**_entering(target, utcnow()), **values)
        .execution_options(synchronize_session=False)
    )


def registered() -> dict[str, Any]:
    """Column values of a new image intake accepted."""
    return _entering(ImageStatus.REGISTERED, utcnow())


def rejected(code: ReasonCode, reason: str) -> dict[str, Any]:
    """Column values of a new image intake refused, with its reason."""
    now = utcnow()
    values = _entering(ImageStatus.REJECTED, now)
    return values | {"registered_at": now, "reason_code": code, "reason": reason}


def mark_queued(session: Session, image_ids: Sequence[int]) -> None:
    """Mark images queued: the scheduler is about to send them."""
    for start in range(0, len(image_ids), 1000):
        session.execute(_change(ImageStatus.QUEUED, Image.id.in_(image_ids[start : start + 1000])))


def queue_registered(session: Session, batch_id: int | None = None) -> list[int]:
    """Mark queued every registered image (of one batch, or all); returns their ids in order.

    Rows another transaction holds are skipped: two schedulers never send one image twice.
    """
    query = select(Image.id).where(Image.status == ImageStatus.REGISTERED).order_by(Image.id)
    if batch_id is not None:
        query = query.where(Image.batch_id == batch_id)
    image_ids = list(session.scalars(query.with_for_update(skip_locked=True)))
    mark_queued(session, image_ids)
    return image_ids


def give_up(session: Session, image_ids: Iterable[int], max_attempts: int) -> list[int]:
    """Fail the images started ``max_attempts`` times already; returns their ids."""
    ids = sorted(set(image_ids))
    if not ids:
        return []
    statement = _change(
        ImageStatus.FAILED,
        Image.id.in_(ids),
        Image.attempts >= max_attempts,
        reason_code=ReasonCode.TOO_MANY_ATTEMPTS,
        reason=f"no worker finished it in {max_attempts} attempts",
    )
    return sorted(session.scalars(statement.returning(Image.id)))


def requeue_stalled(
    session: Session, *, older_than_s: float, max_attempts: int
) -> tuple[list[int], list[int]]:
    """Queue again the images that sat in ``queued`` or ``processing`` too long.

    Images never queued (``registered``) are queued too; those started ``max_attempts``
    times are given up instead. Returns (queued, failed) image ids, for sending.
    """
    cutoff = utcnow() - timedelta(seconds=older_than_s)
    stalled = Image.status.in_(CLAIMABLE) & (Image.status_changed_at <= cutoff)
    rows = session.execute(
        select(Image.id, Image.attempts)
        .where(stalled | (Image.status == ImageStatus.REGISTERED))
        .order_by(Image.id)
        .with_for_update(skip_locked=True)
    ).all()
    failed = give_up(session, (i for i, attempts in rows if attempts >= max_attempts), max_attempts)
    given_up = set(failed)
    retry = [image_id for image_id, _ in rows if image_id not in given_up]
    mark_queued(session, retry)
    return retry, failed


def claim(session: Session, image_ids: Iterable[int], *, max_attempts: int) -> Claim:
    """Mark a chunk's claimable images ``processing`` and count the attempt.

    Images started ``max_attempts`` times already are given up instead; the others
    (finished, registered, unknown) are skipped.
    """
    ids = sorted(set(image_ids))
    exhausted = give_up(session, ids, max_attempts)
    rows = session.execute(
        _change(ImageStatus.PROCESSING, Image.id.in_(ids), attempts=Image.attempts + 1).returning(
            Image.id,
            Image.batch_id,
            Image.source_path,
            Image.frame,
            Image.clinical_text,
            Image.attempts,
        )
    ).all()
    images = sorted((ClaimedImage(*row) for row in rows), key=lambda image: image.id)
    taken = {image.id for image in images} | set(exhausted)
    return Claim(images, exhausted, [i for i in ids if i not in taken])


def mark_done(session: Session, image_ids: Iterable[int]) -> None:
    """Mark images done: their prediction is written. A reason left by a failure goes."""
    ids = sorted(set(image_ids))  # one lock order for every writer
    session.execute(_change(ImageStatus.DONE, Image.id.in_(ids), reason_code=None, reason=None))


def mark_failed(session: Session, failures: Mapping[int, Failure]) -> None:
    """Fail images with their own reasons; an image finished meanwhile stays as it is."""
    if not failures:
        return
    images = Image.__table__
    session.execute(
        update(images)
        .where(
            images.c.id == bindparam("failed_id"),
            # IN () cannot be combined with executemany: spell it out
            or_(*(images.c.status == status for status in allowed_from(ImageStatus.FAILED))),
        )
        .values(
            **_entering(ImageStatus.FAILED, utcnow()),
            reason_code=bindparam("failed_code"),
            reason=bindparam("failed_reason"),
        ),
        [
            {"failed_id": image_id, "failed_code": f.code, "failed_reason": f.reason}
            for image_id, f in sorted(failures.items())
        ],
    )


def status_counts(session: Session, batch_id: int) -> dict[str, int]:
    """A batch's images per status value, every status present (zeros included)."""
    rows = session.execute(
        select(Image.status, func.count(Image.id))
        .where(Image.batch_id == batch_id)
        .group_by(Image.status)
    )
    counts = dict.fromkeys((status.value for status in ImageStatus), 0)
    counts.update((ImageStatus(status).value, count) for status, count in rows)
    return counts
