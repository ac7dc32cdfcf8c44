"""A chunk from claim to written results: batching, failure isolation, retries, hot reload."""

from __future__ import annotations

from pathlib import Path

import pytest
import sqlalchemy as sa
from fake_classifier import FakeLoader, write_jpeg
from image_rows import image_reasons, predictions_per_image, promote, statuses
from PIL import Image as PILImage
from pipelines import make_pipeline
from registered import add_files
from sqlalchemy.orm import Session, sessionmaker

import worker.inference
from db.lifecycle import ImageStatus
from db.models import Image, ModelVersion, Prediction, utcnow
from mdf.imaging.masks import read_mask
from worker.serving import Classifier


def _images(sessions: sessionmaker[Session], folder: Path, reds: list[int]) -> list[int]:
    return add_files(sessions, [write_jpeg(folder / f"{i}.jpg", red) for i, red in enumerate(reds)])


def test_a_chunk_is_classified_in_one_batch_and_recorded(
    sessions: sessionmaker[Session], tmp_path: Path, fake_loader: FakeLoader
) -> None:
    ids = _images(sessions, tmp_path / "in", [200, 40, 180, 20])
    pipeline = make_pipeline(sessions, tmp_path, fake_loader)
    outcome = pipeline.run(ids)
    served = pipeline.server.current()
    assert served.classifier.batches == [4]
    assert outcome.written == ids and outcome.failed == {} and outcome.duplicates == []
    assert set(statuses(sessions).values()) == {ImageStatus.DONE}
    with sessions() as session:
        predictions = session.scalars(sa.select(Prediction).order_by(Prediction.image_id)).all()
        finished = session.scalars(sa.select(Image.finished_at)).all()
    assert all(finished)
    assert [p.label for p in predictions] == ["inherited", "acquired", "inherited", "acquired"]
    for prediction in predictions:
        assert prediction.model_version_id == served.version_id
        assert prediction.probability == pytest.approx(
            prediction.probabilities[prediction.label], abs=1e-6
        )
        assert prediction.text_label == prediction.label and prediction.text_agrees
        assert prediction.generated_text == f" {prediction.label}"
        assert prediction.worker == "w1@host"
        assert prediction.preprocess_ms > 0 and prediction.inference_ms > 0
        folder = (tmp_path / "masks").resolve() / served.name
        masks = [Path(path) for path in prediction.mask_path.split(";")]
        assert masks == [folder / f"{prediction.image_id}.{c}.png" for c in ("vessels", "lesions")]
        expected = 255 if prediction.label == "inherited" else 0
        for mask in masks:  # each channel read at the source's 64x64, stored at the model's 8x8
            assert PILImage.open(mask).size == (8, 8)
            assert read_mask(mask).shape == (64, 64)
            assert read_mask(mask).max() == expected


def test_unusable_images_fail_alone_with_their_reasons(
    sessions: sessionmaker[Session], tmp_path: Path, fake_loader: FakeLoader
) -> None:
    """A black frame the model refuses is an outcome (done, ungradable: test_screening);
    a file that cannot be read or decoded fails alone."""
    good = _images(sessions, tmp_path / "in", [200, 40])
    (black,) = add_files(sessions, [write_jpeg(tmp_path / "black.jpg", 0)])
    text_file = tmp_path / "notes.jpg"
    text_file.write_text("not a photograph")
    (text,) = add_files(sessions, [text_file])
    (missing,) = add_files(sessions, [tmp_path / "gone.jpg"])
    pipeline = make_pipeline(sessions, tmp_path, fake_loader)
    outcome = pipeline.run([*good, black, text, missing])
    assert pipeline.server.current().classifier.batches == [2]  # the rest went on together
    assert outcome.written == [*good, black]
    assert set(outcome.failed) == {text, missing}
    reasons = image_reasons(sessions)
    assert reasons[text][0] == "not_an_image"
    assert reasons[missing][0] == "unreadable" and "No such file" in (reasons[missing][1] or "")
    assert statuses(sessions) == {
        **dict.fromkeys([*good, black], ImageStatus.DONE),
        **dict.fromkeys([text, missing], ImageStatus.FAILED),
    }
    assert predictions_per_image(sessions) == dict.fromkeys([*good, black], 1)


