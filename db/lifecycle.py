"""The life of an image: the contract between scheduler and worker, in one place.

Every status change goes through this module as an UPDATE that only touches rows
whose current status allows it (``TRANSITIONS``): an image finished meanwhile stays
as it is, however many deliveries of its chunk are under way.

- Intake inserts images ``registered`` or ``rejected`` (``registered``, ``rejected``).
- The scheduler marks them ``queued`` when it sends them (``queue_registered``), and
  queues again those that stopped moving (``requeue_stalled``).
- A worker claims ``queued`` images, and ``processing`` ones whose claim lapsed
  (``claim``): a chunk can be delivered more than once (a worker killed mid-chunk,
  the scheduler re-sending stalled work, a broker restart), so what is still to do is
  decided here, never from the message. A claim is a token and a lease: the worker
  renews the lease while it works (``renew``); once it lapses the scheduler re-sends
  the image (``requeue_expired``) and another claim may take it over.
- The worker counts an attempt against the images it is about to work on
  (``start``): all of a fresh chunk, which shares one forward pass, but one image at
  a time for a chunk started before, so a crash is charged to the image in flight.
- The worker marks them ``done`` with their prediction (``mark_done``) or ``failed``
  with a reason (``mark_failed``), only while its token still holds them: a worker
  whose claim was taken over cannot write.
- An image started ``max_attempts`` times without finishing is most likely what kills
  its workers: claim and requeue give up on it (``give_up``), so the batch goes on.

Why an image was rejected or failed is a ``ReasonCode``, stored as its string value,
with a reason for people whose quoted passages are withheld: a library's message can
quote a header value, and a header value can be a patient's name.
"""

from __future__ import annotations

import uuid
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass
from datetime import datetime, timedelta
from types import MappingProxyType
from typing import Any

from sqlalchemy import ColumnElement, Update, bindparam, func, or_, select, update
from sqlalchemy.orm import Session

from db.models import Image, ImageStatus, utcnow
from db.reason_codes import ReasonCode
from mdf.logs import withhold_quoted

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
    "renew",
    "requeue_expired",
    "requeue_stalled",
    "start",
    "status_counts",
]


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
    sha256: str
    source_path: str
    frame: int
    clinical_text: str | None
    attempts: int


@dataclass(frozen=True)
class Claim:
    token: str  # what the worker shows to renew, start and finish its images
    images: list[ClaimedImage]
    exhausted: list[int]  # given up: started max_attempts times already
    # done, failed, rejected, registered, unknown, or held by another live claim
    skipped: list[int]


def _entering(target: ImageStatus, now: datetime) -> dict[str, Any]:
    """The status, its stamps, and no lease: only a claim (``processing``) holds one."""
    return {
        "status": target,
        "status_changed_at": now,
        _STAMPS[target]: now,
        "lease_expires_at": None,
    }


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
    return values | {"registered_at": now, "reason_code": code, "reason": withhold_quoted(reason)}


def mark_queued(session: Session, image_ids: Sequence[int]) -> None:
    """Mark images queued: the scheduler is about to send them. A lapsed claim is void."""
    for start in range(0, len(image_ids), 1000):
        chunk = Image.id.in_(image_ids[start : start + 1000])
        session.execute(_change(ImageStatus.QUEUED, chunk, claim_token=None))


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


def give_up(
    session: Session, image_ids: Iterable[int], max_attempts: int, *where: ColumnElement[bool]
) -> list[int]:
    """Fail the images started ``max_attempts`` times already; returns their ids."""
    ids = sorted(set(image_ids))
    if not ids:
        return []
    statement = _change(
        ImageStatus.FAILED,
        Image.id.in_(ids),
        Image.attempts >= max_attempts,
        *where,
        reason_code=ReasonCode.TOO_MANY_ATTEMPTS,
        reason=f"no worker finished it in {max_attempts} attempts",
    )
    return sorted(session.scalars(statement.returning(Image.id)))


def _lapsed(now: datetime) -> ColumnElement[bool]:
    """A ``processing`` image whose claim's lease ran out: its worker stopped renewing."""
    return (Image.status == ImageStatus.PROCESSING) & (Image.lease_expires_at <= now)


def _unheld(now: datetime, token: str) -> ColumnElement[bool]:
    """No live claim but ``token``'s holds the image (a row claimed before leases: none)."""
    return or_(
        Image.status != ImageStatus.PROCESSING,
        Image.lease_expires_at.is_(None),
        Image.lease_expires_at <= now,
        Image.claim_token == token,
    )


def _requeue(
    session: Session, where: ColumnElement[bool], max_attempts: int
) -> tuple[list[int], list[int]]:
    rows = session.execute(
        select(Image.id, Image.attempts)
        .where(where)
        .order_by(Image.id)
        .with_for_update(skip_locked=True)
    ).all()
    failed = give_up(session, (i for i, attempts in rows if attempts >= max_attempts), max_attempts)
    given_up = set(failed)
    retry = [image_id for image_id, _ in rows if image_id not in given_up]
    mark_queued(session, retry)
    return retry, failed


