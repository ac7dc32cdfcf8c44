"""What a batch report shows, read with a few aggregate queries.

Labels, probabilities, gradability and the pictured images come from each image's shown
prediction (the study_results view: the promoted version's, else the latest); decisions
and the per-patient table from screening_outcomes, and on a validation night their
agreement with the labels (``db.screening``). The per-version figures count every
prediction made on the batch's images, so a batch classified again by a new version
compares both. Only the thumbnails read a source path, from the images table: the page
shows the picture, never the path.
"""

from __future__ import annotations

from collections import Counter
from collections.abc import Sequence
from dataclasses import dataclass
from datetime import datetime

import sqlalchemy as sa
from sqlalchemy.orm import Session

from db.lifecycle import status_counts
from db.models import Batch, Image, ImageStatus, ModelVersion, Prediction
from db.screening import Validation, decisions, validate
from db.views import SCREENING_OUTCOMES, STUDY_RESULTS
from mdf.analysis.export import as_utc

#: Pictures of referred patients' images the report shows at most (each some 20 kB).
REFERRED_PICTURES = 24


class UnknownBatch(LookupError):
    """No batch has this name."""


@dataclass(frozen=True)
class VersionFigures:
    name: str
    images: int
    mean_probability: float
    agreement: float  # share of predictions whose text names the scored label
    mean_inference_ms: float | None


@dataclass(frozen=True)
class Problem:
    image_id: int
    status: str
    reason_code: str | None
    reason: str | None


@dataclass(frozen=True)
class Pictured:
    """An image shown as a picture, with its mask over it when one was written."""

    image_id: int
    laterality: str | None
    status: str
    reason_code: str | None  # of a rejection or failure
    label: str | None  # None when the image is ungradable or has no prediction
    probability: float | None
    generated_text: str | None
    text_agrees: bool | None
    model_version: str | None
    quality_reason: str | None
    source_path: str
    frame: int
    mask_path: str | None  # one PNG per channel, ";"-separated


@dataclass(frozen=True)
class Gradability:
    assessed: int  # images whose shown prediction has a quality assessment
    gradable: int
    reasons: dict[str, int]  # why the others are not, most frequent first

    @property
    def rate(self) -> float | None:
        return self.gradable / self.assessed if self.assessed else None


@dataclass(frozen=True)
class Patient:
    """A patient's study in this batch, as screening_outcomes decides it."""

    pseudonym: str | None
    study: int
    decision: str
    reason: str
    right_eye: str
    right_probability: float | None
    left_eye: str
    left_probability: float | None
    model_version: str | None


@dataclass(frozen=True)
class BatchFigures:
    batch: str
    created_at: datetime
    files_seen: int
    statuses: dict[str, int]  # every status, zeros included
    labels: dict[str, int]  # shown predicted label -> images
    probabilities: list[float]  # of the shown predicted labels
    problems: list[Problem]  # rejected and failed images
    versions: list[VersionFigures]
    uncertain: list[Pictured]  # lowest probability of the predicted label first
    gradability: Gradability
    decisions: dict[str, int]  # studies per decision
    patients: list[Patient]  # referred first, then pending, then not referred
    referred: list[Pictured]  # images of referred patients, up to REFERRED_PICTURES
    validation: Validation | None  # None without ground truth
    referable_labels: list[str]

    @property
    def images(self) -> int:
        return sum(self.statuses.values())


def batch_figures(
    session: Session,
    batch_name: str,
    *,
    referable_labels: Sequence[str],
    uncertain: int = 12,
) -> BatchFigures:
    batch = session.scalar(sa.select(Batch).where(Batch.name == batch_name))
    if batch is None:
        raise UnknownBatch(f"no batch is named {batch_name!r}")
    view = STUDY_RESULTS.c
    in_batch = view.batch == batch_name
    labels = session.execute(
        sa.select(view.label, sa.func.count())
        .where(in_batch, view.label.is_not(None))
        .group_by(view.label)
        .order_by(view.label)
    ).all()
    probabilities = session.scalars(
        sa.select(view.probability).where(in_batch, view.probability.is_not(None))
    )
    problems = session.execute(
        sa.select(view.image_id, view.status, view.reason_code, view.reason)
        .where(in_batch, view.status.in_([ImageStatus.REJECTED, ImageStatus.FAILED]))
        .order_by(view.image_id)
    )
    return BatchFigures(
        batch=batch.name,
        created_at=as_utc(batch.created_at),
        files_seen=batch.files_seen,
        statuses=status_counts(session, batch.id),
        labels=dict(labels),
        probabilities=list(probabilities),
        problems=[Problem(*row) for row in problems],
        versions=_versions(session, batch.id),
        uncertain=_least_certain(session, batch_name, uncertain),
        gradability=_gradability(session, batch_name),
        decisions=decisions(session, batch_name),
        patients=_patients(session, batch_name),
        referred=_referred(session, batch_name, REFERRED_PICTURES),
        validation=validate(session, batch_name, referable_labels),
        referable_labels=list(referable_labels),
    )