def test_an_image_that_breaks_the_forward_pass_fails_alone(
    sessions: sessionmaker[Session], tmp_path: Path, fake_loader: FakeLoader
) -> None:
    ids = _images(sessions, tmp_path / "in", [200, 255, 40])
    pipeline = make_pipeline(sessions, tmp_path, fake_loader)
    outcome = pipeline.run(ids)
    assert pipeline.server.current().classifier.batches == [3, 1, 1, 1]
    assert outcome.written == [ids[0], ids[2]]
    assert image_reasons(sessions)[ids[1]] == (
        "inference_error",
        "RuntimeError: CUDA error: an illegal memory access was encountered",
    )


def test_a_duplicate_delivery_leaves_a_live_claim_alone(
    sessions: sessionmaker[Session], tmp_path: Path, fake_loader: FakeLoader
) -> None:
    ids = _images(sessions, tmp_path / "in", [200, 40, 90])
    first = make_pipeline(sessions, tmp_path, fake_loader, worker="first@host")
    second = make_pipeline(sessions, tmp_path, fake_loader, worker="second@host")
    duplicates = []
    first.server.current().classifier.on_classify = lambda: duplicates.append(second.run(ids))
    outcome = first.run(ids)
    assert outcome.written == ids
    assert duplicates[0].skipped == ids and duplicates[0].written == []
    with sessions() as session:
        assert set(session.scalars(sa.select(Prediction.worker))) == {"first@host"}
        assert set(session.scalars(sa.select(Image.attempts))) == {1}
    again = first.run(ids)  # the broker delivers it once more
    assert again.skipped == ids and again.written == []
    assert predictions_per_image(sessions) == dict.fromkeys(ids, 1)


def test_a_worker_whose_claim_was_taken_over_writes_nothing(
    sessions: sessionmaker[Session], tmp_path: Path, fake_loader: FakeLoader
) -> None:
    ids = _images(sessions, tmp_path / "in", [200, 40, 90])
    slow = make_pipeline(sessions, tmp_path, fake_loader, worker="slow@host")
    taker = make_pipeline(sessions, tmp_path, fake_loader, worker="taker@host")

    def stalls_past_its_lease() -> None:
        with sessions.begin() as session:
            session.execute(sa.update(Image).values(lease_expires_at=utcnow()))
        taker.run(ids)  # the scheduler re-sent the chunk; another worker took it

    slow.server.current().classifier.on_classify = stalls_past_its_lease
    outcome = slow.run(ids)
    assert outcome.written == [] and outcome.taken_over == ids
    assert predictions_per_image(sessions) == dict.fromkeys(ids, 1)
    with sessions() as session:
        assert set(session.scalars(sa.select(Prediction.worker))) == {"taker@host"}
    assert set(statuses(sessions).values()) == {ImageStatus.DONE}


def test_the_model_is_swapped_between_chunks_never_within_one(
    sessions: sessionmaker[Session], tmp_path: Path, fake_loader: FakeLoader
) -> None:
    ids = _images(sessions, tmp_path / "in", [60, 70, 80, 90, 100, 110])
    pipeline = make_pipeline(sessions, tmp_path, fake_loader)
    pipeline.run(ids[:3])
    pipeline.server.current().classifier.on_classify = lambda: promote(
        sessions, "v2", tmp_path / "v2"
    )
    pipeline.run(ids[3:5])  # promoted while this chunk was running
    pipeline.run(ids[5:])
    with sessions() as session:
        rows = session.execute(
            sa.select(Prediction.image_id, ModelVersion.name).join(ModelVersion)
        ).all()
    by_image = dict(rows)
    base = by_image[ids[0]]
    assert base != "v2"
    assert by_image == {**dict.fromkeys(ids[:5], base), ids[5]: "v2"}
    assert fake_loader.loads == [tmp_path / "base", tmp_path / "v2"]


