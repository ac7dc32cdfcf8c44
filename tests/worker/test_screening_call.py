"""Gradability and referral as the worker records them: an ungradable image is done with
its reasons and timings, a real photograph is gradable, and the served version's
thresholds decide which images are referable."""

from __future__ import annotations

import os
from pathlib import Path

import numpy as np
import pytest
import sqlalchemy as sa
from fake_classifier import FakeLoader, write_jpeg
from image_rows import statuses
from PIL import Image as PILImage
from pipelines import make_pipeline
from registered import add_files
from sqlalchemy.orm import Session, sessionmaker

from db import model_versions
from db.lifecycle import ImageStatus
from db.models import Prediction
from mdf.imaging.quality import QualityThresholds
from mdf.synthetic.degradations import NOT_FUNDUS
from mdf.synthetic.fundus import generate_case
from worker.screening import Referral, quality_thresholds

STARE = Path(
    os.environ.get("MDF_STARE_DIR")
    or Path(__file__).resolve().parents[3] / "shared" / "data" / "stare"
)


def _save(pixels: np.ndarray, path: Path) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    PILImage.fromarray(pixels).save(path, "JPEG", quality=95)
    return path


def _fundus(folder: Path, seeds: range) -> list[Path]:
    """Synthetic fundus photographs: gradable, each with its own red level (the fake's score)."""
    return [
        _save(generate_case(seed, size=256, with_text=False).image, folder / f"f{seed}.jpg")
        for seed in seeds
    ]


def _predictions(sessions: sessionmaker[Session]) -> dict[int, Prediction]:
    with sessions() as session:
        return {p.image_id: p for p in session.scalars(sa.select(Prediction))}


def test_an_ungradable_picture_is_done_with_its_reasons(
    sessions: sessionmaker[Session], tmp_path: Path, fake_loader: FakeLoader
) -> None:
    """A black frame (the model refuses it) and a photograph of a document (the model
    answers, for research) end done, ungradable, with their timing; a fundus is gradable."""
    black = write_jpeg(tmp_path / "black.jpg", 0)
    document = _save(
        NOT_FUNDUS["document"]((480, 640), np.random.default_rng(0)), tmp_path / "d.jpg"
    )
    fundus = _fundus(tmp_path, range(1))
    ids = add_files(sessions, [black, document, *fundus])
    outcome = make_pipeline(sessions, tmp_path, fake_loader).run(ids)
    assert outcome.written == ids and outcome.failed == {}
    assert set(statuses(sessions).values()) == {ImageStatus.DONE}
    rows = _predictions(sessions)
    dark, paper, eye = (rows[i] for i in ids)
    assert (dark.gradable, dark.quality_reason, dark.label, dark.inference_ms) == (
        False, "no_fundus", None, None
    )  # fmt: skip
    assert dark.probabilities is None and dark.preprocess_ms > 0 and dark.quality_score < 0.5
    assert (paper.gradable, paper.quality_reason) == (False, "no_fundus")
    assert paper.label is not None and paper.inference_ms > 0  # kept, not shown
    assert (paper.referable, paper.referral_probability) == (None, None)
    assert (eye.gradable, eye.quality_reason) == (True, None) and eye.quality_score >= 0.5
    assert eye.referable is not None
    assert eye.referral_probability == pytest.approx(eye.probabilities["inherited"])


def test_a_stare_photograph_is_gradable(
    sessions: sessionmaker[Session], tmp_path: Path, fake_loader: FakeLoader
) -> None:
    photograph = STARE / "images" / "im0001.png"
    if not photograph.is_file():
        pytest.skip(f"STARE photographs not found in {STARE} (set MDF_STARE_DIR)")
    (image_id,) = add_files(sessions, [photograph])  # read in place, never copied
    make_pipeline(sessions, tmp_path, fake_loader).run([image_id])
    prediction = _predictions(sessions)[image_id]
    assert prediction.gradable and prediction.quality_reason is None
    assert prediction.quality_score >= 0.5 and prediction.label is not None


def _referable(sessions: sessionmaker[Session], ids: list[int]) -> list[bool | None]:
    rows = _predictions(sessions)
    return [rows[i].referable for i in ids]


def test_workers_apply_the_served_versions_thresholds(
    sessions: sessionmaker[Session], tmp_path: Path, fake_loader: FakeLoader
) -> None:
    """Without recorded thresholds the settings' apply; a promoted version's own strict
    threshold refers fewer of the same pictures; a label the model lacks refers nothing."""
    pictures = _fundus(tmp_path / "a", range(6))
    first = add_files(sessions, pictures)
    make_pipeline(sessions, tmp_path, fake_loader, referral_defaults={"inherited": 0.0}).run(first)
    scores = [_predictions(sessions)[i].referral_probability for i in first]
    assert _referable(sessions, first) == [True] * 6 and len(set(scores)) > 1

    strict = float(np.median(scores))
    with sessions.begin() as session:
        version = model_versions.register_version(
            session,
            path=tmp_path / "strict",
            manifest_sha256="strict".ljust(64, "0"),
            labels=["acquired", "inherited"],
            name="strict",
            referral={"target_sensitivity": 0.9, "labels": {"inherited": {"threshold": strict}}},
        )
        model_versions.promote(session, version, reason="a test promotes it")
        strict_id = version.id
    # the same pictures again, each a pixel apart so that they are new images
    again = []
    for path in pictures:
        pixels = np.asarray(PILImage.open(path)).copy()
        pixels[0, 0] = 255 - pixels[0, 0]
        again.append(_save(pixels, tmp_path / "b" / path.name))
    second = add_files(sessions, again)
    make_pipeline(sessions, tmp_path, fake_loader, referral_defaults={"inherited": 0.0}).run(second)
    rows = _predictions(sessions)
    assert {rows[i].model_version_id for i in second} == {strict_id}
    referred = _referable(sessions, second)
    assert referred == [rows[i].referral_probability >= strict for i in second]
    assert 0 < sum(referred) < 6

    third = add_files(sessions, [_save(np.asarray(PILImage.open(pictures[0])), tmp_path / "c.png")])
    make_pipeline(sessions, tmp_path, fake_loader, referral_defaults={"glaucoma": 0.1}).run(third)
    assert _referable(sessions, third) == [None]
    assert _predictions(sessions)[third[0]].referral_probability is None


def test_referral_takes_each_labels_threshold_from_the_version_else_the_settings() -> None:
    recorded = {"target_sensitivity": 0.9, "labels": {"inherited": {"threshold": 0.8}}}
    defaults = {"inherited": 0.5, "acquired": 0.3, "glaucoma": 0.1}
    referral = Referral.for_model(["acquired", "inherited"], recorded, defaults)
    assert referral.thresholds == {"inherited": 0.8, "acquired": 0.3}
    assert referral.apply({"inherited": 0.7, "acquired": 0.3}) == (True, 0.7)
    assert referral.apply({"inherited": 0.79, "acquired": 0.21}) == (False, 0.79)
    assert (
        Referral.for_model(["acquired", "inherited"], None, defaults).thresholds["inherited"] == 0.5
    )


def test_unknown_quality_thresholds_are_refused_by_name() -> None:
    assert quality_thresholds({"min_field": 0.3}).min_field == 0.3
    assert quality_thresholds({}) == QualityThresholds()
    with pytest.raises(ValueError, match=r"unknown gradability thresholds \['min_feild'\]"):
        quality_thresholds({"min_feild": 0.3})