def _versions(session: Session, batch_id: int) -> list[VersionFigures]:
    agrees = sa.case((Prediction.text_agrees, 1.0), else_=0.0)
    rows = session.execute(
        sa.select(
            ModelVersion.name,
            sa.func.count(),
            sa.func.avg(Prediction.probability),
            sa.func.avg(agrees),
            sa.func.avg(Prediction.inference_ms),
        )
        .join(Prediction.model_version)
        .join(Prediction.image)
        .where(Image.batch_id == batch_id)
        .group_by(ModelVersion.name)
        .order_by(ModelVersion.name)
    )
    return [VersionFigures(*row) for row in rows]


def _least_certain(session: Session, batch_name: str, limit: int) -> list[Pictured]:
    view = STUDY_RESULTS.c
    return _pictured(
        session,
        sa.and_(view.batch == batch_name, view.probability.is_not(None)),
        order=(view.probability, view.image_id),
        limit=limit,
    )


def _referred(session: Session, batch_name: str, limit: int) -> list[Pictured]:
    """The images of referred patients, patient by patient, each's eyes together."""
    view, outcomes = STUDY_RESULTS.c, SCREENING_OUTCOMES.c
    referred = sa.select(outcomes.study).where(
        outcomes.batch == batch_name, outcomes.decision == "refer"
    )
    return _pictured(
        session,
        sa.and_(view.batch == batch_name, view.study_id.in_(referred)),
        order=(view.study_id, view.laterality, view.image_id),
        limit=limit,
    )


def _pictured(
    session: Session, where: sa.ColumnElement[bool], *, order: tuple, limit: int
) -> list[Pictured]:
    view = STUDY_RESULTS.c
    rows = session.execute(
        sa.select(
            view.image_id,
            view.laterality,
            view.status,
            view.reason_code,
            view.label,
            view.probability,
            view.generated_text,
            view.text_agrees,
            view.model_version,
            view.quality_reason,
            Image.source_path,
            view.frame,
        )
        .join(Image, Image.id == view.image_id)
        .where(where)
        .order_by(*order)
        .limit(limit)
    ).all()
    masks = {
        (image_id, version): path
        for image_id, version, path in session.execute(
            sa.select(Prediction.image_id, ModelVersion.name, Prediction.mask_path)
            .join(Prediction.model_version)
            .where(Prediction.image_id.in_([row.image_id for row in rows]))
        ).all()
    }
    return [Pictured(*row, mask_path=masks.get((row.image_id, row.model_version))) for row in rows]


def _gradability(session: Session, batch_name: str) -> Gradability:
    view = STUDY_RESULTS.c
    rows = session.execute(
        sa.select(view.gradable, view.quality_reason).where(
            view.batch == batch_name, view.gradable.is_not(None)
        )
    ).all()
    reasons = Counter(
        reason
        for gradable, text in rows
        if not gradable
        for reason in (text or "").split(",")
        if reason
    )
    return Gradability(
        assessed=len(rows),
        gradable=sum(bool(gradable) for gradable, _ in rows),
        reasons=dict(reasons.most_common()),
    )


def _patients(session: Session, batch_name: str) -> list[Patient]:
    outcomes = SCREENING_OUTCOMES.c
    first = sa.case({"refer": 0, "pending": 1}, value=outcomes.decision, else_=2)
    rows = session.execute(
        sa.select(
            outcomes.patient_pseudonym,
            outcomes.study,
            outcomes.decision,
            outcomes.reason,
            outcomes.right_eye,
            outcomes.right_referral_probability,
            outcomes.left_eye,
            outcomes.left_referral_probability,
            outcomes.model_version,
        )
        .where(outcomes.batch == batch_name)
        .order_by(first, outcomes.study)
    )
    return [Patient(*row) for row in rows]
