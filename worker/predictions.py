"""Writing predictions: at most one per (image, model version), whoever gets there first.

Delivery is at-least-once, so two workers may work on the same image, one after
the other's claim lapsed. Only the worker whose claim still holds the image may
finish it: the images are marked ``done`` under its token first (``db.lifecycle``)
and only their predictions are inserted, in the same transaction, so a worker whose
claim was taken over writes nothing. The unique constraint on predictions stays the
last guard: the insert skips rows that already exist (``ON CONFLICT DO NOTHING``)
instead of failing the chunk. Masks (``worker.masks``) are written before the row
that names them.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import asdict, dataclass
from typing import Any, NamedTuple

from sqlalchemy.orm import Session

from db import lifecycle
from db.models import Prediction, utcnow
from db.upsert import insert_new


@dataclass(frozen=True)
class PredictionRow:
    """One prediction as written; the model's answer is None for an ungradable picture the
    model refused, and the referral None when ungradable (``worker.screening``)."""

    image_id: int
    label: str | None
    probability: float | None
    probabilities: dict[str, float] | None
    generated_text: str | None
    text_label: str | None
    text_agrees: bool | None
    mask_path: str | None  # one PNG per channel, ";"-separated (worker.masks)
    preprocess_ms: float
    inference_ms: float | None
    gradable: bool
    quality_score: float
    quality_reason: str | None
    referable: bool | None
    referral_probability: float | None


class Written(NamedTuple):
    done: list[int]  # marked done: this claim still held them
    inserted: list[int]  # of those, the images whose prediction this call inserted


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
