"""Idempotent writes: one prediction per (image, model version), however often it is written."""

from __future__ import annotations

from pathlib import Path

import sqlalchemy as sa
from image_rows import add_images, predictions_per_image, promote, statuses
from sqlalchemy.orm import Session, sessionmaker

from db import lifecycle
from db.lifecycle import ImageStatus
from db.models import Image, Prediction
from worker.predictions import PredictionRow, Written, write_predictions


def _row(image_id: int, label: str = "acquired") -> PredictionRow:
    return PredictionRow(
        image_id=image_id,
        label=label,
        probability=0.75,
        probabilities={"acquired": 0.75, "inherited": 0.25},
        generated_text=f" {label}",
        text_label=label,
        text_agrees=True,
        mask_path=f"/masks/{image_id}.png",
        preprocess_ms=1.5,
        inference_ms=20.0,
        gradable=True,
        quality_score=0.8,
        quality_reason=None,
        referable=False,
        referral_probability=0.25,
    )


def _claimed(sessions: sessionmaker[Session], paths: list[Path], token: str) -> list[int]:
    ids = add_images(sessions, paths)
    with sessions.begin() as session:
        claim = lifecycle.claim(session, ids, max_attempts=3, lease_s=300, token=token)
    assert [image.id for image in claim.images] == ids
    return ids


def _write(
    sessions: sessionmaker[Session], rows: list[PredictionRow], version: int, worker: str
) -> Written:
    with sessions.begin() as session:
        return write_predictions(
            session, rows, model_version_id=version, worker=worker, token=f"{worker}'s claim"
        )


def test_a_second_write_of_the_same_results_adds_nothing(
    sessions: sessionmaker[Session], tmp_path: Path
) -> None:
    ids = _claimed(sessions, [tmp_path / f"{i}.jpg" for i in range(3)], "a's claim")
    version = promote(sessions, "v1", tmp_path)
    first = _write(sessions, [_row(i) for i in ids], version, "a")
    again = _write(sessions, [_row(i, "inherited") for i in ids], version, "a")
    assert first == Written(ids, ids)
    assert again == Written([], [])
    assert predictions_per_image(sessions) == dict.fromkeys(ids, 1)
    assert set(statuses(sessions).values()) == {ImageStatus.DONE}
    with sessions() as session:
        kept = session.execute(sa.select(Prediction.label, Prediction.worker)).all()
    assert set(kept) == {("acquired", "a")}  # the first writer's answer stands


def test_overlapping_chunks_write_each_image_once(
    sessions: sessionmaker[Session], tmp_path: Path
) -> None:
    a, b, c = _claimed(sessions, [tmp_path / f"{i}.jpg" for i in range(3)], "x's claim")
    version = promote(sessions, "v1", tmp_path)
    assert _write(sessions, [_row(b), _row(a)], version, "x").inserted == [a, b]
    assert _write(sessions, [_row(c), _row(b)], version, "x").inserted == [c]
    assert predictions_per_image(sessions) == {a: 1, b: 1, c: 1}


def test_a_claim_taken_over_writes_no_prediction_under_another_version(
    sessions: sessionmaker[Session], tmp_path: Path
) -> None:
    (image,) = _claimed(sessions, [tmp_path / "x.jpg"], "old's claim")
    old = promote(sessions, "v1", tmp_path)
    with sessions.begin() as session:  # its lease lapsed; another worker claimed it
        session.execute(sa.update(Image).values(claim_token="new's claim"))
    new = promote(sessions, "v2", tmp_path)
    assert _write(sessions, [_row(image)], old, "old") == Written([], [])
    assert statuses(sessions) == {image: ImageStatus.PROCESSING}
    assert _write(sessions, [_row(image)], new, "new") == Written([image], [image])
    with sessions() as session:
        assert session.execute(sa.select(Prediction.model_version_id)).scalars().all() == [new]
