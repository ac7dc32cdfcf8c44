"""What a study's result objects say: each DICOM image's prediction as analysts see it.

An image's prediction is the one the ``study_results`` view shows (the promoted version's,
else the newest), with its label, probability and text withheld when the image is
ungradable: those are not results. Images that came as JPEG or PNG are never answered in
DICOM, and an image without a prediction (rejected, failed) is not in the objects.
A study's images are grouped per DICOM study and model version: each group is answered by
its own SR and SEGs, whose UIDs derive from both. Each group also carries the study's
screening decision as the ``screening_outcomes`` view makes it (refer or not, and why).
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from datetime import datetime
from itertools import groupby
from pathlib import Path
from typing import Any

import sqlalchemy as sa
from sqlalchemy.orm import Session

from db.deliveries import DICOM
from db.models import Image, ModelVersion, Prediction
from db.stored_path import from_stored
from db.views import SCREENING_OUTCOMES, STUDY_RESULTS

__all__ = ["Decision", "ImageResult", "ModelRef", "StudyResults", "study_decision", "study_results"]


@dataclass(frozen=True)
class ModelRef:
    """The model version that answered: named in the objects, its hash in their UIDs."""

    id: int
    name: str
    preset: str | None
    manifest_sha256: str


@dataclass(frozen=True)
class ImageResult:
    image_id: int
    source: Path  # the registered file
    sha256: str
    sop_uid: str
    frame: int
    laterality: str | None
    gradable: bool | None
    quality_score: float | None
    quality_reasons: tuple[str, ...]
    label: str | None  # None when ungradable, or refused by the model
    probabilities: Mapping[str, float]  # empty when the label is
    generated_text: str | None
    referable: bool | None
    referral_probability: float | None
    masks: tuple[Path, ...]  # one PNG per channel, ``<image id>.<channel>.png``
    predicted_at: datetime


@dataclass(frozen=True)
class Decision:
    """The study's screening decision as ``screening_outcomes`` makes it, and its reason."""

    decision: str  # refer | no_refer
    reason: str


@dataclass(frozen=True)
class StudyResults:
    """One DICOM study's images answered by one model version."""

    study_id: int
    study_uid: str
    model: ModelRef
    images: tuple[ImageResult, ...]
    decision: Decision | None = None  # None while pending, or when decided per night


def study_decision(session: Session, study_id: int) -> Decision | None:
    """The study's decision, when one night took in all of it and it is no longer pending.

    The view decides a study delivered over two nights per night, on that night's images:
    neither decision is the whole study's, so its SR carries none.
    """
    view = SCREENING_OUTCOMES.c
    rows = session.execute(
        sa.select(view.decision, view.reason).where(view.study == study_id)
    ).all()
    if len(rows) != 1 or rows[0].decision == "pending":
        return None
    return Decision(rows[0].decision, rows[0].reason)


def _image(row: Any) -> ImageResult:
    answered = row.label is not None
    return ImageResult(
        image_id=row.image_id,
        source=from_stored(row.source_path),
        sha256=row.sha256,
        sop_uid=row.sop_uid,
        frame=row.frame,
        laterality=row.laterality,
        gradable=row.gradable,
        quality_score=row.quality_score,
        quality_reasons=tuple(filter(None, (row.quality_reason or "").split(","))),
        label=row.label,
        probabilities=dict(row.probabilities or {}) if answered else {},
        generated_text=row.generated_text if answered else None,
        referable=row.referable,
        referral_probability=row.referral_probability,
        masks=tuple(Path(path) for path in (row.mask_path or "").split(";") if path),
        predicted_at=row.created_at,
    )


def study_results(session: Session, study_id: int) -> list[StudyResults]:
    """The study's DICOM images with a prediction, per DICOM study and model version."""
    view = STUDY_RESULTS.c
    rows = session.execute(
        sa.select(
            Image.id.label("image_id"),
            Image.source_path,
            Image.sha256,
            Image.study_uid,
            Image.sop_uid,
            Image.frame,
            Image.laterality,
            view.gradable,
            view.quality_score,
            view.quality_reason,
            view.label,
            view.generated_text,
            view.referable,
            view.referral_probability,
            Prediction.probabilities,
            Prediction.mask_path,
            Prediction.created_at,
            ModelVersion.id.label("version_id"),
            ModelVersion.name.label("version_name"),
            ModelVersion.preset,
            ModelVersion.manifest_sha256,
        )
        .join(STUDY_RESULTS, view.image_id == Image.id)
        .join(ModelVersion, ModelVersion.name == view.model_version)
        .join(
            Prediction,
            (Prediction.image_id == Image.id) & (Prediction.model_version_id == ModelVersion.id),
        )
        .where(
            Image.study_id == study_id,
            Image.file_kind == DICOM,
            Image.sop_uid.is_not(None),
            Image.study_uid.is_not(None),
        )
        .order_by(Image.study_uid, ModelVersion.id, Image.id)
    ).all()
    decision = study_decision(session, study_id) if rows else None
    return [
        StudyResults(
            study_id=study_id,
            study_uid=study_uid,
            model=ModelRef(version_id, name, preset, sha),
            images=tuple(_image(row) for row in group),
            decision=decision,
        )
        for (study_uid, version_id, name, preset, sha), group in groupby(
            rows,
            key=lambda r: (
                r.study_uid,
                r.version_id,
                r.version_name,
                r.preset,
                r.manifest_sha256,
            ),
        )
    ]