def test_a_transient_error_leaves_the_chunk_for_the_retry(
    sessions: sessionmaker[Session],
    tmp_path: Path,
    fake_loader: FakeLoader,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    ids = _images(sessions, tmp_path / "in", [200, 40])
    pipeline = make_pipeline(sessions, tmp_path, fake_loader)
    lost = sa.exc.OperationalError("COMMIT", {}, ConnectionError("server closed the connection"))

    def unreachable(*args: object, **kwargs: object) -> list[int]:
        raise lost

    with monkeypatch.context() as patch:
        patch.setattr(worker.inference, "write_predictions", unreachable)
        with pytest.raises(sa.exc.OperationalError):
            pipeline.run(ids, token="task-1")
    assert set(statuses(sessions).values()) == {ImageStatus.PROCESSING}  # not failed
    assert pipeline.run(ids, token="task-1").written == ids  # the task's retry
    with sessions() as session:
        assert set(session.scalars(sa.select(Image.attempts))) == {2}


def test_an_unexpected_error_fails_the_claimed_images_with_its_reason(
    sessions: sessionmaker[Session],
    tmp_path: Path,
    fake_loader: FakeLoader,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    ids = _images(sessions, tmp_path / "in", [200, 40])
    (done,) = add_files(sessions, [tmp_path / "done.jpg"], status=ImageStatus.DONE)

    def full_disk(*args: object, **kwargs: object) -> Path:
        raise RuntimeError("no space left for masks")

    monkeypatch.setattr(worker.inference, "save_masks", full_disk)
    with pytest.raises(RuntimeError):
        make_pipeline(sessions, tmp_path, fake_loader).run([*ids, done])
    reasons = image_reasons(sessions)
    for image_id in ids:
        assert reasons[image_id] == ("worker_error", "RuntimeError: no space left for masks")
    assert statuses(sessions)[done] is ImageStatus.DONE


def test_an_image_that_keeps_killing_workers_is_failed_before_it_is_loaded(
    sessions: sessionmaker[Session], tmp_path: Path, fake_loader: FakeLoader
) -> None:
    (worn,) = add_files(
        sessions, [write_jpeg(tmp_path / "w.jpg", 90)], status=ImageStatus.PROCESSING, attempts=3
    )
    (fresh,) = _images(sessions, tmp_path / "in", [200])
    pipeline = make_pipeline(sessions, tmp_path, fake_loader)
    outcome = pipeline.run([worn, fresh])
    assert outcome.written == [fresh]
    assert pipeline.server.current().classifier.batches == [1]
    assert image_reasons(sessions)[worn][0] == "too_many_attempts"


def test_the_tiny_model_classifies_photographs_and_dicom(
    sessions: sessionmaker[Session], tmp_path: Path, tiny_checkpoint: Path
) -> None:
    from mdf.synthetic.delivery import write_dataset

    folder = write_dataset(tmp_path / "in", 4, size=96, dicom_fraction=0.5, write_masks=False)
    files = sorted(p for p in folder.rglob("*") if p.is_file() and p.name != "manifest.csv")
    ids = add_files(sessions, files)
    pipeline = make_pipeline(sessions, tmp_path, model_dir=tiny_checkpoint)
    assert isinstance(pipeline.server.current().classifier, Classifier)
    outcome = pipeline.run(ids)
    assert outcome.written == ids, outcome.failed
    with sessions() as session:
        predictions = session.scalars(sa.select(Prediction)).all()
        version = session.scalars(sa.select(ModelVersion)).one()
    assert version.path == str(tiny_checkpoint.resolve())
    for prediction in predictions:
        assert prediction.label in ("acquired", "inherited")
        assert sum(prediction.probabilities.values()) == pytest.approx(1, abs=1e-4)
        for mask in prediction.mask_path.split(";"):  # at the source's 96x96, as two channels
            assert read_mask(mask).shape == (96, 96)
