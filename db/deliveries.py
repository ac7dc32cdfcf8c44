"""Result deliveries in the database: finished studies, and each object's row per destination.

A study is finished when none of its images is pending any more; it has something to
deliver when one of them came as DICOM. The worker asks after writing a chunk, so the
study's last chunk to finish sends it to the deliver queue (each chunk asks after its own
commit: the last one sees every other done). A study that message never reached (its last
image given up on by requeue, or finished while the broker was away) has no row for a
destination: the scheduler's sweep finds it (``undelivered_studies``). Every object a
delivery plans gets a row per destination (``record``); a sender holds the rows it is about
to send with a lease (``claim``, one ``UPDATE ... RETURNING``), so two senders of one study
never send the same object at once, and writes the outcome of each attempt
(``record_attempts``).
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass
from datetime import timedelta
from urllib.parse import urlsplit, urlunsplit

from sqlalchemy import ColumnElement, Select, bindparam, exists, or_, select, update
from sqlalchemy.orm import Session, aliased

from db.lifecycle import PENDING
from db.models import Batch, Delivery, DeliveryStatus, Image, Prediction, utcnow
from db.upsert import insert_new

__all__ = [
    "DICOM",
    "PlannedObject",
    "claim",
    "destination_name",
    "finished_dicom_studies",
    "is_finished",
    "record",
    "record_attempts",
    "undelivered_studies",
]

#: ``images.file_kind`` of a file that came as DICOM: only those get DICOM results.
DICOM = "dicom"


@dataclass(frozen=True)
class PlannedObject:
    """A result object a delivery sends: its kind, UID and what it answers."""

    kind: str  # sr | seg
    sop_instance_uid: str
    study_id: int
    model_version_id: int
    image_id: int | None  # the segmented image; None for a study's SR


def destination_name(text: str) -> str:
    """A destination (``dicomweb:URL`` or ``dicom:AET@HOST:PORT``, a form the settings have
    checked) as its rows name it: without any user or password a URL may carry."""
    scheme, _, where = text.partition(":")
    if scheme != "dicomweb":
        return text
    parts = urlsplit(where)
    netloc = parts.hostname or ""
    if parts.port:
        netloc += f":{parts.port}"
    return f"dicomweb:{urlunsplit(parts._replace(netloc=netloc))}"


def _has_dicom(study_id: ColumnElement[int]) -> ColumnElement[bool]:
    image = aliased(Image)
    return exists().where(
        image.study_id == study_id, image.file_kind == DICOM, image.sop_uid.is_not(None)
    )


def _has_pending(study_id: ColumnElement[int]) -> ColumnElement[bool]:
    image = aliased(Image)
    return exists().where(image.study_id == study_id, image.status.in_(PENDING))


def _finished(studies: Select[tuple[int | None]]) -> Select[tuple[int]]:
    study_id = Image.study_id
    return (
        select(study_id)
        .where(study_id.in_(studies), _has_dicom(study_id), ~_has_pending(study_id))
        .distinct()
        .order_by(study_id)
    )


def finished_dicom_studies(
    session: Session, *, image_ids: Iterable[int] | None = None, batch: str | None = None
) -> list[int]:
    """Studies with a DICOM image and none pending: of ``image_ids``, of ``batch``, or all."""
    studies = select(Image.study_id).where(Image.study_id.is_not(None))
    if image_ids is not None:
        studies = studies.where(Image.id.in_(list(image_ids)))
    if batch is not None:
        studies = studies.join(Batch, Batch.id == Image.batch_id).where(Batch.name == batch)
    return list(session.scalars(_finished(studies)))


def _answered(study_id: ColumnElement[int]) -> ColumnElement[bool]:
    """A DICOM image of the study has a prediction: the study has objects to deliver."""
    image = aliased(Image)
    return exists().where(
        image.study_id == study_id,
        image.file_kind == DICOM,
        image.sop_uid.is_not(None),
        image.study_uid.is_not(None),
        Prediction.image_id == image.id,
    )


def undelivered_studies(session: Session, destinations: Sequence[str], *, limit: int) -> list[int]:
    """Finished DICOM studies with an answered image and no row yet for one of
    ``destinations`` (their names), at most ``limit``, lowest id first."""
    if not destinations:
        return []
    study_id = Image.study_id
    missing = [
        ~exists().where(Delivery.study_id == study_id, Delivery.destination == name)
        for name in destinations
    ]
    studies = select(study_id).where(study_id.is_not(None))
    query = _finished(studies).where(_answered(study_id), or_(*missing)).limit(limit)
    return list(session.scalars(query))


def is_finished(session: Session, study_id: int) -> bool:
    """Whether the study has a DICOM image and none of its images is pending."""
    return bool(
        session.scalar(
            select(~_has_pending(Image.study_id))
            .where(Image.study_id == study_id, _has_dicom(Image.study_id))
            .limit(1)
        )
    )


def record(session: Session, objects: Sequence[PlannedObject], destination: str) -> None:
    """A ``pending`` row per object for ``destination``, unless it has one."""
    if objects:
        session.execute(
            insert_new(session, Delivery, ["sop_instance_uid", "destination"]),
            [
                {
                    "study_id": item.study_id,
                    "model_version_id": item.model_version_id,
                    "image_id": item.image_id,
                    "kind": item.kind,
                    "sop_instance_uid": item.sop_instance_uid,
                    "destination": destination,
                    "status": DeliveryStatus.PENDING,
                    "attempts": 0,
                    "created_at": utcnow(),
                }
                for item in objects
            ],
        )


def claim(
    session: Session, uids: Sequence[str], destination: str, *, lease_s: float, again: bool
) -> list[str]:
    """Hold the objects among ``uids`` still to send to ``destination`` (``again``: those
    sent too) for ``lease_s`` seconds; returns those this call holds, none another sender
    holds."""
    now = utcnow()
    wanted = [Delivery.destination == destination, Delivery.sop_instance_uid.in_(uids)]
    if not again:
        wanted.append(Delivery.status != DeliveryStatus.SENT)
    free = or_(Delivery.lease_expires_at.is_(None), Delivery.lease_expires_at < now)
    held = session.scalars(
        update(Delivery)
        .where(*wanted, free)
        .values(lease_expires_at=now + timedelta(seconds=lease_s))
        .returning(Delivery.sop_instance_uid)
    )
    return list(held)


def record_attempts(session: Session, destination: str, outcomes: Mapping[str, str | None]) -> None:
    """Count an attempt for each object: ``None`` sent, otherwise failed with that reason;
    the lease is let go either way."""
    now = utcnow()
    sent = [uid for uid, reason in outcomes.items() if reason is None]
    failed = [{"uid": uid, "why": reason} for uid, reason in outcomes.items() if reason]
    attempt = {"attempts": Delivery.attempts + 1, "attempted_at": now, "lease_expires_at": None}
    one = (Delivery.destination == destination, Delivery.sop_instance_uid == bindparam("uid"))
    if sent:
        session.execute(
            update(Delivery)
            .where(Delivery.destination == destination, Delivery.sop_instance_uid.in_(sent))
            .values(status=DeliveryStatus.SENT, sent_at=now, **attempt)
        )
    if failed:
        session.connection().execute(
            update(Delivery)
            .where(*one)
            .values(status=DeliveryStatus.FAILED, reason=bindparam("why"), **attempt),
            failed,
        )
