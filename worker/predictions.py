"""Writing predictions: at most one per (image, model version), whoever gets there first.

Delivery is at-least-once, so two workers (or one worker twice) may finish the same
image. The unique constraint on predictions decides: the insert skips rows that
already exist (``ON CONFLICT DO NOTHING``) instead of failing the chunk, and the
image is marked ``done`` either way (``db.lifecycle``). Masks are written before the row that names
them, each through a temporary file and a rename, so a reader never sees half a PNG.
"""

from __future__ import annotations

import os
import re
import tempfile
from collections.abc import Sequence
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import numpy as np
from PIL import Image as PILImage
from sqlalchemy import Insert
from sqlalchemy.dialects import postgresql, sqlite
from sqlalchemy.orm import Session

from db import lifecycle
from db.models import Prediction, utcnow

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


def _insert(session: Session) -> Insert:
    dialect = session.get_bind().dialect.name
    if dialect == "postgresql":
        return postgresql.insert(Prediction)
    if dialect == "sqlite":
        return sqlite.insert(Prediction)
    raise NotImplementedError(f"idempotent prediction writes are not implemented for {dialect}")


def write_predictions(
    session: Session, rows: Sequence[PredictionRow], *, model_version_id: int, worker: str
) -> list[int]:
    """Insert the predictions that do not exist yet and mark every image done.

    Returns the ids of the images whose prediction this call wrote; the others had
    one for this model version already (a duplicate delivery).
    """
    if not rows:
        return []
    now = utcnow()
    ordered = sorted(rows, key=lambda row: row.image_id)  # one lock order for every writer
    values: list[dict[str, Any]] = [
        {**asdict(row), "model_version_id": model_version_id, "worker": worker, "created_at": now}
        for row in ordered
    ]
    statement = (
        _insert(session)
        .values(values)
        .on_conflict_do_nothing(index_elements=["image_id", "model_version_id"])
        .returning(Prediction.image_id)
    )
    written = sorted(session.scalars(statement).all())
    lifecycle.mark_done(session, [row.image_id for row in ordered])
    return written
