"""What a batch report shows, read with a few aggregate queries.

Labels, probabilities and the least certain images come from each image's shown
prediction (the study_results view: the promoted version's, else the latest); the
per-version figures count every prediction made on the batch's images, so a batch
classified again by a new version compares both. Only the thumbnails read a source
path, from the images table: the page shows the picture, never the path.
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import datetime

import sqlalchemy as sa
from sqlalchemy.orm import Session

from db.lifecycle import status_counts
from db.models import Batch, Image, ImageStatus, ModelVersion, Prediction
from mdf.analysis.export import STUDY_RESULTS, as_utc


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
class Uncertain:
    image_id: int
    laterality: str | None
    label: str
    probability: float
    generated_text: str | None
    text_agrees: bool
    model_version: str
    source_path: str
    frame: int
    mask_path: str | None


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
    uncertain: list[Uncertain]  # lowest probability of the predicted label first

    @property
    def images(self) -> int:
        return sum(self.statuses.values())


def batch_figures(session: Session, batch_name: str, *, uncertain: int = 12) -> BatchFigures:
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


def _least_certain(session: Session, batch_name: str, limit: int) -> list[Uncertain]:
    view = STUDY_RESULTS.c
    rows = session.execute(
        sa.select(
            view.image_id,
            view.laterality,
            view.label,
            view.probability,
            view.generated_text,
            view.text_agrees,
            view.model_version,
            Image.source_path,
            view.frame,
        )
        .join(Image, Image.id == view.image_id)
        .where(view.batch == batch_name, view.probability.is_not(None))
        .order_by(view.probability, view.image_id)
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
    return [Uncertain(*row, mask_path=masks.get((row.image_id, row.model_version))) for row in rows]
