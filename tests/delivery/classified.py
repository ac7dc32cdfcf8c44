"""A study classified without the model: DICOM instances taken in by intake, then the rows
and mask files a worker writes (the end-to-end tests run the real worker instead)."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import sqlalchemy as sa

from db.model_versions import register_version
from db.models import Image, ImageStatus, Prediction, utcnow
from db.session import session_factory
from mdf.settings import Settings
from scheduler.intake import ingest
from tests.dicom_peers import write_instances
from worker.masks import ImageMask, save_masks

PATIENT_ID = "PAT-0042-SECRET"
PATIENT_NAME = "Doe^Jane"
MODEL = "tiny-test-v1"
MODEL_SHA = "5" * 64


def vessels(side: int) -> np.ndarray:
    """A letterboxed probability map (0..255), as the model gives it: a cross of "vessels"
    and a faint background."""
    plane = np.full((side, side), 40, dtype=np.uint8)
    plane[side // 2 - 2 : side // 2 + 2, :] = 230
    plane[:, side // 3 : side // 3 + 3] = 200
    return plane


def answer(index: int, image_id: int, mask: Path | None) -> dict[str, object]:
    """The first image ungradable (its label and text not results), the others gradable,
    every other one referable."""
    inherited = 0.8 if index % 2 else 0.3
    gradable = index > 0
    return {
        "image_id": image_id,
        "label": "inherited" if inherited > 0.5 else "acquired",
        "probability": max(inherited, 1 - inherited),
        "probabilities": {"acquired": 1 - inherited, "inherited": inherited},
        "generated_text": f"Fundus photograph {index}: findings of inherited retinal disease"
        if inherited > 0.5
        else f"Fundus photograph {index}: acquired changes",
        "mask_path": str(mask) if mask else None,
        "gradable": gradable,
        "quality_score": 0.8 if gradable else 0.2,
        "quality_reason": None if gradable else "too_dark,out_of_focus",
        "referable": (inherited >= 0.5) if gradable else None,
        "referral_probability": inherited if gradable else None,
    }


def classify_registered(settings: Settings, study_uid: str | None = None) -> list[int]:
    """Answer every registered DICOM image (of ``study_uid``) as a worker would: a prediction
    of one model version each, a vessel mask as a worker writes it; their image ids."""
    sessions = session_factory(settings.resolved_database_url)
    masks = settings.masks_dir / MODEL
    masks.mkdir(parents=True, exist_ok=True)
    with sessions.begin() as session:
        version = register_version(
            session,
            path=masks,
            manifest_sha256=MODEL_SHA,
            labels=["acquired", "inherited"],
            name=MODEL,
            preset="tiny",
        )
        query = sa.select(Image).where(Image.status == ImageStatus.REGISTERED)
        if study_uid is not None:
            query = query.where(Image.study_uid == study_uid)
        images = session.scalars(query.order_by(Image.study_uid, Image.id)).all()
        for index, image in enumerate(images):
            written = save_masks(
                [ImageMask(image.id, vessels(64)[None], (image.width, image.height))],
                ["vessels"],
                masks,
            )
            mask = Path(written[image.id])
            session.add(Prediction(model_version_id=version.id, **answer(index, image.id, mask)))
            image.status = ImageStatus.DONE
            image.finished_at = utcnow()
        return [image.id for image in images]


def classified_study(
    settings: Settings,
    folder: Path,
    *,
    count: int = 3,
    study_uid: str = "1.2.826.0.1.3680043.8.498.4242",
    batch: str = "night",
    side: int = 64,
) -> list[int]:
    """``count`` OP instances of one study, registered and answered; their image ids."""
    write_instances(
        folder,
        count,
        study_uid=study_uid,
        side=side,
        patient_id=PATIENT_ID,
        patient_name=PATIENT_NAME,
    )
    sessions = session_factory(settings.resolved_database_url)
    ingest(folder, settings=settings, sessions=sessions, batch_name=batch)
    return classify_registered(settings, study_uid)