def requeue_stalled(
    session: Session, *, older_than_s: float, max_attempts: int
) -> tuple[list[int], list[int]]:
    """Queue again the images whose claim lapsed, and those ``queued`` too long.

    A ``processing`` image under a live claim is left to its worker however long it
    takes; one claimed before leases existed counts as stalled after ``older_than_s``.
    Images never queued (``registered``) are queued too; those started ``max_attempts``
    times are given up instead. Returns (queued, failed) image ids, for sending.
    """
    now = utcnow()
    stalled = (
        Image.status.in_(CLAIMABLE)
        & Image.lease_expires_at.is_(None)
        & (Image.status_changed_at <= now - timedelta(seconds=older_than_s))
    )
    return _requeue(
        session, stalled | _lapsed(now) | (Image.status == ImageStatus.REGISTERED), max_attempts
    )


def requeue_expired(session: Session, *, max_attempts: int) -> tuple[list[int], list[int]]:
    """Queue again only the images whose claim lapsed: cheap enough to run every minute."""
    return _requeue(session, _lapsed(utcnow()), max_attempts)


def claim(
    session: Session,
    image_ids: Iterable[int],
    *,
    max_attempts: int,
    lease_s: float,
    token: str | None = None,
) -> Claim:
    """Mark a chunk's claimable images ``processing`` under a new claim; count no attempt.

    ``token`` names the claim (a task's id: its own retry takes its images back at
    once); images another live claim holds are skipped, as are finished, registered and
    unknown ones. Unheld images started ``max_attempts`` times already are given up.
    """
    token = token or uuid.uuid4().hex
    now = utcnow()
    ids = sorted(set(image_ids))
    exhausted = give_up(session, ids, max_attempts, _unheld(now, token))
    rows = session.execute(
        _change(
            ImageStatus.PROCESSING,
            Image.id.in_(ids),
            _unheld(now, token),
            claim_token=token,
        )
        .values(lease_expires_at=now + timedelta(seconds=lease_s))
        .returning(
            Image.id,
            Image.batch_id,
            Image.sha256,
            Image.source_path,
            Image.frame,
            Image.clinical_text,
            Image.attempts,
        )
    ).all()
    images = sorted((ClaimedImage(*row) for row in rows), key=lambda image: image.id)
    taken = {image.id for image in images} | set(exhausted)
    return Claim(token, images, exhausted, [i for i in ids if i not in taken])


def _held(image_ids: Iterable[int], token: str) -> Update:
    """UPDATE the images of ``image_ids`` that ``token``'s claim still holds."""
    return (
        update(Image)
        .where(
            Image.id.in_(sorted(set(image_ids))),
            Image.claim_token == token,
            Image.status == ImageStatus.PROCESSING,
        )
        .execution_options(synchronize_session=False)
    )


def start(session: Session, image_ids: Iterable[int], token: str) -> list[int]:
    """Count an attempt against the images about to be worked on; returns those still held."""
    statement = _held(image_ids, token).values(attempts=Image.attempts + 1)
    return sorted(session.scalars(statement.returning(Image.id)))


def renew(session: Session, image_ids: Iterable[int], token: str, lease_s: float) -> list[int]:
    """Extend the lease on the images ``token`` still holds; returns their ids."""
    statement = _held(image_ids, token).values(
        lease_expires_at=utcnow() + timedelta(seconds=lease_s)
    )
    return sorted(session.scalars(statement.returning(Image.id)))


def mark_done(session: Session, image_ids: Iterable[int], token: str) -> list[int]:
    """Mark done the images ``token``'s claim still holds; returns their ids.

    The caller writes their predictions, and only theirs, in the same transaction. A
    reason left by a failure goes (a late result of the claim that was given up on).
    """
    ids = sorted(set(image_ids))  # one lock order for every writer
    statement = _change(
        ImageStatus.DONE,
        Image.id.in_(ids),
        Image.claim_token == token,
        reason_code=None,
        reason=None,
    )
    return sorted(session.scalars(statement.returning(Image.id)))


def mark_failed(session: Session, failures: Mapping[int, Failure], token: str) -> None:
    """Fail images with their own reasons, if ``token``'s claim still holds them; an image
    finished meanwhile stays as it is."""
    if not failures:
        return
    images = Image.__table__
    session.execute(
        update(images)
        .where(
            images.c.id == bindparam("failed_id"),
            images.c.claim_token == bindparam("failed_token"),
            # IN () cannot be combined with executemany: spell it out
            or_(*(images.c.status == status for status in allowed_from(ImageStatus.FAILED))),
        )
        .values(
            **_entering(ImageStatus.FAILED, utcnow()),
            reason_code=bindparam("failed_code"),
            reason=bindparam("failed_reason"),
        ),
        [
            {
                "failed_id": image_id,
                "failed_token": token,
                "failed_code": f.code,
                "failed_reason": withhold_quoted(f.reason),
            }
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
