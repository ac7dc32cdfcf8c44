"""Labelled images from the database, decoded and prepared once for every epoch."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import structlog
from PIL import Image as PILImage
from sqlalchemy import select
from sqlalchemy.orm import Session, sessionmaker

from db.models import Image, ImageStatus
from db.stored_path import from_stored
from mdf.imaging import Rejection, load_frame
from training.splits import Example

log = structlog.get_logger(__name__)


def labelled_examples(
    sessions: sessionmaker[Session], labels: Sequence[str], *, limit: int | None = None
) -> list[Example]:
    """Every usable image whose ground truth is one of the model's labels."""
    query = (
        select(Image)
        .where(Image.label.in_(list(labels)), Image.status != ImageStatus.REJECTED)
        .order_by(Image.id)
        .limit(limit)
    )
    with sessions() as session:
        return [
            Example(
                image_id=image.id,
                path=image.source_path,
                frame=image.frame,
                label=image.label or "",
                patient=image.patient_pseudonym,
                source=image.data_source,
                clinical_text=image.clinical_text,
                mask_path=image.mask_path,
            )
            for image in session.scalars(query)
        ]


def load_mask(mask_path: str, shape: tuple[int, int]) -> np.ndarray | None:
    """The reference mask as (H, W, C) booleans, one channel per ";"-separated PNG."""
    planes = []
    for path in mask_path.split(";"):
        with PILImage.open(Path(path)) as plane:
            planes.append(np.asarray(plane.convert("L")) > 127)
    if any(p.shape != shape for p in planes):
        return None
    return np.stack(planes, axis=-1)


@dataclass
class PreparedSet:
    """Examples with their model inputs; ``text`` and ``image_only`` share the pixels."""

    examples: list[Example]
    inputs: list  # mdf_model.PreparedInput per example
    skipped: int


def prepare(classifier, examples: Sequence[Example], *, with_text: bool = True) -> PreparedSet:
    """Decode and prepare each example; an unreadable image is skipped and logged. Masks are
    left out for a model without segmentation (the baseline), which could not use them."""
    segments = not classifier.model.config.baseline
    kept, inputs, skipped = [], [], 0
    for example in examples:
        try:
            pixels = load_frame(from_stored(example.path), example.frame)
            mask = None
            if example.mask_path and segments:
                mask = load_mask(example.mask_path, pixels.shape[:2])
            text = example.clinical_text if with_text else None
            inputs.append(classifier.prepare(pixels, text, seg_target=mask))
        except (Rejection, ValueError, OSError) as error:
            skipped += 1
            log.warning("training_image_skipped", image_id=example.image_id, error=str(error))
            continue
        kept.append(example)
    return PreparedSet(kept, inputs, skipped)
