"""Writing predictions: at most one per (image, model version), whoever gets there first.

Delivery is at-least-once, so two workers may work on the same image, one after
the other's claim lapsed. Only the worker whose claim still holds the image may
finish it: the images are marked ``done`` under its token first (``db.lifecycle``)
and only their predictions are inserted, in the same transaction, so a worker whose
claim was taken over writes nothing. The unique constraint on predictions stays the
last guard: the insert skips rows that already exist (``ON CONFLICT DO NOTHING``)
instead of failing the chunk. Masks are written before the row that names
them, each through a temporary file and a rename, so a reader never sees half a PNG.
"""

from __future__ import annotations

import os
import re
import tempfile
from collections.abc import Sequence
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any, NamedTuple

import numpy as np
from PIL import Image as PILImage
from sqlalchemy.orm import Session

from db import lifecycle
from db.models import Prediction, utcnow
from db.upsert import insert_new

_UNSAFE = re.compile(r"[^A-Za-z0-9._-]")


@dataclass(frozen=True)
class PredictionRow:
    image_id: int
    label: str
    probability: float
    probabilities: dict[str, float]
    generated_text: str | None
    text_label: str | None
    text_agrees: bool
    mask_path: str | None
    preprocess_ms: float
    inference_ms: float


class Written(NamedTuple):
    done: list[int]  # marked done: this claim still held them
    inserted: list[int]  # of those, the images whose prediction this call inserted


def mask_directory(masks_dir: Path, version_name: str) -> Path:
    """One folder per model version: a version name never escapes the masks folder."""
    return masks_dir.resolve() / _UNSAFE.sub("_", version_name)


def save_mask(mask: np.ndarray, directory: Path, image_id: int) -> Path:
    """Write ``<image id>.png`` atomically; a re-delivered chunk replaces it with the same."""
    directory.mkdir(parents=True, exist_ok=True)
    target = directory / f"{image_id}.png"
    handle, temporary = tempfile.mkstemp(prefix=f".{image_id}.", suffix=".tmp", dir=directory)
    try:
        with os.fdopen(handle, "wb") as stream:
            PILImage.fromarray(np.ascontiguousarray(mask, dtype=np.uint8)).save(stream, "PNG")
        os.replace(temporary, target)
    except BaseException:
        Path(temporary).unlink(missing_ok=True)
        raise
    return target


def write_predictions(
    session: Session,
    rows: Sequence[PredictionRow],
    *,
    model_version_id: int,
    worker: str,
    token: str,
) -> Written:
    """Mark done the images ``token``'s claim still holds and insert their predictions.

    Images whose claim was taken over get nothing written. Of those done, an image
    that had a prediction of this model version already is not inserted again.
    """
    done = lifecycle.mark_done(session, [row.image_id for row in rows], token)
    if not done:
        return Written([], [])
    now = utcnow()
    held = set(done)
    values: list[dict[str, Any]] = [
        {**asdict(row), "model_version_id": model_version_id, "worker": worker, "created_at": now}
        for row in sorted(rows, key=lambda row: row.image_id)  # one lock order for every writer
        if row.image_id in held
    ]
    statement = (
        insert_new(session, Prediction, ["image_id", "model_version_id"])
        .values(values)
        .returning(Prediction.image_id)
    )
    return Written(done, sorted(session.scalars(statement).all()))
