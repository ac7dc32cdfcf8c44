"""Idempotent writes: one prediction per (image, model version), however often it is written."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import sqlalchemy as sa
from image_rows import add_images, predictions_per_image, promote, statuses
from PIL import Image as PILImage
from sqlalchemy.orm import Session, sessionmaker

from db.lifecycle import ImageStatus
from db.models import Prediction
from worker.predictions import PredictionRow, mask_directory, save_mask, write_predictions


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
    )


def test_a_second_write_of_the_same_results_adds_nothing(
    sessions: sessionmaker[Session], tmp_path: Path
) -> None:
    ids = add_images(
        sessions, [tmp_path / f"{i}.jpg" for i in range(3)], status=ImageStatus.PROCESSING
    )
    version = promote(sessions, "v1", tmp_path)
    with sessions.begin() as session:
        first = write_predictions(
            session, [_row(i) for i in ids], model_version_id=version, worker="a"
        )
    with sessions.begin() as session:
        again = write_predictions(
            session, [_row(i, "inherited") for i in ids], model_version_id=version, worker="b"
        )
    assert first == ids
    assert again == []
    assert predictions_per_image(sessions) == dict.fromkeys(ids, 1)
    assert set(statuses(sessions).values()) == {ImageStatus.DONE}
    with sessions() as session:
        kept = session.execute(sa.select(Prediction.label, Prediction.worker)).all()
    assert set(kept) == {("acquired", "a")}  # the first writer's answer stands


def test_overlapping_chunks_write_each_image_once(
    sessions: sessionmaker[Session], tmp_path: Path
) -> None:
    a, b, c = add_images(sessions, [tmp_path / f"{i}.jpg" for i in range(3)])
    version = promote(sessions, "v1", tmp_path)
    with sessions.begin() as session:
        assert write_predictions(
            session, [_row(b), _row(a)], model_version_id=version, worker="x"
        ) == [a, b]
    with sessions.begin() as session:
        assert write_predictions(
            session, [_row(c), _row(b)], model_version_id=version, worker="y"
        ) == [c]
    assert predictions_per_image(sessions) == {a: 1, b: 1, c: 1}


def test_another_model_version_gets_its_own_prediction(
    sessions: sessionmaker[Session], tmp_path: Path
) -> None:
    (image,) = add_images(sessions, [tmp_path / "x.jpg"])
    for name in ("v1", "v2"):
        version = promote(sessions, name, tmp_path)
        with sessions.begin() as session:
            assert write_predictions(session, [_row(image)], model_version_id=version, worker="w")
    assert predictions_per_image(sessions) == {image: 2}


def test_a_mask_is_written_whole_and_replaced_atomically(tmp_path: Path) -> None:
    directory = mask_directory(tmp_path / "masks", "v1/../../etc")
    assert directory.parent == (tmp_path / "masks").resolve()
    mask = np.zeros((16, 16), dtype=np.uint8)
    mask[4:8, 4:8] = 255
    path = save_mask(mask, directory, 7)
    assert path == directory / "7.png"
    save_mask(mask, directory, 7)  # a re-delivered chunk writes the same file again
    np.testing.assert_array_equal(np.asarray(PILImage.open(path)), mask)
    assert sorted(p.name for p in directory.iterdir()) == ["7.png"]  # no temporary left


def test_a_failed_mask_write_leaves_no_temporary(tmp_path: Path) -> None:
    with pytest.raises(TypeError):
        save_mask(np.zeros((2, 2, 2, 2), dtype=np.uint8), tmp_path, 1)
    assert list(tmp_path.iterdir()) == []
